"""Training strategies: trainers own the loop, optimizers only update.

* :class:`SupervisedTrainer` — minibatches of ``(x, y)`` with a loss;
* :class:`RecurrentTrainer` — sequences, truncated back-propagation through time;
* :class:`AdversarialTrainer` — a generator against a discriminator (GANs, WGAN-GP);

with :class:`Callback` (and the built-ins :class:`ProgressBar`,
:class:`EarlyStopping`, :class:`LRMonitor`, :class:`CSVLogger`, :class:`JSONLogger`)
and :class:`History`.
"""

from .adversarial import AdversarialTrainer
from .base import LoopState as LoopState
from .base import NonFiniteError, Trainer
from .callbacks import Callback, CSVLogger, EarlyStopping, JSONLogger, LRMonitor, ProgressBar
from .data import epoch_generator as epoch_generator
from .data import epoch_permutation as epoch_permutation
from .history import History
from .recurrent import RecurrentTrainer
from .supervised import SupervisedTrainer
from .supervised import accuracy as accuracy

# What ``from descent.train import *`` (and so the top-level ``descent`` package) exports.
__all__ = [
    "AdversarialTrainer", "CSVLogger", "Callback", "EarlyStopping", "History", "JSONLogger",
    "LRMonitor", "NonFiniteError", "ProgressBar", "RecurrentTrainer", "SupervisedTrainer",
    "Trainer",
]
