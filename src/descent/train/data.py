"""Turn what users pass a trainer (arrays, tensors, a Dataset, a DataLoader) into batches.

A :class:`Batches` source knows how many batches an epoch has and yields the batches
of epoch ``e`` starting at any batch index. Where descent draws the order itself
(arrays, tensors, map-style datasets), the permutation of epoch ``e`` comes from a
generator seeded by ``(seed, e)`` alone, so any epoch's order can be regenerated
without replaying the ones before it: this is what makes an exact resume possible.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence, Sized
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate


def mixed_seed(seed: int, stream: int) -> int:
    """A 63-bit seed mixed from ``(seed, stream)`` by NumPy's ``SeedSequence``."""
    mixed = np.random.SeedSequence([int(seed) & ((1 << 64) - 1), int(stream) & ((1 << 64) - 1)])
    return int(mixed.generate_state(1, np.uint64)[0]) & ((1 << 63) - 1)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose state depends only on ``(seed, epoch)``.

    The two integers are mixed by NumPy's ``SeedSequence`` so that nearby seeds and
    epochs give unrelated streams.

    >>> a = torch.randperm(5, generator=epoch_generator(0, 3))
    >>> b = torch.randperm(5, generator=epoch_generator(0, 3))
    >>> bool((a == b).all())
    True
    """
    return torch.Generator().manual_seed(mixed_seed(seed, epoch))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the ``n`` samples in ``epoch``, seeded by ``(seed, epoch)`` alone."""
    return torch.randperm(n, generator=epoch_generator(seed, epoch))


def to_device(batch: Any, device: torch.device | str | None) -> Any:
    """``batch`` with every tensor in it (nested in tuples, lists, dicts) moved to ``device``."""
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def as_tensor(owner: str, name: str, value: Any) -> torch.Tensor:
    """``value`` (a tensor or NumPy array) as a tensor; float64 arrays keep their dtype."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(
                f"{owner}: {name} is a NumPy array of dtype object; expected a numeric array"
            )
        return torch.from_numpy(np.ascontiguousarray(value))
    raise TypeError(
        f"{owner}: {name} has type {type(value).__name__}; expected a NumPy "
        "array, a tensor, a torch Dataset or a DataLoader"
    )


class Batches:
    """A source of batches: ``len()`` batches per epoch, any epoch from any batch index.

    Subclasses implement :meth:`epoch`. ``len()`` may raise ``TypeError`` for sources
    whose length is unknown (a DataLoader over an iterable dataset).
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """The batches of ``epoch``, beginning with batch index ``start``."""
        raise NotImplementedError

    @property
    def num_samples(self) -> int | None:
        """Samples per epoch, when known."""
        return None


