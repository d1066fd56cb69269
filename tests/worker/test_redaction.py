"""Secrets masked in what the worker writes."""
import pytest

from promptopt_worker import redaction
from promptopt_worker.redaction import add_secrets, redact, redacted

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
