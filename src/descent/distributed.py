"""Training across processes with ``torch.distributed``: the few pieces a loop needs.

Start a script with ``torchrun --nproc-per-node=N script.py``; torchrun sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, and
:func:`init_process_group` reads them (gloo on CPU, NCCL when CUDA is available). The
same script run with plain ``python`` is a world of one process, and every helper
here then does the single-process thing, so a loop needs no ``if distributed:``.

The pieces, in the order a loop uses them:

* :func:`init_process_group`, :func:`destroy_process_group`, :func:`get_rank`,
  :func:`get_world_size`, :func:`is_main_process` (rank 0: print, draw progress
  bars, write checkpoints), :func:`default_device`;
* :func:`wrap_model` (``DistributedDataParallel`` when distributed) and
  :func:`gradient_sync` (``no_sync()`` on the micro-batches inside an accumulation
  window, so gradients are averaged across ranks once per optimizer step);
* :class:`ResumableSampler`: every rank draws the same seeded permutation per epoch
  and takes every ``world_size``-th index of it, so the ranks' batches together are
  exactly the batch one process would take with ``world_size`` times the batch size;
  it starts an epoch at any position, for exact resume;
* :func:`average_metrics`: a weighted mean of per-rank metrics; :func:`sum_over_ranks`:
  sums of numbers (sample or token counts) over the ranks;
* :func:`average_gradients`: the mean of every gradient over the ranks, for a loop that
  cannot use DDP (several forward passes of a module before one backward);
* :func:`zero_optimizer`: a descent optimizer wrapped in
  ``torch.distributed.optim.ZeroRedundancyOptimizer`` (optimizer state sharded across
  ranks), and :func:`consolidate_optimizer_state`, which gathers the state on rank 0
  so that it can be saved (``CheckpointManager.save`` calls it).

A plain data-parallel loop with gradient accumulation::

    from descent import distributed as dist
    dist.init_process_group()
    model = dist.wrap_model(make_model())
    opt = descent.Adam(model.parameters(), lr=1e-3)
    sampler = dist.ResumableSampler(len(data), seed=0)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches = list(torch.utils.data.BatchSampler(sampler, batch_size, drop_last=False))
        for start in range(0, len(batches), accumulation):
            window = batches[start:start + accumulation]
            for i, index in enumerate(window):
                with dist.gradient_sync(model, sync=i == len(window) - 1):
                    (loss_fn(model(x[index]), y[index]) / len(window)).backward()
            opt.step()
            opt.zero_grad()
    dist.destroy_process_group()

With per-process batch b on N processes this takes the same steps as one process
with batch N*b (up to floating-point summation order), provided every rank gets
the same number of samples: the sampler pads the last ranks with repeated samples
when the data set's size is not a multiple of N, as torch's ``DistributedSampler``
does, and those repeats make the two differ.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
from torch import nn

__all__ = [
    "ResumableSampler",
    "all_gather_object",
    "average_gradients",
    "average_metrics",
    "barrier",
    "broadcast_object",
    "broadcast_tensors",
    "consolidate_optimizer_state",
    "default_device",
    "destroy_process_group",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "gradient_sync",
    "init_process_group",
    "is_distributed",
    "is_main_process",
    "is_zero_optimizer",
    "sum_over_ranks",
    "unwrap_model",
    "wrap_model",
    "zero_optimizer",
]

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------------- process group


def is_distributed() -> bool:
    """Whether a default process group is initialised (more than a world of one)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    """This process's rank on its machine, from ``LOCAL_RANK`` (0 when unset)."""
    value = os.environ.get("LOCAL_RANK", "0")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"LOCAL_RANK={value!r} is not an integer") from None


def is_main_process() -> bool:
    """True on rank 0 (and when not distributed): the process that logs and saves."""
    return get_rank() == 0


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", get_local_rank())
    return torch.device("cpu")


