"""The seeded corruption fuzz of tests/checkpoint_fuzz.py: every case refused, fallen back
from and repaired; none silent.

The default run takes ten cases of every kind of damage; ``-m slow`` runs 2,000 cases
with another seed. The figures for the notes come from the script itself::

    PYTHONPATH=src python tests/checkpoint_fuzz.py --cases 2000 --seed 0
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from checkpoint_fuzz import DAMAGES, fuzz

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, links and SIGALRM"),
]


def _check(cases: int, seed: int, workspace: Path) -> None:
    counts, outcomes = fuzz(cases, seed, workspace)
    silent = [f"{o.description}: {'; '.join(o.problems)}" for o in outcomes if o.silent]
    assert not silent, f"{len(silent)} of {cases} cases silent:\n" + "\n".join(silent[:20])
    assert counts["refused"] == counts["fell back"] == counts["repaired"] == cases


def test_every_damage_is_refused_fallen_back_from_and_repaired(tmp_path: Path) -> None:
    _check(10 * len(DAMAGES), seed=0, workspace=tmp_path)


@pytest.mark.slow
def test_two_thousand_damaged_checkpoints(tmp_path: Path) -> None:
    _check(2000, seed=1, workspace=tmp_path)
