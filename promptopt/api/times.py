"""Times as the Kubernetes API writes them (metav1.Time: RFC 3339, UTC, whole seconds), to and from datetime."""
from __future__ import annotations

from datetime import UTC, datetime


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    """The moment `value` names (RFC 3339, "Z" or an offset); None when there is none."""
    return datetime.fromisoformat(value) if value else None
