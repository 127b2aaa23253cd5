"""The benchmark report's helpers (the benchmark itself runs by hand: python -m descent.bench)."""

from __future__ import annotations

import datetime
import re

import pytest

from descent.bench import run


def test_report_time_needs_no_python_3_11(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(datetime, "UTC", raising=False)  # as on Python 3.10
    stamp = run._utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", stamp)
    now = datetime.datetime.now(datetime.timezone.utc)
    parsed = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M UTC").replace(
        tzinfo=datetime.timezone.utc
    )
    assert abs((now - parsed).total_seconds()) < 120
