"""The API's times: what kube-apiserver writes (RFC 3339, UTC, whole seconds) and what promptopt writes."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from promptopt.api.times import format_duration, format_time, parse_time


def test_a_written_time_reads_back_as_the_same_moment():
    moment = datetime(2026, 11, 23, 12, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == "2026-11-23T10:00:05Z"
    assert parse_time(format_time(moment)) == moment


def test_offsets_and_fractions_are_read_and_no_time_is_none():
    assert parse_time("2026-11-23T12:00:05.25+01:00") == datetime(2026, 11, 23, 11, 0, 5, 250000, tzinfo=UTC)
    assert parse_time(None) is None and parse_time("") is None


@pytest.mark.parametrize(
    "seconds,printed",
    [
        (0, "0s"),
        (45.9, "45s"),
        (119, "119s"),
        (120, "2m"),
        (133, "2m13s"),
        (725, "12m"),
        (3 * 3600 + 300, "3h5m"),
        (5 * 3600, "5h"),
        (9 * 3600 + 59, "9h"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (30 * 86400, "30d"),
        (3 * 365 * 86400 + 86400, "3y1d"),
        (9 * 365 * 86400, "9y"),
        (-5, "0s"),
    ],
)
def test_durations_read_as_kubectl_prints_a_jobs_duration(seconds, printed):
    assert format_duration(seconds) == printed
