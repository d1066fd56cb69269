"""The API's times: what kube-apiserver writes (RFC 3339, UTC, whole seconds) and what promptopt writes."""
from datetime import UTC, datetime, timedelta, timezone

from promptopt.api.times import format_time, parse_time


def test_a_written_time_reads_back_as_the_same_moment():
    moment = datetime(2026, 11, 23, 12, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == "2026-11-23T10:00:05Z"
    assert parse_time(format_time(moment)) == moment


def test_offsets_and_fractions_are_read_and_no_time_is_none():
    assert parse_time("2026-11-23T12:00:05.25+01:00") == datetime(2026, 11, 23, 11, 0, 5, 250000, tzinfo=UTC)
    assert parse_time(None) is None and parse_time("") is None
