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
    "ASGD", "LBFGS", "SGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax",
    "AdversarialTrainer", "CSVLogger", "Callback", "EarlyStopping", "History", "JSONLogger",
    "LRMonitor", "Lion", "Muon", "NAdam", "NonFiniteError", "Optimizer", "ProgressBar", "RAdam",
    "RMSprop", "RecurrentTrainer", "Rprop", "SignSGD", "SparseAdam", "SupervisedTrainer",
    "Trainer", "__version__", "functional", "interop", "load_checkpoint", "save_checkpoint",
    "schedules", "utils",
]
