"""Masking secrets in everything the worker writes: status, logs, the console and the termination message.

An API key can leak into an error message, a provider's answer or a prompt; every text that leaves the worker
goes through `redact` first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

_SECRET_ENV_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
# Shorter values are unlikely to be credentials, and masking them would garble messages
# (e.g. MAX_TOKENS=1000 would mask every "1000").
MIN_SECRET_LENGTH = 8
MASK = "***"
# Only values are masked, never names: a field or header named like a credential holds one, but a word such as
# RAG_AUTHORIZATION or "API key" in a sentence is no value ("the Secret has no key 'RAG_AUTHORIZATION': add it").
_CREDENTIAL_NAME = r"(?:proxy-)?authorization|(?:x-(?:goog-)?)?api[-_]?key|access[-_]?token|client[-_]?secret|password"
# An unquoted value counts when it is token-like and holds a digit, as keys do and words of a sentence do not.
_CREDENTIAL = r"(?=[\w.~+/=-]*\d)[\w.~+/=-]{8,}"
_SECRET_PATTERNS = (  # (pattern, replacement)
    # Key formats: OpenAI and Anthropic (sk-...), Google (AIza...), Hugging Face, Groq, xAI, GitHub, AWS key ids,
    # and JWTs (service account and MLflow tokens).
    (
        re.compile(
            r"\b(?:sk-[\w-]{8,}|AIza[\w-]{30,}|hf_[A-Za-z0-9]{20,}|gsk_[A-Za-z0-9]{20,}|xai-[A-Za-z0-9]{20,}"
            r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
            r"|eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]+)"
        ),
        MASK,
    ),
    # A quoted pair, as JSON or a Python dict shows it: "api_key": "...", {'Authorization': 'Bearer ...'}
    (
        re.compile(
            rf"((['\"])(?:{_CREDENTIAL_NAME})\2\s*:\s*(['\"])(?:(?:Bearer|Basic|Token)\s+)?)[^'\"]+(?=\3)",
            re.IGNORECASE,
        ),
        rf"\1{MASK}",
    ),
    # A query or keyword argument: ?api_key=..., api_key='...'
    (re.compile(rf"((?<![\w-])(?:{_CREDENTIAL_NAME})=['\"]?)[^\s'\"&,;)}}]+", re.IGNORECASE), rf"\1{MASK}"),
    # A header line, where prose may look alike ("Authorization: add it"): x-api-key: ..., Authorization: Token ...
    (
        re.compile(
            rf"((?<![\w-])(?:{_CREDENTIAL_NAME}):\s*(?:(?:Bearer|Basic|Token)\s+)?){_CREDENTIAL}", re.IGNORECASE
        ),
        rf"\1{MASK}",
    ),
    # A credential after its scheme, whichever header carries it: Authorization: Bearer ..., X-Rag-Auth: Basic ...
    (re.compile(rf"(\b(?:Bearer|Basic)\s+){_CREDENTIAL}"), rf"\1{MASK}"),
)
_extra_secrets: set[str] = set()


def add_secrets(values: Iterable[str]) -> None:
    """Mask these values too, e.g. the credentials Secret's values when their env names look harmless.
    Call it at startup, before other threads redact."""
    _extra_secrets.update(v for v in values if len(v) >= MIN_SECRET_LENGTH)


def redact(text: str) -> str:
    """`text` with every secret masked: values of environment variables named like *KEY*, *TOKEN*,
    *SECRET*, *PASSWORD*, values given to `add_secrets`, keys in known formats (sk-..., AIza...), and the values of
    fields and headers that carry credentials (Authorization, api-key, api_key=...). Names stay."""
    secrets = {v for k, v in os.environ.items() if _SECRET_ENV_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH}
    for secret in sorted(secrets | _extra_secrets, key=len, reverse=True):  # longest first: one may contain another
        text = text.replace(secret, MASK)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redacted(value: Any) -> Any:
    """`value` with `redact` applied to every string inside it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item) for item in value]
    return value