def init_process_group(backend: str | None = None, *, timeout: timedelta | None = None) -> bool:
    """Join the process group described by the environment (as set by ``torchrun``).

    Uses ``backend`` if given, else NCCL when CUDA is available and gloo otherwise;
    with CUDA, selects the device ``LOCAL_RANK``. Returns True if the process is now
    part of a group, False when the environment describes no group (a plain
    ``python script.py``); calling it again once initialised returns True.

    Raises ``ValueError`` if the environment is only partly set (naming what lacks).
    """
    if is_distributed():
        return True
    present = [name for name in _ENV if name in os.environ]
    if not present:
        return False
    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise ValueError(
            f"init_process_group: the environment sets {present} but not "
            f"{missing}; start the script with torchrun, or set all of {list(_ENV)}"
        )
    if not torch.distributed.is_available():
        raise RuntimeError("init_process_group: this torch build has no torch.distributed")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(get_local_rank())
    kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://"}
    if timeout is not None:
        kwargs["timeout"] = timeout
    torch.distributed.init_process_group(**kwargs)
    return True


def destroy_process_group() -> None:
    """Leave the process group, if any, after freeing unreachable DDP / ZeRO objects.

    A ``DistributedDataParallel`` model (and a ZeRO optimizer) still alive when the
    group is destroyed can abort the process at exit with gloo ("terminate called
    without an active exception", about half the time with torch 2.13 on CPU). So
    drop them first: keep the training in a function, or ``del`` them; this helper
    then runs the garbage collector (DDP wrappers sit in reference cycles) before
    destroying the group.
    """
    if is_distributed():
        gc.collect()
        torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op when not distributed)."""
    if is_distributed():
        torch.distributed.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (pickled in transit between processes)."""
    if not is_distributed():
        return obj
    holder = [obj]
    torch.distributed.broadcast_object_list(holder, src=src)
    return holder[0]


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values of ``tensors`` into every rank's, in place (a no-op when
    not distributed). Every rank must pass tensors of the same shapes, in the same order;
    e.g. a module's parameters and buffers, so that every rank starts from rank 0's."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in tensors:
            torch.distributed.broadcast(tensor, src=src)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


# ---------------------------------------------------------------------- models


