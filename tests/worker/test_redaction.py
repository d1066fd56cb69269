"""Secrets masked in what the worker writes, and only secrets: the texts below are the kinds the worker writes."""

import io
import subprocess
import sys
import warnings

import litellm
import pytest
from urllib3.exceptions import InsecureRequestWarning

from promptopt.api.v1alpha1 import HttpHeader
from promptopt_worker import redaction
from promptopt_worker.http_services import resolve_headers
from promptopt_worker.problem import InvalidInput
from promptopt_worker.redaction import add_secrets, redact, redacted
from promptopt_worker.reporting import configure_logging

REAL_LOOKING_KEY = "sk-proj-Q3r9TzWb7XkLm2Np8Vc4Hs6Jd1Fg5Ka0"


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "HF_TOKEN", "MY_SECRET", "DB_PASSWORD", "anthropic_api_key"])
def test_redact_masks_values_of_secret_looking_environment_variables(monkeypatch, name):
    monkeypatch.setenv(name, "value-of-a-credential")
    assert redact("failed with value-of-a-credential!") == "failed with ***!"


def test_redact_leaves_short_values_and_harmless_names_alone(monkeypatch):
    monkeypatch.setenv("MAX_TOKENS", "1000")
    monkeypatch.setenv("HOME_DIRECTORY", "/home/someone")
    assert redact("1000 tokens in /home/someone") == "1000 tokens in /home/someone"


def test_redact_masks_key_like_strings_and_authorization_headers():
    text = (
        f"Incorrect API key provided: {REAL_LOOKING_KEY}. headers={{'Authorization': 'Bearer abc.def-123'}} "
        "Authorization: Basic dXNlcjpwYXNzd29yZA== url?api_key=zzz9zzz9zz"
    )
    masked = redact(text)
    assert REAL_LOOKING_KEY not in masked and "abc.def-123" not in masked
    assert "dXNlcjpwYXNzd29yZA" not in masked and "zzz9zzz9zz" not in masked
    assert "Incorrect API key provided: ***" in masked


def test_redact_masks_values_added_as_secrets(monkeypatch):
    monkeypatch.setattr(redaction, "_extra_secrets", set())
    add_secrets(["credential-from-the-secret", "short"])
    assert redact("use credential-from-the-secret, short") == "use ***, short"


def test_redacted_masks_every_string_inside_a_value(monkeypatch):
    monkeypatch.setattr(redaction, "_extra_secrets", set())
    add_secrets(["credential-from-the-secret"])
    value = {"message": "credential-from-the-secret", "items": [("credential-from-the-secret", 3)], "count": 3}
    assert redacted(value) == {"message": "***", "items": [["***", 3]], "count": 3}


def test_names_of_credentials_in_a_sentence_are_left_alone(monkeypatch):
    """Issue 21: the missing-header message came out as "'RAG_AUTHORIZATION': *** it"."""
    monkeypatch.delenv("RAG_AUTHORIZATION", raising=False)
    with pytest.raises(InvalidInput) as caught:
        resolve_headers(
            [HttpHeader(name="Authorization", credentials_key="RAG_AUTHORIZATION")], "spec.task.http.headers"
        )
    missing_header = str(caught.value)
    assert "'RAG_AUTHORIZATION': add it" in missing_header
    sentences = [
        missing_header,
        "spec.task.http.headers[0] needs the environment variable 'RAG_AUTHORIZATION': add it to spec.worker.env",
        "task model 'openai/gpt-4.1-mini': no API key found: put OPENAI_API_KEY in the job's credentials Secret",
        'AnthropicException - {"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}',
        "API key not valid. Please pass a valid API key. Authorization: missing; Basic authentication failed",
    ]
    assert [redact(text) for text in sentences] == sentences


