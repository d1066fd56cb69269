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
_SECRET_PATTERNS = (  # (pattern, replacement)
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), MASK),  # OpenAI-style keys (sk-..., sk-proj-..., sk-ant-...)
    (  # Authorization headers, in any quoting: Authorization: Bearer xyz, {'Authorization': 'Basic xyz'}
        re.compile(r"(Authorization['\"]?\s*[:=]\s*['\"]?(?:(?:Bearer|Basic|Token)\s+)?)[^\s'\",}]+", re.IGNORECASE),
        rf"\1{MASK}",
    ),
    (re.compile(r"(api[_-]?key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}&]+", re.IGNORECASE), rf"\1{MASK}"),
)
_extra_secrets: set[str] = set()


def add_secrets(values: Iterable[str]) -> None:
    """Mask these values too, e.g. the credentials Secret's values when their env names look harmless.
    Call it at startup, before other threads redact."""
    _extra_secrets.update(v for v in values if len(v) >= MIN_SECRET_LENGTH)


def redact(text: str) -> str:
    """`text` with every secret masked: values of environment variables named like *KEY*, *TOKEN*,
    *SECRET*, *PASSWORD*, values given to `add_secrets`, and key-like strings (sk-..., Authorization
    headers, api_key=...)."""
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
