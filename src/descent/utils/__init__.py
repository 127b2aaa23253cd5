"""Training utilities that work with any optimizer: gradient clipping, weight averaging.

* :func:`clip_grad_norm` (global norm, with a policy for non-finite norms) and
  :func:`clip_grad_value`, in :mod:`descent.utils.clip`;
* :class:`EMA`, an exponential moving average of weights with warmup, a context
  manager that swaps the averages in, and ``state_dict`` support, in
  :mod:`descent.utils.ema`.
"""

from .clip import NONFINITE_POLICIES, clip_grad_norm, clip_grad_value
from .ema import EMA

__all__ = ["EMA", "NONFINITE_POLICIES", "clip_grad_norm", "clip_grad_value"]
