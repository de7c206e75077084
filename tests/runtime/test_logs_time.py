"""The text format's time stamp: the second's text is reused while it lasts, so it must read
as :class:`logging.Formatter` writes it, whatever second and millisecond a record has."""
from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from checkid.runtime.logs import FORMAT, TextFormatter

FORMATTER = TextFormatter(FORMAT)


@given(st.lists(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False), min_size=1, max_size=20))
def test_the_time_reads_as_the_stdlib_formatter_writes_it(times: list[float]) -> None:
    reference = logging.Formatter(FORMAT)
    for created in sorted(times) + times:  # in order (the second reused) and not
        record = logging.LogRecord("checkid.test", logging.INFO, "", 0, "m", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert FORMATTER.formatTime(record) == reference.formatTime(record)
