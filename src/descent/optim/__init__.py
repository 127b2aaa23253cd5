"""descent's optimizers: one module per algorithm family, each with its math function.

Every algorithm is also listed by :func:`descent.optim.registry.algorithms`, which
finds the classes the modules define; the exports below are for type checkers and
``from descent.optim import Adam``.
"""

from .adadelta import Adadelta, adadelta
from .adafactor import Adafactor, adafactor
from .adagrad import Adagrad, adagrad
from .adam import Adam, AdamW, adam
from .adamax import Adamax, adamax
from .ademamix import AdEMAMix, ademamix
from .adopt import ADOPT, adopt
from .asgd import ASGD, asgd
from .base import FORMAT_VERSION, Optimizer
from .large_batch import LAMB, LARS, lamb, lars
from .lbfgs import LBFGS
from .mars import MARS, mars
from .muon import Muon, muon, newton_schulz
from .muon_family import MuonAdamW, OrthoMuon, ortho_muon
from .nadam import NAdam, nadam
from .prodigy import Prodigy
from .radam import RAdam, radam
from .rmsprop import RMSprop, rmsprop
from .rprop import Rprop, rprop
from .schedule_free import ModeSwitching, ScheduleFreeAdamW, ScheduleFreeRAdam, ScheduleFreeSGD
from .sgd import SGD, sgd
from .sign import Lion, SignSGD, lion, sign_sgd
from .soap import SOAP, soap
from .sparse_adam import SparseAdam, sparse_adam
from .stable_adamw import StableAdamW, stable_adamw

__all__ = [
    "ASGD",
    "FORMAT_VERSION",
    "LBFGS",
    "SGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Lion",
    "Muon",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SignSGD",
    "SparseAdam",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "asgd",
    "lion",
    "muon",
    "nadam",
    "newton_schulz",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
    "sign_sgd",
    "sparse_adam",
]
__all__ += [  # beyond torch.optim
    "ADOPT",
    "LAMB",
    "LARS",
    "MARS",
    "SOAP",
    "AdEMAMix",
    "ModeSwitching",
    "MuonAdamW",
    "OrthoMuon",
    "Prodigy",
    "ScheduleFreeAdamW",
    "ScheduleFreeRAdam",
    "ScheduleFreeSGD",
    "StableAdamW",
    "ademamix",
    "adopt",
    "lamb",
    "lars",
    "mars",
    "ortho_muon",
    "soap",
    "stable_adamw",
]
