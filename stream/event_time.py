"""Event times given by users (config values, command-line flags) as epoch milliseconds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)
FORMS = "epoch milliseconds or ISO-8601 (2026-11-30T12:00:00Z; UTC when it has no zone offset)"


def parse_event_time(value: str | int) -> int:
    """``value`` (an integer or digit string: epoch ms; else ISO-8601) as epoch ms, exact to the millisecond.

    ISO-8601 without a zone is read as UTC, so the same command means the same events on
    every machine. Raises ValueError naming the accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an event time: give {FORMS}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.lstrip("-").isascii() and text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"{value!r} is not an event time: give {FORMS}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // _ONE_MS
