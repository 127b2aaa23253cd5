"""Capture and restore the global random number generators of one process.

The state covers Python's :mod:`random`, NumPy's legacy global generator
(``np.random.seed`` / ``np.random.rand``), torch's CPU generator and, where CUDA is
available and initialised, every CUDA device's generator. It is a plain tree of JSON
values and tensors, so it fits in a checkpoint. Generators a program creates itself
(``torch.Generator``, ``np.random.default_rng``) are not global: keep their state in
the trainer state (``generator.get_state()`` is a tensor).

Example::

    state = capture_rng_state()
    a = torch.rand(3)
    restore_rng_state(state)
    assert torch.equal(torch.rand(3), a)
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """The current state of this process's global generators (Python, NumPy, torch, CUDA)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": [int(key) for key in keys],
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def check_rng_state(state: Mapping[str, Any]) -> tuple[Any, Any, torch.Tensor, list[Any]]:
    """Check a state from :func:`capture_rng_state` without applying it.

    Returns the Python, NumPy, torch and CUDA parts in the forms the generators take;
    raises ``ValueError`` naming the malformed part.
    """
    if not isinstance(state, Mapping) or not {"python", "numpy", "torch"} <= set(state):
        raise ValueError(
            "restore_rng_state: expected a dict with 'python', 'numpy' and 'torch' "
            f"entries, got {type(state).__name__}"
            f"{sorted(state) if isinstance(state, Mapping) else ''}"
        )
    try:
        python = state["python"]
        gauss_next = python["gauss_next"]
        if gauss_next is not None and not isinstance(gauss_next, float):
            raise TypeError(f"gauss_next={gauss_next!r} is not a float or None")
        python_state = (int(python["version"]), tuple(int(x) for x in python["state"]), gauss_next)
        random.Random().setstate(python_state)  # validates without touching the global one
        numpy = state["numpy"]
        numpy_state = (
            str(numpy["kind"]),
            np.asarray(numpy["keys"], dtype=np.uint32),
            int(numpy["position"]),
            int(numpy["has_gauss"]),
            float(numpy["cached_gaussian"]),
        )
        np.random.RandomState().set_state(numpy_state)
    except (KeyError, IndexError, TypeError, ValueError, OverflowError) as error:
        raise ValueError(
            f"restore_rng_state: malformed Python or NumPy state ({error!r})"
        ) from None
    torch_state = state["torch"]
    if not (
        isinstance(torch_state, torch.Tensor)
        and torch_state.dtype == torch.uint8
        and torch_state.shape == torch.get_rng_state().shape
    ):
        raise ValueError(
            "restore_rng_state: state['torch'] must be a uint8 tensor shaped like "
            f"torch.get_rng_state(), got {type(torch_state).__name__}"
        )
    cuda_states = state.get("cuda") or []
    if not isinstance(cuda_states, list | tuple) or not all(
        isinstance(item, torch.Tensor) and item.dtype == torch.uint8 and item.dim() == 1
        for item in cuda_states
    ):
        raise ValueError(
            "restore_rng_state: state['cuda'] must be a list of uint8 tensors "
            "(one per device, from torch.cuda.get_rng_state_all())"
        )
    return python_state, numpy_state, torch_state, list(cuda_states)


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set this process's global generators to a state from :func:`capture_rng_state`.

    The whole state is checked before any generator is changed (``ValueError``
    naming the bad entry). CUDA states are restored when this process sees the same
    number of CUDA devices; otherwise they are skipped with a warning.
    """
    python_state, numpy_state, torch_state, cuda_states = check_rng_state(state)
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)
    if cuda_states:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            warnings.warn(
                f"restore_rng_state: the state holds {len(cuda_states)} CUDA "
                "generator(s) but this process sees "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} "
                "CUDA device(s); CUDA generators were not restored",
                stacklevel=2,
            )