def _batch_bounds(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def shard_order(order: torch.Tensor, num_replicas: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s share of ``order``: positions ``rank, rank + R, ...`` (R replicas).

    ``order`` is first padded with its own first entries to a multiple of R, so every
    rank gets ``ceil(n / R)`` samples; the ranks' k-th batches of size b together hold
    the k-th batch of size R*b of the unsharded order.

    >>> shard_order(torch.arange(5), 2, 1).tolist()
    [1, 3, 0]
    """
    if num_replicas == 1:
        return order
    total = math.ceil(len(order) / num_replicas) * num_replicas
    if total > len(order):
        order = torch.cat(
            [order, order.repeat(math.ceil(total / len(order)))[: total - len(order)]]
        )
    return order[rank::num_replicas]


class TensorBatches(Batches):
    """Batches of equally long tensors (indexed along dim 0), in a seeded order.

    Each batch is a tuple with one slice per tensor. With ``shuffle`` the order of
    epoch ``e`` is :func:`epoch_permutation` ``(n, seed, e)``; without it, the stored
    order. ``drop_last`` drops a last, smaller batch.
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.tensors = tuple(tensors)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.num_replicas, self.rank = num_replicas, rank

    @property
    def num_samples(self) -> int:
        """Samples per epoch (this rank's share when sharded)."""
        return math.ceil(len(self.tensors[0]) / self.num_replicas)

    def __len__(self) -> int:
        return _batch_bounds(self.num_samples, self.batch_size, self.drop_last)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        n = self.num_samples
        order = epoch_permutation(len(self.tensors[0]), self.seed, epoch) if self.shuffle else None
        if self.num_replicas > 1:
            order = shard_order(
                torch.arange(len(self.tensors[0])) if order is None else order,
                self.num_replicas,
                self.rank,
            )
        # the order on each tensor's device, once per epoch (indexing a CUDA tensor with
        # CPU indices copies them, and waits for the GPU, at every batch)
        orders = None if order is None else {t.device: order.to(t.device) for t in self.tensors}
        for index in range(start, len(self)):
            begin = index * self.batch_size
            end = min(begin + self.batch_size, n)
            if orders is None:
                yield tuple(t[begin:end] for t in self.tensors)
            else:
                yield tuple(t[orders[t.device][begin:end]] for t in self.tensors)


class DatasetBatches(Batches):
    """Batches of a map-style ``Dataset``, collated with ``default_collate``, seeded order."""

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool = False,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.dataset = dataset
        # a map-style dataset has a length; torch's Dataset does not declare __len__
        size = len(cast(Sized, dataset))
        self.indices = list(range(size)) if indices is None else list(indices)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.num_replicas, self.rank = num_replicas, rank

    @property
    def num_samples(self) -> int:
        """Samples per epoch (this rank's share when sharded)."""
        return math.ceil(len(self.indices) / self.num_replicas)

    def __len__(self) -> int:
        return _batch_bounds(self.num_samples, self.batch_size, self.drop_last)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Any]:
        n = len(self.indices)
        order_tensor = epoch_permutation(n, self.seed, epoch) if self.shuffle else torch.arange(n)
        order = shard_order(order_tensor, self.num_replicas, self.rank).tolist()
        for index in range(start, len(self)):
            rows = order[index * self.batch_size : (index + 1) * self.batch_size]
            yield default_collate([self.dataset[self.indices[row]] for row in rows])


class LoaderBatches(Batches):
    """The batches of a user's ``DataLoader``, in the loader's own order.

    Before each epoch the sampler's ``set_epoch(e)`` is called when it has one (as
    ``DistributedSampler`` does). Starting at batch ``start`` skips the first
    ``start`` batches, which reproduces the epoch only if the loader's order is
    deterministic (a seeded sampler).
    """

    def __init__(self, loader: DataLoader[Any]) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int | None:
        try:
            return len(cast(Sized, self.loader.dataset))  # TypeError when it has no length
        except TypeError:
            return None

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Any]:
        for part in (self.loader.sampler, getattr(self.loader, "batch_sampler", None)):
            if part is not None and hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
        return itertools.islice(iter(self.loader), start, None)


