"""Times as the Kubernetes API writes them (metav1.Time: RFC 3339, UTC, whole seconds), to and from datetime, and
durations as kubectl prints them."""

from __future__ import annotations

from datetime import UTC, datetime


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    """The moment `value` names (RFC 3339, "Z" or an offset); None when there is none."""
    return datetime.fromisoformat(value) if value else None


def format_duration(seconds: float) -> str:
    """A duration as kubectl prints a Job's DURATION and an object's AGE: seconds up to two minutes (119s), then
    two units at short range (2m13s, 3h5m, 3d4h) and one further out (42m, 12h, 30d), rounded down."""
    whole = max(0, int(seconds))
    minutes, hours, days = whole // 60, whole // 3600, whole // 86400
    if whole < 120:
        return f"{whole}s"
    if minutes < 10:
        return _two_units(minutes, "m", whole % 60, "s")
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return _two_units(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return _two_units(days, "d", hours % 24, "h")
    if days < 730:
        return f"{days}d"
    return _two_units(days // 365, "y", days % 365, "d") if days < 2920 else f"{days // 365}y"


def _two_units(large: int, large_unit: str, small: int, small_unit: str) -> str:
    return f"{large}{large_unit}{small}{small_unit}" if small else f"{large}{large_unit}"
