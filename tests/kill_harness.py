"""A harness for kill-and-resume tests: runs are forked children that the test SIGKILLs.

A test writes a training script that calls :func:`serve` (the script side): the server
process imports torch and warms up once, then reads one run per line on stdin
(tab-separated fields, the last one the path of the run's log), forks a child for it,
answers ``PID <pid>``, and ``EXIT <code>`` when the child ends. The child calls the
script's ``run(fields, say)``; ``say`` appends a line to the run's log. The test side
(:class:`ForkServer`, :func:`run_to_end`, :func:`run_and_kill`, :func:`kill_at_random`)
starts runs, waits for chosen log lines, kills, and compares the final parameters with
:func:`assert_bit_identical`.

The scripts run with :func:`script_env`, which puts this directory on ``PYTHONPATH`` so
that they can ``from kill_harness import serve``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent

Count = int | None | Callable[[int], int | None]


# -- script side: runs in the server process written by the test --------------------------

Say = Callable[[str], None]


def serve(warm_up: Callable[[str], None], run: Callable[[list[str], Say], None]) -> None:
    """Serve runs from stdin, each in a forked child, until stdin closes.

    ``warm_up(scratch)`` runs once first (a full training in a scratch directory: the
    first optimizer imports torch._dynamo, ~2 s), so that forked runs start warm.
    """
    with tempfile.TemporaryDirectory() as scratch:
        warm_up(scratch)
    for line in sys.stdin:
        *fields, log = line.rstrip("\n").split("\t")
        pid = os.fork()
        if pid == 0:
            with open(log, "a") as file:

                def say(message: str) -> None:  # appends a line to the run's log
                    file.write(message + "\n")
                    file.flush()

                try:
                    run(fields, say)
                    code = 0
                except BaseException:
                    file.write(traceback.format_exc())
                    file.flush()
                    code = 1
            os._exit(code)
        print("PID", pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print("EXIT", os.waitstatus_to_exitcode(status), flush=True)


# -- test side ------------------------------------------------------------------------------


def script_env() -> dict[str, str]:
    """The environment of a script: one OpenMP thread, no warnings, this directory importable."""
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=path)


def run_in_fresh_interpreter(script: Path, *args: object) -> subprocess.CompletedProcess[str]:
    """Run ``script args...`` to its end in a new interpreter (no fork server)."""
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


class ForkServer:
    """The script in server mode: each ``start`` is a forked child that the test may kill."""

    def __init__(self, script: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(script), "serve"],
            env=script_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def start(self, fields: Sequence[object], log: Path) -> int:
        """Start a run with ``fields`` (the script's arguments) logging to ``log``; return
        the child's pid."""
        self.process.stdin.write("\t".join([*map(str, fields), str(log)]) + "\n")
        self.process.stdin.flush()
        word, pid = self.process.stdout.readline().split()
        assert word == "PID"
        return int(pid)

    def wait(self) -> int:
        """Wait for the running child; return its exit code (minus the signal if killed)."""
        word, code = self.process.stdout.readline().split()
        assert word == "EXIT"
        return int(code)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def wait_for(log: Path, trigger: str, count: int, timeout: float = 60.0) -> None:
    """Return once ``log`` has ``count`` lines starting with ``trigger``."""
    deadline = time.monotonic() + timeout
    while sum(line.startswith(trigger) for line in lines(log)) < count:
        assert time.monotonic() < deadline, f"no {count} x {trigger!r} in {lines(log)}"
        time.sleep(0.0005)


def resumed_step(log: Path) -> int:
    """The step the run of ``log`` resumed from (its ``RESUMED <step>`` line)."""
    return int(next(line for line in lines(log) if line.startswith("RESUMED")).split()[1])


def run_to_end(server: ForkServer, fields: Sequence[object], log: Path) -> int:
    """Run (resuming) to completion; return the step it resumed from."""
    log.unlink(missing_ok=True)
    server.start(fields, log)
    assert server.wait() == 0, log.read_text()
    assert lines(log)[-1] == "DONE"
    return resumed_step(log)


def run_and_kill(
    server: ForkServer,
    fields: Sequence[object],
    log: Path,
    trigger: str,
    count: Count,
    delay: float,
) -> int:
    """Start a run; SIGKILL it ``delay`` s after its ``count``-th ``trigger`` line (counted
    from its start). ``count`` may be a function of the step the run resumed from; None
    (or a function returning None) lets the run finish. Returns the step it resumed from.
    """
    log.unlink(missing_ok=True)
    pid = server.start(fields, log)
    wait_for(log, "RESUMED", 1)
    resumed = resumed_step(log)
    if callable(count):
        count = count(resumed)
    if count is None:
        assert server.wait() == 0, log.read_text()
        return resumed
    wait_for(log, trigger, count)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    assert server.wait() == -signal.SIGKILL, f"the run ended before the kill: {lines(log)}"
    return resumed


def kill_at_random(
    server: ForkServer,
    fields: Sequence[object],
    log: Path,
    trigger: str,
    target: Callable[[int], int | None],
    rng: random.Random,
    kills: int,
) -> list[int]:
    """Kill the run ``kills`` times, each a random 0-15 ms after its ``target(resumed)``-th
    ``trigger`` line, then let it finish (a run for which ``target`` gives None finishes
    early). Returns the steps the runs resumed from."""
    resumed_from: list[int] = []
    for _ in range(kills + 1):
        resumed = run_and_kill(
            server,
            fields,
            log,
            trigger,
            target if len(resumed_from) < kills else None,
            rng.uniform(0.0, 0.015),
        )
        resumed_from.append(resumed)
        if lines(log)[-1] == "DONE":
            break
    return resumed_from


def assert_bit_identical(result: Path, reference: dict[str, torch.Tensor]) -> None:
    """The tensors saved in ``result`` have the names and exact values of ``reference``."""
    final = load_file(result)
    assert list(final) == list(reference)
    for name, tensor in reference.items():
        difference = (final[name].double() - tensor.double()).abs().max().item()
        assert torch.equal(final[name], tensor), f"{name} differs by up to {difference:.3g}"
