"""descent: optimizers as pure update rules, and training strategies kept apart from them.

>>> import torch, descent
>>> model = torch.nn.Linear(3, 1)
>>> opt = descent.Adam(model, lr=1e-2)
>>> model(torch.ones(2, 3)).sum().backward()
>>> opt.step()
"""

from . import functional as functional
from . import interop as interop
from . import schedules as schedules
from . import utils as utils
from .checkpoint import load_checkpoint, save_checkpoint
from .optim import ADOPT as ADOPT
from .optim import (
    ASGD,
    LBFGS,
    SGD,
    Adadelta,
    Adafactor,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    Lion,
    Muon,
    NAdam,
    Optimizer,
    RAdam,
    RMSprop,
    Rprop,
    SignSGD,
    SparseAdam,
)
from .optim import LAMB as LAMB
from .optim import LARS as LARS
from .optim import MARS as MARS
from .optim import SOAP as SOAP
from .optim import AdEMAMix as AdEMAMix
from .optim import MuonAdamW as MuonAdamW
from .optim import OrthoMuon as OrthoMuon
from .optim import Prodigy as Prodigy
from .optim import ScheduleFreeAdamW as ScheduleFreeAdamW
from .optim import ScheduleFreeRAdam as ScheduleFreeRAdam
from .optim import ScheduleFreeSGD as ScheduleFreeSGD
from .optim import StableAdamW as StableAdamW
from .train import (
    AdversarialTrainer,
    Callback,
    CSVLogger,
    EarlyStopping,
    History,
    JSONLogger,
    LRMonitor,
    NonFiniteError,
    ProgressBar,
    RecurrentTrainer,
    SupervisedTrainer,
    Trainer,
)
from .train import param_groups as param_groups

__version__ = "0.1.0"

__all__ = [
    "ASGD",
    "LBFGS",
    "SGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "AdversarialTrainer",
    "CSVLogger",
    "Callback",
    "EarlyStopping",
    "History",
    "JSONLogger",
    "LRMonitor",
    "Lion",
    "Muon",
    "NAdam",
    "NonFiniteError",
    "Optimizer",
    "ProgressBar",
    "RAdam",
    "RMSprop",
    "RecurrentTrainer",
    "Rprop",
    "SignSGD",
    "SparseAdam",
    "SupervisedTrainer",
    "Trainer",
    "__version__",
    "functional",
    "interop",
    "load_checkpoint",
    "save_checkpoint",
    "schedules",
    "utils",
]
__all__ += [  # beyond torch.optim
    "ADOPT",
    "LAMB",
    "LARS",
    "MARS",
    "SOAP",
    "AdEMAMix",
    "MuonAdamW",
    "OrthoMuon",
    "Prodigy",
    "ScheduleFreeAdamW",
    "ScheduleFreeRAdam",
    "ScheduleFreeSGD",
    "StableAdamW",
]
