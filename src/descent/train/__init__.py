"""Training strategies: trainers own the loop, optimizers only update.

* :class:`SupervisedTrainer` — minibatches of ``(x, y)`` with a loss;
* :class:`RecurrentTrainer` — sequences, truncated back-propagation through time;
* :class:`AdversarialTrainer` — a generator against a discriminator (GANs, WGAN-GP);

with :class:`Callback` (and the built-ins :class:`ProgressBar`,
:class:`EarlyStopping`, :class:`LRMonitor`, :class:`CSVLogger`, :class:`JSONLogger`),
:class:`History`, the learning-rate finder :func:`lr_find` and :func:`param_groups`
(weight decay off for biases, norms and embeddings).
"""

from .adversarial import AdversarialTrainer
from .base import Trainer
from .callbacks import Callback, CSVLogger, EarlyStopping, JSONLogger, LRMonitor, ProgressBar
from .data import epoch_generator as epoch_generator
from .data import epoch_permutation as epoch_permutation
from .groups import param_groups
from .history import History
from .lr_finder import LRFinderResult, lr_find, lr_find_demo
from .recurrent import RecurrentTrainer
from .state import LoopState as LoopState
from .step import NonFiniteError
from .supervised import SupervisedTrainer
from .supervised import accuracy as accuracy

# What ``from descent.train import *`` (and so the top-level ``descent`` package) exports.
__all__ = [
    "AdversarialTrainer",
    "CSVLogger",
    "Callback",
    "EarlyStopping",
    "History",
    "JSONLogger",
    "LRFinderResult",
    "LRMonitor",
    "NonFiniteError",
    "ProgressBar",
    "RecurrentTrainer",
    "SupervisedTrainer",
    "Trainer",
    "lr_find",
    "lr_find_demo",
    "param_groups",
]
