#!/usr/bin/env bash
# End to end, through kubectl only: install the CRD, run the examples against the simulated LLM until they
# succeed, cancel a running job, delete a job, and check that no worker Pod is left.
#
#   E2E_LOCAL=1 (the default, CI): this machine is the cluster. The script starts a real kube-apiserver and
#       etcd (promptopt_harness.realkube), the local kubelet (Pods run as local processes), the simulated LLM and
#       `promptopt operator` with the chart's RBAC, and stops them all on exit.
#   E2E_LOCAL=0: the cluster of the current kubeconfig, with the chart already installed (docs/install.md) as
#       release promptopt in promptopt-system, with its demo LLM on (demo.simulatedLLM.enabled=true). Nothing
#       starts locally.
#
# Other settings: E2E_NAMESPACE (default: default; on a cluster it must be one of the chart's jobNamespaces),
# E2E_TIMEOUT (kubectl wait timeout, default 120s), PYTHON (the venv's python, for E2E_LOCAL=1).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
E2E_LOCAL="${E2E_LOCAL:-1}"
NAMESPACE="${E2E_NAMESPACE:-default}"
RELEASE_NAMESPACE=promptopt-system
TIMEOUT="${E2E_TIMEOUT:-120s}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/promptopt-e2e.XXXXXX")"
EXAMPLES=(gepa-sentiment configmap-sources metaprompt-zero-shot)
WORKER_PODS="app.kubernetes.io/managed-by=promptopt-operator"
STARTED_PIDS=()

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { log "FAILED: $*"; exit 1; }

k() {
  local options=(--namespace "$NAMESPACE" --request-timeout=30s)
  # Ports of local runs get reused: keep kubectl's discovery cache to this run.
  [[ "$E2E_LOCAL" == 1 ]] && options+=(--cache-dir "$WORK/kube-cache")
  kubectl "${options[@]}" "$@"
}

start() {  # start NAME COMMAND...: a background process of this run, logged to $WORK/NAME.log
  local name="$1"
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  STARTED_PIDS+=("$!")
  log "started $name (pid $!)"
}

wait_for_file_line() {  # wait_for_file_line FILE [SECONDS]: until FILE has a first line (default 30 s)
  for _ in $(seq $(( ${2:-30} * 10 ))); do
    [[ -s "$1" ]] && return 0
    sleep 0.1
  done
  fail "$1 stayed empty"
}

