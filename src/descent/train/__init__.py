"""Training strategies: trainers own the loop, optimizers only update.

* :class:`SupervisedTrainer` — minibatches of ``(x, y)`` with a loss;
* :class:`RecurrentTrainer` — sequences, truncated back-propagation through time;
* :class:`AdversarialTrainer` — a generator against a discriminator (GANs, WGAN-GP);

with :class:`Callback` (and the built-ins :class:`ProgressBar`,
:class:`EarlyStopping`, :class:`LRMonitor`, :class:`CSVLogger`, :class:`JSONLogger`)
and :class:`History`.
"""

from .adversarial import AdversarialTrainer
from .base import LoopState, NonFiniteError, Trainer
from .callbacks import Callback, CSVLogger, EarlyStopping, JSONLogger, LRMonitor, ProgressBar
from .data import epoch_generator, epoch_permutation
from .history import History
from .recurrent import RecurrentTrainer
from .supervised import SupervisedTrainer, accuracy

__all__ = [
    "AdversarialTrainer", "CSVLogger", "Callback", "EarlyStopping", "History", "JSONLogger",
    "LRMonitor", "LoopState", "NonFiniteError", "ProgressBar", "RecurrentTrainer",
    "SupervisedTrainer", "Trainer", "accuracy", "epoch_generator", "epoch_permutation",
]
