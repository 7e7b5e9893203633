"""``[stream] start_at``: the accepted forms, parsed once into ``start_at_ms``, and clear errors otherwise."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from inttower.config import load_config
from inttower.errors import ConfigError
from stream.config import StreamConfig, parse_start_at

NOV_30_NOON_UTC_MS = 1_796_040_000_000  # 2026-11-30T12:00:00Z


@pytest.mark.parametrize("name", ["earliest", "latest", "committed"])
def test_named_starts_have_no_event_time(name: str) -> None:
    config = StreamConfig(start_at=name)
    assert config.start_at == name and config.start_at_ms is None


def test_the_default_is_earliest() -> None:
    assert StreamConfig().start_at == "earliest" and StreamConfig().start_at_ms is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1_764_504_000_123, 1_764_504_000_123),
        ("1764504000123", 1_764_504_000_123),
        ("2026-11-30T12:00:00Z", NOV_30_NOON_UTC_MS),
        ("2026-11-30T13:30:00+01:30", NOV_30_NOON_UTC_MS),
        ("2026-11-30T12:00:00", NOV_30_NOON_UTC_MS),  # no zone: UTC
        ("2026-11-30T12:00:00.123999Z", NOV_30_NOON_UTC_MS + 123),  # truncated to whole ms
        ("2026-11-30", NOV_30_NOON_UTC_MS - 12 * 3_600_000),
    ],
)
def test_event_times_are_parsed_once_into_epoch_ms(value: str | int, expected: int) -> None:
    config = StreamConfig(start_at=value)
    assert config.start_at_ms == expected
    assert config.start_at == value  # the setting itself is kept as written
    assert dataclasses.replace(config, topic="other").start_at_ms == expected


@pytest.mark.parametrize(
    "value",
    ["", "Earliest", "newest", "yesterday", "2026-13-01T00:00:00Z", "1969-12-31T23:59:59Z", -1, True, 1.5, None, ["latest"]],
)
def test_bad_values_are_a_value_error_naming_the_field_and_the_forms(value: object) -> None:
    with pytest.raises(ValueError) as failure:
        StreamConfig(start_at=value)  # type: ignore[arg-type]
    message = str(failure.value)
    assert message.startswith("start_at must be ")
    for form in ('"earliest"', '"latest"', '"committed"', "epoch milliseconds", "ISO-8601", "2026-11-30T12:00:00Z"):
        assert form in message
    assert repr(value) in message
    with pytest.raises(ValueError):
        parse_start_at(value)


def _load(tmp_path: Path, line: str):
    path = tmp_path / "c.toml"
    path.write_text(f"[stream]\n{line}\n")
    return load_config(path).stream


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('start_at = "latest"', None),
        ("start_at = 1764504000000", 1_764_504_000_000),
        ('start_at = "2026-11-30T12:00:00Z"', NOV_30_NOON_UTC_MS),
    ],
)
def test_toml_values_reach_the_config(tmp_path: Path, line: str, expected: int | None) -> None:
    stream = _load(tmp_path, line)
    assert stream.start_at_ms == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('start_at = "soon"', r"c\.toml: stream: start_at must be .*got 'soon'"),
        ("start_at = -5", r"c\.toml: stream: start_at must be .*got -5"),
        ("start_at = 1.5", r"c\.toml: stream\.start_at: expected str \| int, got a number \(1\.5\)"),
        ("start_at = true", r"c\.toml: stream\.start_at: expected str \| int, got a boolean"),
        # TOML's own datetime literal is not one of the forms: quote it.
        ("start_at = 2026-11-30T12:00:00Z", r"c\.toml: stream\.start_at: expected str \| int"),
    ],
)
def test_bad_toml_values_fail_with_one_line_naming_the_key(tmp_path: Path, line: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as failure:
        _load(tmp_path, line)
    assert "\n" not in str(failure.value)
