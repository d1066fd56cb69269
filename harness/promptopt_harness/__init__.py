"""promptopt's test harness, a distribution of its own (promptopt-harness) so that the product's images never
carry it: a real Kubernetes control plane (`realkube`), a local kubelet that runs Pods as processes (`kubelet`),
a small API client (`client`) and the REST API's rules tests reproduce (`kube_rest`), the Helm chart rendered
by the real Helm engine (`chart`), the operator as a child process (`operator_process`), headless
chromium for the pages promptopt writes (`browser`) and a real MLflow tracking server (`mlflow_server`)."""