def make_batches(
    owner: str,
    x: Any,
    y: Any = None,
    *,
    batch_size: int,
    shuffle: bool,
    drop_last: bool = False,
    seed: int = 0,
    require_targets: bool = True,
    x_name: str = "x",
    y_name: str = "y",
    num_replicas: int = 1,
    rank: int = 0,
) -> Batches:
    """A :class:`Batches` source for ``x`` (and ``y``), whatever form they come in.

    * arrays or tensors ``x`` (and ``y``, same length): :class:`TensorBatches`;
    * a map-style ``Dataset`` (items ``(input, target)`` when targets are needed,
      ``y`` must be None): :class:`DatasetBatches`;
    * a ``DataLoader`` (``y`` None; its own batch size and order are used):
      :class:`LoaderBatches`.

    With ``num_replicas`` > 1 (torch.distributed), arrays, tensors and datasets yield
    rank ``rank``'s share of each epoch's order (:func:`shard_order`); a DataLoader is
    used as given (give it a distributed sampler).
    """
    if isinstance(x, DataLoader):
        if y is not None:
            raise ValueError(
                f"{owner}: {y_name} must be None when {x_name} is a DataLoader "
                f"(its batches carry the targets); got {type(y).__name__}"
            )
        return LoaderBatches(x)
    if isinstance(x, Dataset) and not isinstance(x, torch.Tensor):
        if y is not None:
            raise ValueError(
                f"{owner}: {y_name} must be None when {x_name} is a Dataset "
                f"(its items carry the targets); got {type(y).__name__}"
            )
        if not hasattr(x, "__len__") or isinstance(x, torch.utils.data.IterableDataset):
            raise TypeError(
                f"{owner}: {x_name} is an iterable dataset; wrap it in a "
                "DataLoader, or pass a map-style Dataset"
            )
        if len(x) == 0:
            raise ValueError(f"{owner}: {x_name} is an empty Dataset")
        return DatasetBatches(
            x,
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
        )
    x_tensor = as_tensor(owner, x_name, x)
    if x_tensor.dim() == 0 or len(x_tensor) == 0:
        raise ValueError(
            f"{owner}: {x_name} has shape {tuple(x_tensor.shape)}; expected at "
            "least one sample along dimension 0"
        )
    tensors = [x_tensor]
    if y is None:
        if require_targets:
            raise ValueError(
                f"{owner}: {y_name} is None; pass targets for {x_name}, or a "
                "Dataset / DataLoader that yields (input, target) pairs"
            )
    else:
        y_tensor = as_tensor(owner, y_name, y)
        if y_tensor.dim() == 0 or len(y_tensor) != len(x_tensor):
            raise ValueError(
                f"{owner}: {y_name} has {len(y_tensor) if y_tensor.dim() else 0} "
                f"samples and {x_name} has {len(x_tensor)}; expected the same "
                "number along dimension 0"
            )
        tensors.append(y_tensor)
    batches = TensorBatches(
        tensors,
        batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        seed=seed,
        num_replicas=num_replicas,
        rank=rank,
    )
    if len(batches) == 0:
        raise ValueError(
            f"{owner}: drop_last=True with batch_size={batch_size} leaves no batch "
            f"of the {len(x_tensor)} samples"
        )
    return batches


def split_validation(
    owner: str,
    x: Any,
    y: Any,
    fraction: float,
    seed: int,
) -> tuple[Any, Any, Any, Any]:
    """Split ``(x, y)`` into a training part and a validation part of ``fraction``.

    The validation samples are a seeded random subset (``seed``), so a sorted data
    set still gives a representative split. Works for arrays, tensors and map-style
    datasets (returned as ``Subset`` objects with ``y`` None).
    """
    if isinstance(x, DataLoader):
        raise ValueError(
            f"{owner}: validation_split={fraction} cannot split a DataLoader; "
            "pass validation_data instead"
        )
    if isinstance(x, Dataset) and not isinstance(x, torch.Tensor):
        n = len(cast(Sized, x))  # map-style: torch's Dataset does not declare __len__
    else:
        x = as_tensor(owner, "x", x)
        n = len(x)
    n_val = round(n * fraction)
    if n_val < 1 or n_val >= n:
        raise ValueError(
            f"{owner}: validation_split={fraction} of {n} samples leaves "
            f"{n_val} for validation and {n - n_val} for training; both must be "
            "at least 1"
        )
    order = torch.randperm(n, generator=epoch_generator(seed, -1))
    train_rows, val_rows = order[n_val:].sort().values, order[:n_val].sort().values
    if isinstance(x, Dataset) and not isinstance(x, torch.Tensor):
        return (
            torch.utils.data.Subset(x, train_rows.tolist()),
            None,
            torch.utils.data.Subset(x, val_rows.tolist()),
            None,
        )
    y = as_tensor(owner, "y", y) if y is not None else None
    return (
        x[train_rows],
        None if y is None else y[train_rows],
        x[val_rows],
        None if y is None else y[val_rows],
    )
