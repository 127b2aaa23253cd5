"""descent.bench.compare: every optimizer at its defaults on the bundled tasks."""

from __future__ import annotations

import math

import pytest

import descent
from descent.bench.compare import SKIPPED, compare, format_table

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rows_for_each_task_and_optimizer_and_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sklearn")
    modes: list[bool] = []
    train = descent.ScheduleFreeAdamW.train

    def recording(self: descent.ScheduleFreeAdamW, mode: bool = True) -> object:
        modes.append(mode)
        return train(self, mode)

    monkeypatch.setattr(descent.ScheduleFreeAdamW, "train", recording)
    rows = compare(["Adam", "ScheduleFreeAdamW", "MuonAdamW"], epochs=1)
    assert [(row.task, row.optimizer) for row in rows] == [
        (task, name)
        for task in ("digits MLP", "char GRU")
        for name in ("Adam", "ScheduleFreeAdamW", "MuonAdamW")
    ]
    assert all(math.isfinite(row.train_loss) and row.ms_per_step > 0 for row in rows)
    assert all(0 <= row.metric <= 1 for row in rows if row.task == "digits MLP")
    assert modes[-1] is False and modes.count(False) == 2  # evaluated at the average x
    table = format_table(rows)
    assert "| optimizer | train loss (last epoch) | test accuracy | ms per step |" in table
    assert "unigram baseline" in table and table.count("| MuonAdamW |") == 2


@pytest.mark.slow
def test_every_registered_optimizer_runs_at_its_defaults() -> None:
    rows = compare(tasks=["chars"], epochs=1, batch_size=128)
    names = {row.optimizer for row in rows}
    assert names == set(descent.optim.registry.algorithms()) - set(SKIPPED)
    assert all(row.ms_per_step > 0 for row in rows)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"optimizers=\['Adma'\] are not in descent's registry"):
        compare(["Adma"])
    with pytest.raises(ValueError, match=r"tasks=\['mnist'\]"):
        compare(["Adam"], tasks=["mnist"])