on_exit() {
  local status=$?
  if [[ $status -ne 0 ]]; then
    log "diagnostics:"
    k get promptoptimizationjobs -o wide 2>&1 || true
    k get pods -o wide 2>&1 || true
    k get events 2>&1 | tail -n 30 || true
    for file in "$WORK"/*.log; do
      [[ -f "$file" ]] && { echo "--- $(basename "$file") (last 40 lines)"; tail -n 40 "$file"; }
    done
  fi
  if [[ "$E2E_LOCAL" == 1 ]]; then
    # Newest first: the operator before the kubelet (which stops every worker process) before the API.
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
      kill "${STARTED_PIDS[i]}" 2>/dev/null || true
      wait "${STARTED_PIDS[i]}" 2>/dev/null || true
    done
  else
    k delete --ignore-not-found -f "$HERE/manifests/examples.yaml" -f "$HERE/manifests/long-job.yaml" \
      --wait=false >/dev/null 2>&1 || true
    k delete --ignore-not-found secret/llm-credentials >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  [[ $status -eq 0 ]] && log "e2e passed" || log "e2e failed (exit $status)"
}
trap on_exit EXIT

# --- the cluster, the simulated LLM and the operator --------------------------------------------------------

if [[ "$E2E_LOCAL" == 1 ]]; then
  # A real kube-apiserver and etcd (built by promptopt_harness.build_kube on first use), without CRDs: kubectl installs
  # ours below.
  start kube-apiserver "$PYTHON" -m promptopt_harness.realkube --no-crds --workdir "$WORK/kube" \
    --kubeconfig "$WORK/kubeconfig"
  wait_for_file_line "$WORK/kubeconfig" 600
  export KUBECONFIG="$WORK/kubeconfig"
  start simulated-llm "$PYTHON" -m promptopt.simulated_llm --port 0
  wait_for_file_line "$WORK/simulated-llm.log"
  LLM_URL="$(head -n 1 "$WORK/simulated-llm.log")"
  start kubelet "$PYTHON" -m promptopt_harness.kubelet --kubeconfig "$WORK/kube/kubelet.kubeconfig" \
    --scheduler-kubeconfig "$WORK/kube/scheduler.kubeconfig" --state-dir "$WORK/node"
  # The chart's RBAC, as `helm install` would create it; the operator runs as its ServiceAccount.
  kubectl create namespace "$RELEASE_NAMESPACE"
  "$PYTHON" -m promptopt_harness.chart "$REPO/deploy/helm/promptopt" --rbac --namespace "$RELEASE_NAMESPACE" \
    --values "{\"jobNamespaces\": [\"$NAMESPACE\"]}" | kubectl apply -f -
  cp "$KUBECONFIG" "$WORK/operator.kubeconfig"
  kubectl --kubeconfig "$WORK/operator.kubeconfig" config set-credentials operator \
    --token="$(kubectl create token promptopt -n "$RELEASE_NAMESPACE" --duration=2h)" >/dev/null
  kubectl --kubeconfig "$WORK/operator.kubeconfig" config set-context --current --user=operator >/dev/null
  # Configured through the environment, as the chart's Deployment does.
  start operator env KUBECONFIG="$WORK/operator.kubeconfig" PROMPTOPT_LIVENESS_PORT=0 PROMPTOPT_METRICS_PORT=0 \
    PROMPTOPT_RETRY_BASE_DELAY_SECONDS=1 PROMPTOPT_WORKER_IMAGE=promptopt-worker:e2e \
    "$(dirname "$PYTHON")/promptopt" operator
else
  kubectl rollout status deployment/promptopt-simulated-llm -n "$RELEASE_NAMESPACE" --timeout="$TIMEOUT" ||
    fail "no demo LLM: install the chart with --set demo.simulatedLLM.enabled=true"
  LLM_URL="http://promptopt-simulated-llm.$RELEASE_NAMESPACE.svc:8000/v1"
fi
log "simulated LLM at $LLM_URL"

# --- install the CRD (the chart's copy, identical to crds/) -------------------------------------------------

k apply -f "$REPO/deploy/helm/promptopt/crds/"
k wait --for=condition=Established crd/promptoptimizationjobs.promptopt.dev --timeout=30s

# --- the examples succeed -------------------------------------------------------------------------------------

# The credentials Secret of the examples, pointing litellm's openai/ models at the simulated LLM.
k create secret generic llm-credentials --from-literal=OPENAI_API_KEY=sk-simulated \
  --from-literal=OPENAI_API_BASE="$LLM_URL" --dry-run=client -o yaml | k apply -f -
k apply -f "$HERE/manifests/examples.yaml"
for job in "${EXAMPLES[@]}"; do
  k wait --for=jsonpath='{.status.phase}'=Succeeded "promptoptimizationjob/$job" --timeout="$TIMEOUT"
done
k get promptoptimizationjobs
for job in "${EXAMPLES[@]}"; do
  prompt="$(k get poj "$job" -o jsonpath='{.status.optimizedPrompts[0].name}')"
  [[ -n "$prompt" ]] || fail "$job succeeded without optimized prompts in its status"
  k wait --for=condition=Ready "poj/$job" --timeout=10s
done

# --- a running job is cancelled ---------------------------------------------------------------------------------

k apply -f "$HERE/manifests/long-job.yaml"
k wait --for=jsonpath='{.status.phase}'=Running poj/long-gepa --timeout="$TIMEOUT"
k patch poj long-gepa --type=merge -p '{"spec":{"cancel":true}}'
k wait --for=jsonpath='{.status.phase}'=Cancelled poj/long-gepa --timeout="$TIMEOUT"
k wait --for=delete pod -l "promptopt.dev/job=long-gepa" --timeout="$TIMEOUT"
log "long-gepa cancelled: $(k get poj long-gepa -o jsonpath='{.status.message}')"

# --- a job is deleted, its Pods with it ---------------------------------------------------------------------------

k delete poj gepa-sentiment --timeout="$TIMEOUT"
[[ -z "$(k get poj --ignore-not-found gepa-sentiment -o name)" ]] || fail "gepa-sentiment is still there"
k wait --for=delete pod -l "promptopt.dev/job=gepa-sentiment" --timeout="$TIMEOUT"

# --- nothing is left behind ----------------------------------------------------------------------------------------

k delete promptoptimizationjobs --all --timeout="$TIMEOUT"
k wait --for=delete pod -l "$WORKER_PODS" --timeout="$TIMEOUT"
left="$(k get pods -l "$WORKER_PODS" -o name)"
[[ -z "$left" ]] || fail "worker Pods left: $left"
