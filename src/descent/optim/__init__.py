"""descent's optimizers: one module per algorithm family, each with its math function.

Every algorithm is also listed by :func:`descent.optim.registry.algorithms`, which
finds the classes the modules define; the exports below are for type checkers and
``from descent.optim import Adam``.
"""

from .adagrad import Adagrad, adagrad
from .adam import Adam, AdamW, adam
from .adamax import Adamax, adamax
from .ademamix import AdEMAMix, ademamix
from .adopt import ADOPT, adopt
from .base import FORMAT_VERSION, Optimizer
from .large_batch import LAMB, LARS, lamb, lars
from .mars import MARS, mars
from .muon_family import MuonAdamW, OrthoMuon, newton_schulz, ortho_muon
from .nadam import NAdam, nadam
from .prodigy import Prodigy
from .radam import RAdam, radam
from .rmsprop import RMSprop, rmsprop
from .schedule_free import ModeSwitching, ScheduleFreeAdamW, ScheduleFreeRAdam, ScheduleFreeSGD
from .sgd import SGD, sgd
from .sign import Lion, SignSGD, lion, sign_sgd
from .soap import SOAP, soap
from .stable_adamw import StableAdamW, stable_adamw

__all__ = [
    "FORMAT_VERSION", "SGD", "Adagrad", "Adam", "AdamW", "Adamax", "Lion", "NAdam", "Optimizer",
    "RAdam", "RMSprop", "SignSGD", "adagrad", "adam", "adamax", "lion", "nadam", "radam",
    "rmsprop", "sgd", "sign_sgd",
]
__all__ += [  # beyond torch.optim
    "ADOPT", "LAMB", "LARS", "MARS", "SOAP", "AdEMAMix", "ModeSwitching", "MuonAdamW",
    "OrthoMuon", "Prodigy", "ScheduleFreeAdamW", "ScheduleFreeRAdam", "ScheduleFreeSGD",
    "StableAdamW", "ademamix", "adopt", "lamb", "lars", "mars", "newton_schulz", "ortho_muon",
    "soap", "stable_adamw",
]
