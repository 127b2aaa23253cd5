"""Learning-rate (and other hyperparameter) schedules: pure functions of the step count.

* :mod:`~descent.schedules.functions`: schedules (``Cosine``, ``OneCycle``, ``Warmup``,
  ``Join``, ...), each a closed-form function of the step; they compose.
* :class:`Scheduler`: binds a schedule to any optimizer's param groups (lr, momentum,
  ``betas[0]``, weight_decay, ...), with exact, order-independent resume.
* torch's schedulers under their names (``StepLR``, ``CosineAnnealingLR``, ``OneCycleLR``,
  ``MultiplicativeLR``, ``SequentialLR``, ``ChainedScheduler``, ..., ``ReduceLROnPlateau``):
  switching from torch is a change of import.
* :func:`plot`: draw schedules to a PNG.

Example::

    >>> import torch
    >>> from descent.schedules import Scheduler, warmup_cosine
    >>> opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    >>> sched = Scheduler(opt, warmup_cosine(total_steps=1000, warmup_steps=100))
    >>> for _ in range(100):
    ...     opt.step()
    ...     sched.step()
    >>> opt.param_groups[0]["lr"]
    0.1
"""

from .functions import (
    Constant,
    Cosine,
    CosineRestarts,
    Cyclic,
    Exponential,
    InverseSqrt,
    Join,
    Lambda,
    Linear,
    Multiplicative,
    MultiStep,
    Offset,
    OneCycle,
    Polynomial,
    Product,
    Scale,
    Schedule,
    Step,
    Warmup,
    WarmupStableDecay,
    warmup_cosine,
)
from .lr_scheduler import (
    ChainedScheduler,
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    CyclicLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiplicativeLR,
    MultiStepLR,
    OneCycleLR,
    PolynomialLR,
    SequentialLR,
    StepLR,
)
from .plateau import ReduceLROnPlateau
from .plot import plot
from .scheduler import FORMAT_VERSION, BaseScheduler, Scheduler

__all__ = [
    "FORMAT_VERSION",
    "BaseScheduler",
    "ChainedScheduler",
    "Constant",
    "ConstantLR",
    "Cosine",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CosineRestarts",
    "Cyclic",
    "CyclicLR",
    "Exponential",
    "ExponentialLR",
    "InverseSqrt",
    "Join",
    "Lambda",
    "LambdaLR",
    "Linear",
    "LinearLR",
    "MultiStep",
    "MultiStepLR",
    "Multiplicative",
    "MultiplicativeLR",
    "Offset",
    "OneCycle",
    "OneCycleLR",
    "Polynomial",
    "PolynomialLR",
    "Product",
    "ReduceLROnPlateau",
    "Scale",
    "Schedule",
    "Scheduler",
    "SequentialLR",
    "Step",
    "StepLR",
    "Warmup",
    "WarmupStableDecay",
    "plot",
    "warmup_cosine",
]