def wrap_model(model: nn.Module, **ddp_options: Any) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` unchanged.

    On CUDA the model is moved to :func:`default_device` and DDP is given that device.
    ``ddp_options`` go to DDP (e.g. ``find_unused_parameters=True``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"wrap_model: model has type {type(model).__name__}; expected an nn.Module")
    if not is_distributed():
        return model
    device = default_device()
    if device.type == "cuda":
        model = model.to(device)
        ddp_options.setdefault("device_ids", [device.index])
    return nn.parallel.DistributedDataParallel(model, **ddp_options)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper."""
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        inner: nn.Module = model.module
        return inner
    return model


def gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Context for one micro-batch's forward and backward: ``model.no_sync()`` unless ``sync``.

    Inside an accumulation window, pass ``sync=False`` for every micro-batch but the
    last: DDP then keeps the gradients local, and the last backward averages the
    accumulated sum across ranks once. Both the forward and the backward pass must
    run inside the context (DDP decides at the forward). Without DDP this does nothing.
    """
    if not sync and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


# ---------------------------------------------------------------------- data order


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Seeded, sharded and resumable order of the indices ``0 .. length-1``.

    Epoch ``e``'s order is ``torch.randperm(length)`` drawn from a generator seeded
    with ``seed + e`` (or ``0 .. length-1`` without shuffling), the same on every
    rank. Unless ``drop_last``, it is padded by repeating its first indices up to a
    multiple of ``num_replicas``; rank ``r`` then takes positions ``r, r + R,
    r + 2R, ...`` (R = ``num_replicas``). So at every step the ranks' batches of size b
    together hold the same samples as one process's batch of size R*b.

    ``set_epoch(epoch, position=k)`` starts the next iteration at this rank's k-th
    index; :meth:`state_dict` records ``position`` as the number of indices handed out
    in the current epoch, counting from the start position. When a ``DataLoader``
    with worker processes fetches ahead, that count runs ahead of the samples
    trained on: record the position yourself then (``state_dict(position=...)``).

    Args:
        length: the number of samples (or a sized data set).
        seed: the base seed of the permutations.
        shuffle: permute (True) or keep the natural order.
        drop_last: drop the tail instead of padding it to a multiple of num_replicas.
        num_replicas, rank: default to the process group's world size and rank.

    Example::

        sampler = ResumableSampler(len(dataset), seed=0)
        loader = DataLoader(dataset, batch_size=32, sampler=sampler)
        sampler.set_epoch(epoch, position=saved["position"])
    """

    length: int

    def __init__(
        self,
        length: Any,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if not isinstance(length, int):
            if not hasattr(length, "__len__"):
                raise TypeError(
                    f"ResumableSampler: length has type {type(length).__name__}; "
                    "expected an int or a sized data set"
                )
            length = len(length)
        if isinstance(length, bool) or length < 0:
            raise ValueError(f"ResumableSampler: length={length!r}; expected an integer >= 0")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"ResumableSampler: seed={seed!r}; expected an integer")
        num_replicas = get_world_size() if num_replicas is None else num_replicas
        rank = get_rank() if rank is None else rank
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(
                f"ResumableSampler: num_replicas={num_replicas!r}; expected an integer >= 1"
            )
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(
                f"ResumableSampler: rank={rank!r}; expected an integer in [0, {num_replicas})"
            )
        self.length, self.seed, self.shuffle, self.drop_last = length, seed, shuffle, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.start, self.yielded = 0, 0, 0

    def __len__(self) -> int:
        """The number of indices this rank takes per epoch (from position 0)."""
        if self.drop_last:
            return self.length // self.num_replicas
        return math.ceil(self.length / self.num_replicas)

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        """Choose the epoch (hence the permutation) and the position to start from."""
        self._start_at("ResumableSampler.set_epoch", epoch, position)

    def _start_at(self, owner: str, epoch: Any, position: Any) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"{owner}: epoch={epoch!r}; expected an integer >= 0")
        if (
            isinstance(position, bool)
            or not isinstance(position, int)
            or not (0 <= position <= len(self))
        ):
            raise ValueError(
                f"{owner}: position={position!r}; expected an integer from 0 to "
                f"{len(self)} (this rank's share of the epoch)"
            )
        self.epoch, self.start, self.yielded = epoch, position, 0

    def order(self) -> list[int]:
        """This rank's indices for the current epoch, from position 0."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.length, generator=generator).tolist()
        else:
            indices = list(range(self.length))
        total = len(self) * self.num_replicas
        if total > len(indices) and indices:
            repeats = math.ceil((total - len(indices)) / len(indices))
            indices += (indices * repeats)[: total - len(indices)]
        return indices[:total][self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        self.yielded = 0
        for index in self.order()[self.start :]:
            self.yielded += 1
            yield index

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """``{"seed", "epoch", "position", "length", "num_replicas", "shuffle", "drop_last"}``.

        ``position`` defaults to the start position plus the indices handed out so far.
        """
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.start + self.yielded if position is None else position,
            "length": self.length,
            "num_replicas": self.num_replicas,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at a saved epoch and position; the data set and world size must match."""
        if not isinstance(state, Mapping):
            raise TypeError(
                f"ResumableSampler.load_state_dict: expected a dict, got {type(state).__name__}"
            )
        for key in ("length", "num_replicas", "shuffle", "drop_last", "seed"):
            if key not in state:
                raise ValueError(f"ResumableSampler.load_state_dict: the state lacks {key!r}")
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"ResumableSampler.load_state_dict: the state has {key}="
                    f"{state[key]!r}, this sampler {key}={getattr(self, key)!r}; "
                    "resume needs the same data set, seed and world size"
                )
        for key in ("epoch", "position"):
            if key not in state:
                raise ValueError(f"ResumableSampler.load_state_dict: the state lacks {key!r}")
        self._start_at("ResumableSampler.load_state_dict", state["epoch"], state["position"])


# ---------------------------------------------------------------------- metrics


def average_metrics(
    metrics: Mapping[str, float | torch.Tensor], weight: float = 1.0
) -> dict[str, float]:
    """Weighted mean of each metric over the ranks: sum_r w_r m_r / sum_r w_r.

    Pass as ``weight`` the number of samples the rank's metrics cover, so that a
    mean over ranks equals the mean over all samples. Every rank must pass the same
    keys. Not distributed: the metrics as floats.

    Example::

        average_metrics({"loss": 0.31, "accuracy": 0.9}, weight=len(batch))
    """
    names = list(metrics)
    values = []
    for name in names:
        value = metrics[name]
        number = value.item() if isinstance(value, torch.Tensor) else value
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise TypeError(
                f"average_metrics: metrics[{name!r}] has type "
                f"{type(value).__name__}; expected a number or a 1-element tensor"
            )
        values.append(float(number))
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
        raise ValueError(f"average_metrics: weight={weight!r}; expected a number >= 0")
    if not is_distributed():
        return dict(zip(names, values, strict=True))
    packed = torch.tensor(
        [value * weight for value in values] + [float(weight)],
        dtype=torch.float64,
        device=_collective_device(),
    )
    torch.distributed.all_reduce(packed)
    total = packed[-1].item()
    if total == 0:
        raise ValueError("average_metrics: the weights sum to 0 over all ranks")
    return {name: packed[i].item() / total for i, name in enumerate(names)}


def _collective_device() -> torch.device:
    return default_device() if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """Each of ``values`` summed over the ranks, in float64 (one all-reduce).

    Every rank must pass as many values. Not distributed: the values as floats.

    Example::

        (tokens_in_window,) = sum_over_ranks([float((target != -100).sum())])
    """
    numbers = [float(value) for value in values]
    if not is_distributed() or not numbers:
        return numbers
    packed = torch.tensor(numbers, dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(packed)
    return packed.tolist()


def average_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Replace every gradient of ``parameters`` by its mean over the ranks, in place.

    What DDP does during ``backward()``, for a loop that cannot use DDP (a GAN's
    discriminator runs forward two or three times before one backward). The gradients
    of each dtype and device travel in one flat buffer (one all-reduce each). Every
    rank must pass the same parameters, each with a gradient on every rank or on none.
    Not distributed: nothing to do.
    """
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    world_size = get_world_size()
    buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for grad in grads:
        buckets.setdefault((grad.dtype, grad.device), []).append(grad)
    for bucket in buckets.values():
        flat = torch.cat([grad.reshape(-1) for grad in bucket])
        torch.distributed.all_reduce(flat)
        flat.div_(world_size)
        offset = 0
        for grad in bucket:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()


# ---------------------------------------------------------------------- ZeRO


def is_zero_optimizer(optimizer: Any) -> bool:
    """Whether ``optimizer`` is a ``torch.distributed.optim.ZeroRedundancyOptimizer``."""
    # not imported means no instance exists; importing it costs time and warnings
    module = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    return module is not None and isinstance(optimizer, module.ZeroRedundancyOptimizer)


def zero_optimizer(
    params: Any, optimizer_class: type[torch.optim.Optimizer], **options: Any
) -> torch.optim.Optimizer:
    """``ZeroRedundancyOptimizer`` over ``optimizer_class``: each rank keeps 1/N of the state.

    ``params`` may be a module, tensors or param-group dicts of tensors (the module's
    parameters are taken in order; ZeRO does not accept names). ``options`` are the
    optimizer's hyperparameters, plus ZeRO's own ``parameters_as_bucket_view``.
    Each rank updates its share of the parameters, then broadcasts them to the other
    ranks, so the result is the same as the unsharded optimizer's. Needs an
    initialised process group.

    Several param groups work: ZeRO may give a rank no parameter of some group, and
    descent optimizers accept such an empty group, as torch.optim does.

    Example::

        opt = zero_optimizer(model, descent.AdamW, lr=1e-3, weight_decay=0.01)
    """
    if not is_distributed():
        raise RuntimeError(
            "zero_optimizer: no process group; call init_process_group() "
            "first (ZeroRedundancyOptimizer shards state across ranks)"
        )
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if isinstance(params, nn.Module):
        params = list(params.parameters())
    elif not isinstance(params, list | tuple):
        params = list(params)
    return ZeroRedundancyOptimizer(params, optimizer_class=optimizer_class, **options)


def consolidate_optimizer_state(optimizer: Any, to: int = 0) -> None:
    """Gather a ZeRO optimizer's sharded state on rank ``to``; then its ``state_dict()`` works.

    Collective: call it on every rank. Not a ZeRO optimizer: nothing to do.
    """
    if is_zero_optimizer(optimizer):
        optimizer.consolidate_state_dict(to=to)
