"""Plot schedules and schedulers (matplotlib, an optional dependency)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _checks
from .functions import Schedule
from .plateau import ReduceLROnPlateau
from .scheduler import BaseScheduler

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _curves(label: str, item: Any, steps: range) -> list[tuple[str, list[float]]]:
    if isinstance(item, Schedule):
        return [(label, [item(t) for t in steps])]
    if isinstance(item, BaseScheduler):
        curves = []
        for key in item.keys:
            per_step = [item.value_at(t, key) for t in steps]
            groups = len(per_step[0])
            for gi in range(groups):
                name = label if len(item.keys) == 1 else f"{label} {key}"
                name = name if groups == 1 else f"{name} (group {gi})"
                curves.append((name, [values[gi] for values in per_step]))
        return curves
    raise TypeError(
        f"plot: {label}={item!r} has type {type(item).__name__}; expected a "
        "Schedule or a descent scheduler (ReduceLROnPlateau depends on metrics "
        "and cannot be plotted ahead)"
    )


def plot(
    schedules: Schedule | BaseScheduler | Sequence[Any] | Mapping[str, Any],
    steps: int,
    path: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    log_scale: bool = False,
    columns: int = 1,
) -> Figure:
    """Plot one or more schedules (or schedulers) over ``steps`` steps; return the figure,
    saved as an image (PNG for ``.png``) at ``path`` when one is given.

    ``schedules`` is a schedule, a scheduler, a list of them, or a dict from label to
    either. Schedulers are plotted with :meth:`~BaseScheduler.value_at` (they are not
    stepped), one curve per group and driven option. With a dict and ``columns > 1`` each
    entry gets its own panel, on a grid ``columns`` wide.

    The figure is made without pyplot: matplotlib's global backend and pyplot's figures
    are left as they are (in a notebook, leave the figure as a cell's value to show it).
    Needs matplotlib (``pip install "descent[demo]"``); it is imported only here.

    Example::

        >>> from descent.schedules import Cosine, plot
        >>> plot({"cosine": Cosine(100)}, steps=120, path="cosine.png")  # doctest: +SKIP
    """
    count = _checks.integer("plot", "steps", steps, minimum=1)
    columns = _checks.integer("plot", "columns", columns, minimum=1)
    if isinstance(schedules, Mapping):
        items = list(schedules.items())
    elif isinstance(schedules, Schedule | BaseScheduler):
        items = [(type(schedules).__name__, schedules)]
    elif isinstance(schedules, Sequence) and not isinstance(schedules, str):
        items = [(f"{type(item).__name__} [{i}]", item) for i, item in enumerate(schedules)]
    elif isinstance(schedules, ReduceLROnPlateau):
        items = [("ReduceLROnPlateau", schedules)]
    else:
        raise TypeError(
            f"plot: schedules={schedules!r} is invalid; expected a schedule, a "
            "scheduler, or a list or dict of them"
        )
    if not items:
        raise ValueError("plot: schedules is empty; expected at least one schedule")
    curves = [(label, _curves(label, item, range(count))) for label, item in items]

    try:
        import matplotlib  # noqa: F401  (a clear error when it is missing)
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "plot needs matplotlib, which is not installed; install it with "
            'pip install matplotlib (or pip install "descent[demo]")'
        ) from None

    panels = curves if columns > 1 else [(title or "", [c for _, cs in curves for c in cs])]
    rows = -(-len(panels) // columns)
    cols = min(columns, len(panels))
    figure = Figure(figsize=(4.2 * cols, 2.8 * rows), layout="tight")
    axes = figure.subplots(rows, cols, squeeze=False)
    x = list(range(count))
    for index, (panel_title, panel_curves) in enumerate(panels):
        axis = axes[index // cols][index % cols]
        for label, values in panel_curves:
            if columns > 1 and len(panel_curves) > 1:
                label = label.removeprefix(panel_title).strip() or label
            axis.plot(x, values, label=label, linewidth=1.4)
        if panel_title:
            axis.set_title(panel_title, fontsize=9)
        if log_scale:
            axis.set_yscale("log")
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        if columns == 1 or len(panel_curves) > 1:
            axis.legend(fontsize=7)
    for index in range(len(panels), rows * cols):
        axes[index // cols][index % cols].axis("off")
    if title and columns > 1:
        figure.suptitle(title)
    if path is not None:
        figure.savefig(Path(path), dpi=110)
    return figure
