"""descent beyond torch tensors: NumPy parameters, torch.optim state, parameter management.

* :mod:`descent.interop.arrays`: optimizers over NumPy arrays (modules with
  ``parameters()``/``grads()``, dicts of named arrays, ``.data``/``.grad`` objects),
  updated in place.
"""

from .arrays import array_containers, refresh_gradients, zero_container_grads

__all__ = ["array_containers", "refresh_gradients", "zero_container_grads"]
