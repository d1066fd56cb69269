"""What kubectl says to a job too large for the API server, as the README's table has it: the real kube-apiserver
and etcd with their default limits, a job of each size band, applied the README's ways for large jobs (server-side
apply, `kubectl create`) and the plain way (client-side `kubectl apply`, whose last-applied annotation holds the job
a second time)."""

import json
import re
from pathlib import Path

import pytest
import yaml

from promptopt_harness.jobs import job_exists

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gepa-sentiment.yaml"
MIB = 2**20
RECORDS = 4000  # within the CRD's 5,000: the size comes from the records' length
FILLER = "The case is sturdy, the battery lasts a week and the sound is clear. "

ANNOTATION_TOO_LONG = re.escape("metadata.annotations: Too long: may not be more than 262144 bytes")
ETCD_TOO_LARGE = re.escape("etcdserver: request is too large")
ETCD_CLIENT_TOO_LARGE = (
    r"rpc error: code = ResourceExhausted desc = "
    r"trying to send message larger than max \(\d+ vs\. 2097152\)"
)
BODY_TOO_LARGE = re.escape("(RequestEntityTooLarge)") + ".*" + re.escape("Request entity too large: limit is 3145728")


def job_of_size(size: int) -> dict:
    """The example job with RECORDS inline records, their reviews padded so that its JSON (what kubectl sends) is
    `size` bytes, give or take its name's length."""
    job = yaml.safe_load(EXAMPLE.read_text())

    def record(review_length: int) -> dict:
        review = (FILLER * (review_length // len(FILLER) + 1))[:review_length]
        return {"inputs": {"review": review}, "expectations": {"expected_response": "positive"}}

    job["spec"]["dataset"]["records"] = [record(0)] * RECORDS
    padding, longer = divmod(size - len(as_json(job, "")), RECORDS)
    # Records repeat one of two objects: the test holds each size's records once, however many kubectl calls.
    job["spec"]["dataset"]["records"] = [record(padding + 1)] * longer + [record(padding)] * (RECORDS - longer)
    return job


def as_json(job: dict, name: str) -> str:
    return json.dumps({**job, "metadata": {**job["metadata"], "name": name}}, separators=(",", ":"))


@pytest.mark.parametrize(
    "mib, refusal, client_side_refusal",
    [
        (1.0, None, ANNOTATION_TOO_LONG),
        (1.45, None, ANNOTATION_TOO_LONG),  # just under etcd's 1.5 MiB
        (1.7, ETCD_TOO_LARGE, BODY_TOO_LARGE),
        (2.5, ETCD_CLIENT_TOO_LARGE, BODY_TOO_LARGE),
        (3.5, BODY_TOO_LARGE, BODY_TOO_LARGE),
    ],
)
def test_each_size_band_gets_its_message(cluster, kubectl, mib, refusal, client_side_refusal):
    job = job_of_size(int(mib * MIB))
    for name, command in (("server-side", ("apply", "--server-side")), ("created", ("create",))):
        result = kubectl(*command, "-f", "-", input=as_json(job, name), check=False)
        if refusal is None:
            assert result.returncode == 0, result.stderr
            assert len(cluster.get("poj", name)["spec"]["dataset"]["records"]) == RECORDS
        else:
            assert result.returncode != 0 and re.search(refusal, result.stderr), result.stderr
            assert not job_exists(cluster, name)
    client_side = kubectl("apply", "-f", "-", input=as_json(job, "client-side"), check=False)
    assert client_side.returncode != 0 and re.search(client_side_refusal, client_side.stderr), client_side.stderr
    assert not job_exists(cluster, "client-side")
