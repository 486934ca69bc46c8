"""WHEN on the command line (smtprelay.when): a date, an ISO 8601 time or a duration, the
same everywhere a command takes a time; a duration counts forward for an expiry and back
for a starting point (issue 23, item 15)."""
from __future__ import annotations

import pytest

from smtprelay.when import parse_when

NOW = 1_764_000_000.0     # 2025-11-24T16:00:00Z


@pytest.mark.parametrize("text,future,expected", [
    ("1h", False, NOW - 3600), ("30d", True, NOW + 30 * 86400), ("90m", False, NOW - 5400),
    ("2026-12-01", False, 1_796_083_200.0), ("2026-12-01T10:00:00Z", True, 1_796_119_200.0),
    ("2026-12-01T11:00:00+01:00", False, 1_796_119_200.0), ("2026-12-01T10:00:00", False, 1_796_119_200.0),
])
def test_forms(text: str, future: bool, expected: float) -> None:
    assert parse_when(text, NOW, future=future) == expected


@pytest.mark.parametrize("text", ["tomorrow", "", "1 hour", "2026-13-01", "-1h"])
def test_anything_else_names_the_three_forms(text: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_when(text, NOW, future=True)
    assert "a date like 2026-12-31" in str(err.value) and "a duration like 30d" in str(err.value)
