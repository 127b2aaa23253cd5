"""descent beyond torch tensors: NumPy parameters, torch.optim state, parameter management.

* :mod:`descent.interop.arrays`: optimizers over NumPy arrays (modules with
  ``parameters()``/``grads()``, dicts of named arrays, ``.data``/``.grad`` objects),
  updated in place (descent's optimizers use it: pass the containers as ``params``);
* :mod:`descent.interop.torch_optim`: :func:`from_torch` and :func:`to_torch` move a
  live optimizer, state included, between torch.optim and descent;
  :func:`convert_state_dict` does it for a saved state dict;
* :mod:`descent.interop.groups`: :func:`add_params` and :func:`remove_params` change
  the parameters of a live optimizer, keeping everyone else's state.

The functional API (``init``/``step`` per algorithm) is :mod:`descent.functional`.
"""

from .groups import add_params, remove_params
from .torch_optim import convert_state_dict, from_torch, to_torch

__all__ = ["add_params", "convert_state_dict", "from_torch", "remove_params", "to_torch"]
