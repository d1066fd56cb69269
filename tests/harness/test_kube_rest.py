"""The Kubernetes REST API's rule the tests rely on: which resource a URL names."""

import pytest

from promptopt_harness.kube_rest import ApiPath, Resource, parse_api_path

PODS = Resource("", "v1", "pods")
JOBS = Resource("promptopt.dev", "v1alpha1", "promptoptimizationjobs")


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/api/v1/pods", ApiPath(PODS, None, None, None)),
        ("/api/v1/namespaces/x/pods", ApiPath(PODS, "x", None, None)),
        ("/api/v1/namespaces/x/pods/p/log", ApiPath(PODS, "x", "p", "log")),
        ("/api/v1/namespaces/x/pods/p/binding", ApiPath(PODS, "x", "p", "binding")),
        (
            "/apis/promptopt.dev/v1alpha1/namespaces/x/promptoptimizationjobs/j/status",
            ApiPath(JOBS, "x", "j", "status"),
        ),
        ("/apis/promptopt.dev/v1alpha1/promptoptimizationjobs", ApiPath(JOBS, None, None, None)),
        # A namespace is itself a resource: its name and its own subresources are not a namespace scope.
        ("/api/v1/namespaces", ApiPath(Resource("", "v1", "namespaces"), None, None, None)),
        ("/api/v1/namespaces/x", ApiPath(Resource("", "v1", "namespaces"), None, "x", None)),
        ("/api/v1/namespaces/x/status", ApiPath(Resource("", "v1", "namespaces"), None, "x", "status")),
        ("/api/v1/namespaces/x/finalize", ApiPath(Resource("", "v1", "namespaces"), None, "x", "finalize")),
    ],
)
def test_a_resource_url_names_its_resource_namespace_name_and_subresource(path, expected):
    assert parse_api_path(path) == expected


@pytest.mark.parametrize("path", ["/api", "/api/v1", "/apis", "/apis/promptopt.dev/v1alpha1", "/version", "/livez"])
def test_discovery_urls_name_no_resource(path):
    assert parse_api_path(path) is None