def test_litellm_authentication_errors_lose_the_key_and_keep_the_words():
    error = litellm.AuthenticationError(
        message=f"AuthenticationError: OpenAIException - Incorrect API key provided: {REAL_LOOKING_KEY}. You can "
        "find your API key at https://platform.openai.com/account/api-keys.",
        llm_provider="openai",
        model="gpt-4.1-mini",
    )
    assert redact(str(error)) == (
        "litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect API key provided: ***. You "
        "can find your API key at https://platform.openai.com/account/api-keys."
    )
    gemini_key = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
    error = litellm.AuthenticationError(
        message=f"GeminiException - POST https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:"
        f"generateContent?key={gemini_key}: API key not valid. Please pass a valid API key.",
        llm_provider="gemini",
        model="gemini-2.5-flash",
    )
    assert redact(str(error)) == (
        "litellm.AuthenticationError: GeminiException - POST https://generativelanguage.googleapis.com/v1beta/models/"
        "gemini-2.5-flash:generateContent?key=***: API key not valid. Please pass a valid API key."
    )


def test_header_dumps_lose_the_values_and_keep_the_names():
    dump = (
        "POST /v1/chat/completions HTTP/1.1\n"
        "Host: llm-gateway.internal\n"
        f"Authorization: Bearer {REAL_LOOKING_KEY}\n"
        "Proxy-Authorization: Basic dXNlcjpwYXNzd29yZDEy\n"
        "x-api-key: 0a1b2c3d4e5f6a7b8c9d\n"
        "X-Request-Id: req_8f2c\n"
        "Content-Type: application/json"
    )
    assert redact(dump) == (
        "POST /v1/chat/completions HTTP/1.1\n"
        "Host: llm-gateway.internal\n"
        "Authorization: Bearer ***\n"
        "Proxy-Authorization: Basic ***\n"
        "x-api-key: ***\n"
        "X-Request-Id: req_8f2c\n"
        "Content-Type: application/json"
    )
    headers = str(
        {
            "Authorization": "Bearer tok-without-digits",
            "api-key": "azurekeywithoutdigits",
            "X-Rag-Auth": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyYWctMDEifQ.c2lnbmF0dXJl",
        }
    )
    assert redact(headers) == "{'Authorization': 'Bearer ***', 'api-key': '***', 'X-Rag-Auth': 'Bearer ***'}"


def test_a_json_body_loses_its_credential_fields_only():
    rest = '"max_tokens": 1000, "messages": [{"role": "user", "content": "Which key opens the API?"}]}'
    body = (
        '{"model": "openai/gpt-4.1-mini", "api_key": "tenant-key-without-digits", "access_token": "at.9f8e7d6c", '
        + rest
    )
    assert redact(body) == '{"model": "openai/gpt-4.1-mini", "api_key": "***", "access_token": "***", ' + rest


UNVERIFIED_HTTPS = (
    "Unverified HTTPS request is being made to host 'mlflow.internal' for "
    "/api/2.0/mlflow/runs/get?access_token=at9f8e7d6c5b. Adding certificate verification is strongly "
    "advised."
)


def test_library_warnings_reach_a_workers_log_redacted(logging_restored):
    log = io.StringIO()
    configure_logging(log)
    warnings.warn(UNVERIFIED_HTTPS, InsecureRequestWarning, stacklevel=1)
    assert "WARNING py.warnings" in log.getvalue() and "InsecureRequestWarning: Unverified HTTPS" in log.getvalue()
    assert "access_token=***" in log.getvalue() and "at9f8e7d6c5b" not in log.getvalue()


def test_library_warnings_do_not_precede_a_local_runs_one_line_error():
    """Issue 21: urllib3's warning was printed before the run's error. A process of its own: pytest catches
    warnings itself."""
    code = (
        "import logging, sys, warnings\n"
        "from urllib3.exceptions import InsecureRequestWarning\n"
        "from promptopt_worker.reporting import configure_logging\n"
        "configure_logging(sys.stderr, logging.WARNING)\n"
        f"warnings.warn({UNVERIFIED_HTTPS!r}, InsecureRequestWarning)\n"
        "print('promptopt run: the one-line error', file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stderr == "promptopt run: the one-line error\n"
