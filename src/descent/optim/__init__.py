"""descent's optimizers: one module per algorithm family, each with its math function.

Every algorithm is also listed by :func:`descent.optim.registry.algorithms`, which
finds the classes the modules define; the exports below are for type checkers and
``from descent.optim import Adam``.
"""

from .adagrad import Adagrad, adagrad
from .adam import Adam, AdamW, adam
from .adamax import Adamax, adamax
from .base import FORMAT_VERSION, Optimizer
from .nadam import NAdam, nadam
from .radam import RAdam, radam
from .rmsprop import RMSprop, rmsprop
from .sgd import SGD, sgd
from .sign import Lion, SignSGD, lion, sign_sgd

__all__ = [
    "FORMAT_VERSION", "SGD", "Adagrad", "Adam", "AdamW", "Adamax", "Lion", "NAdam", "Optimizer",
    "RAdam", "RMSprop", "SignSGD", "adagrad", "adam", "adamax", "lion", "nadam", "radam",
    "rmsprop", "sgd", "sign_sgd",
]
