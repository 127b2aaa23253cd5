"""RecurrentTrainer: sequence models trained with truncated back-propagation through time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .accumulation import Window, count
from .base import detach
from .callbacks import Callback
from .checks import check_choice, check_positive_int
from .data import Batches, to_device
from .history import History
from .supervised import Metric, SupervisedTrainer, split_batch

STEP_EVERY = ("chunk", "sequence")


class RecurrentTrainer(SupervisedTrainer):
    r"""Truncated back-propagation through time (TBPTT) for ``model(x_chunk, hidden)``.

    Data: ``x`` of shape ``(N, T, ...)`` and per-step targets ``y`` of shape
    ``(N, T, ...)`` (batch first, time second). Each batch of sequences is cut along
    time into chunks of ``bptt_steps`` steps (the last chunk may be shorter; None:
    one chunk of the whole sequence, i.e. full BPTT). The model's contract is

        ``model(x_chunk, hidden) -> (y_chunk, hidden)``

    with ``hidden=None`` at the start of every batch of sequences. The hidden state is
    carried from chunk to chunk and **detached** between them, so gradients flow back
    at most ``bptt_steps`` steps. The loss is applied with batch and time merged,
    ``loss(y_chunk.flatten(0, 1), target_chunk.flatten(0, 1))`` (so
    ``CrossEntropyLoss`` takes ``(B*t, C)`` scores against ``(B*t,)`` indices).

    ``step_every``:

    * ``"chunk"`` (default, classic TBPTT): an optimizer step after each chunk, on the
      chunk's mean loss. With ``gradient_accumulation_steps = N`` a step takes N
      consecutive chunks of the same batch (a sequence's last window may be shorter;
      it is stepped at the end of the sequence).
    * ``"sequence"``: gradients of all chunks are accumulated and one step is taken per
      batch of sequences; chunk ``c`` of length :math:`t_c` contributes
      :math:`(t_c/T)\,L_c`, so the step follows the gradient of the sequence's mean
      loss (truncated). With ``gradient_accumulation_steps = N`` a step takes N
      batches, as in :class:`SupervisedTrainer`.

    In both modes each chunk's mean loss is weighted by its share of the window's
    count (exact accumulation, :mod:`descent.train.accumulation`): with
    ``normalize_by="samples"`` (default) a chunk counts its sequence steps,
    batch x length; with ``"targets"`` the target values the loss averages over (e.g.
    the tokens that are not ``ignore_index`` padding), so a window's step is the
    gradient of the mean over every counted target it holds.

    For RNNs, pass ``clip_grad_norm`` (e.g. 1.0): exploding gradients are the rule,
    not the exception (Pascanu, Mikolov & Bengio 2013).

    Arguments are those of :class:`SupervisedTrainer`, plus ``bptt_steps`` and
    ``step_every``. Extension points: :meth:`initial_hidden`, :meth:`forward_chunk`,
    :meth:`compute_loss` and the base ones.

    Reference: Williams & Peng, "An efficient gradient-based algorithm for on-line
    training of recurrent network trajectories", Neural Computation 1990.

    Example::

        class CharRNN(torch.nn.Module):
            def __init__(self, vocab, hidden=64):
                super().__init__()
                self.embed = torch.nn.Embedding(vocab, hidden)
                self.rnn = torch.nn.GRU(hidden, hidden, batch_first=True)
                self.head = torch.nn.Linear(hidden, vocab)

            def forward(self, x, hidden):
                out, hidden = self.rnn(self.embed(x), hidden)
                return self.head(out), hidden

        model = CharRNN(vocab=65)
        trainer = descent.RecurrentTrainer(descent.Adam(model, lr=3e-3), batch_size=32,
                                           epochs=5, bptt_steps=32, clip_grad_norm=1.0)
        trainer.train(model, x, y, torch.nn.CrossEntropyLoss())   # x, y: (N, T) int64
    """

    def __init__(
        self,
        optimizer: Any,
        batch_size: int = 32,
        epochs: int = 10,
        bptt_steps: int | None = None,
        gradient_accumulation_steps: int = 1,
        scheduler: Any = None,
        clip_grad_norm: float | None = None,
        callbacks: Iterable[Callback] = (),
        *,
        step_every: str = "chunk",
        metrics: Sequence[str | Metric] | Mapping[str, Metric] = (),
        **options: Any,
    ) -> None:
        super().__init__(
            optimizer,
            batch_size,
            epochs,
            gradient_accumulation_steps,
            scheduler,
            clip_grad_norm,
            callbacks,
            metrics=metrics,
            **options,
        )
        owner = type(self).__name__
        self.bptt_steps = (
            None if bptt_steps is None else check_positive_int(owner, "bptt_steps", bptt_steps)
        )
        self.step_every = check_choice(owner, "step_every", step_every, STEP_EVERY)

    def batches_per_window(self) -> int:
        return self.accumulation if self.step_every == "sequence" else 1

    def check_counters(self, loop: Any) -> None:
        loop.check(
            batches_per_epoch=self.batches_per_epoch,
            accumulation=self.accumulation,
            accumulation_name="gradient_accumulation_steps",
        )

    def loop_plan(self) -> dict[str, Any]:
        return {**super().loop_plan(), "step_every": self.step_every}

    def train(
        self,
        model: nn.Module,
        x: Any,
        y: Any = None,
        loss: Callable[..., torch.Tensor] | None = None,
        *,
        validation_data: Any = None,
        validation_split: float | None = None,
        epochs: int | None = None,
        resume: bool = False,
    ) -> History:
        """Train on sequences ``x`` ``(N, T, ...)`` with per-step targets ``y`` ``(N, T, ...)``.

        Same forms and options (``resume`` included) as :meth:`SupervisedTrainer.train`.
        """
        return super().train(
            model,
            x,
            y,
            loss,
            validation_data=validation_data,
            validation_split=validation_split,
            epochs=epochs,
            resume=resume,
        )

    # ------------------------------------------------------------------ extension points

    def initial_hidden(self, model: nn.Module, inputs: torch.Tensor) -> Any:
        """The hidden state a batch of sequences starts from (None: the model's default)."""
        return None

    def forward_chunk(
        self, model: nn.Module, x_chunk: torch.Tensor, hidden: Any
    ) -> tuple[Any, Any]:
        """``model(x_chunk, hidden) -> (y_chunk, hidden)``, with the contract checked."""
        result = model(x_chunk, hidden)
        if not isinstance(result, tuple | list) or len(result) != 2:
            raise TypeError(
                f"{type(self).__name__}: the model returned a "
                f"{type(result).__name__}; the contract is model(x_chunk, hidden) "
                "-> (y_chunk, hidden)"
            )
        return result[0], result[1]

    def compute_loss(self, output: Any, target: Any) -> torch.Tensor:
        """The loss with batch and time merged: ``loss(out.flatten(0, 1), y.flatten(0, 1))``."""
        assert self.loss_fn is not None
        return self.loss_fn(_merge_time(output), _merge_time(target))

    def chunks(self, length: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of each chunk of a sequence of ``length`` steps."""
        step = self.bptt_steps or length
        return [(start, min(start + step, length)) for start in range(0, length, step)]

    def count_batch(self, batch: Any) -> float:
        """A batch of sequences' count: its sequence steps (``normalize_by="samples"``)
        or targets (per-chunk windows count their chunks instead)."""
        if self.step_every == "chunk":
            return 1.0
        return self._count(split_batch(type(self).__name__, batch)[1])

    def train_batch(
        self, model: nn.Module, batch: Any, index: int, n_batches: int | None
    ) -> dict[str, float]:
        """Run the batch of sequences chunk by chunk, stepping per chunk window or per
        window of batches; each chunk's loss weighted by its share of its window's count."""
        owner = type(self).__name__
        inputs, target = split_batch(owner, batch)
        _check_sequences(owner, inputs, target)
        spans = self.chunks(inputs.shape[1])
        state, per_sequence = self.state, self.step_every == "sequence"
        if not per_sequence and state.window:  # an interrupted batch restarts at chunk 0
            self.optimizer.zero_grad(set_to_none=True)
            self.meter.pop_window()
            state.window = 0
        counts = [self._count(target[:, start:stop]) for start, stop in spans]
        window = self.window
        hidden = self.initial_hidden(model, inputs)
        sums: dict[str, float] = {}
        for number, (start, stop) in enumerate(spans):
            if per_sequence:
                assert window is not None
                weight = window.scale(counts[number])
                sync = number == len(spans) - 1 and state.window + 1 == window.size
            else:
                first = number - number % self.accumulation
                if number == first:  # a new window of chunks: count it over the ranks
                    members = counts[first : first + self.accumulation]
                    window = Window(
                        first,
                        spans[first : first + self.accumulation],
                        members,
                        self.distribution.sum(sum(members)),
                        self.distribution.replicas,
                    )
                assert window is not None
                weight = window.weight(number)
                sync = number == first + window.size - 1
            with self.gradient_sync(model, sync):
                with self.autocast():
                    output, hidden = self.forward_chunk(model, inputs[:, start:stop], hidden)
                    loss = self.compute_loss(output, target[:, start:stop])
                weighted, value = self._weighted_loss(loss, index, counts[number], weight)
                self.backward(weighted, model=model, sync=sync)
            hidden = detach(hidden)
            logs = {}
            with torch.no_grad():
                for name, metric in self.metrics.items():
                    logs[name] = float(
                        metric(_merge_time(detach(output)), _merge_time(target[:, start:stop]))
                    )
            steps = inputs.shape[0] * (stop - start)
            self.meter.add({"loss": value}, counts[number])
            self.meter.add(logs, steps)
            self.meter.add_window(value, counts[number])
            for key, item in (
                ("loss", value * counts[number] if counts[number] else 0.0),
                ("loss_weight", counts[number]),
                *((k, v * steps) for k, v in logs.items()),
            ):
                sums[key] = sums.get(key, 0.0) + item
            if not per_sequence:
                state.window += 1
                if sync:
                    self._finish_window(self.optimizer, self.scheduler)
        if per_sequence:
            state.window += 1
            assert window is not None
            if state.window == window.size:
                self._finish_window(self.optimizer, self.scheduler)
        total_steps = inputs.shape[0] * inputs.shape[1]
        weight_sum = sums.pop("loss_weight")
        logs = {"loss": sums.pop("loss") / weight_sum if weight_sum else float("nan")}
        logs.update({key: value / total_steps for key, value in sums.items()})
        return logs

    def _count(self, target: torch.Tensor) -> float:
        """A target chunk's count: batch x steps for "samples", else ``normalize_by``'s."""
        if self.normalize_by == "samples":
            return float(target.shape[0] * target.shape[1])
        return count(type(self).__name__, self.normalize_by, self.loss_fn, target)

    def _check_batch_count(self, n_batches: int | None) -> None:
        if self.step_every == "sequence":
            super()._check_batch_count(n_batches)

    def _evaluate_batches(
        self, model: nn.Module, batches: Batches, loss: Callable[..., torch.Tensor] | None
    ) -> dict[str, float]:
        owner = type(self).__name__
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        totals: dict[str, float] = {}
        try:
            with torch.no_grad():
                for batch in batches.epoch(0):
                    inputs, target = split_batch(owner, to_device(batch, self.device))
                    _check_sequences(owner, inputs, target)
                    hidden = self.initial_hidden(model, inputs)
                    for start, stop in self.chunks(inputs.shape[1]):
                        with self.autocast():
                            output, hidden = self.forward_chunk(
                                model, inputs[:, start:stop], hidden
                            )
                            values = (
                                {}
                                if loss is None
                                else {
                                    "loss": float(
                                        loss(
                                            _merge_time(output), _merge_time(target[:, start:stop])
                                        )
                                    )
                                }
                            )
                        for name, metric in self.metrics.items():
                            values[name] = float(
                                metric(_merge_time(output), _merge_time(target[:, start:stop]))
                            )
                        steps = float(inputs.shape[0] * (stop - start))
                        weights = {key: steps for key in values}
                        if loss is not None:
                            weights["loss"] = (
                                steps
                                if self.normalize_by == "samples"
                                else count(owner, self.normalize_by, loss, target[:, start:stop])
                            )
                        for key, value in values.items():
                            sums[key] = sums.get(key, 0.0) + value * weights[key]
                            totals[key] = totals.get(key, 0.0) + weights[key]
        finally:
            model.train(was_training)
        return {key: value / totals[key] for key, value in sums.items() if totals[key]}


def _merge_time(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() >= 2:
        return value.flatten(0, 1)
    return value


def _check_sequences(owner: str, inputs: Any, target: Any) -> None:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(
            f"{owner}: sequence inputs have shape {shape}; expected (batch, time, "
            "...) with batch first"
        )
    if (
        not isinstance(target, torch.Tensor)
        or target.dim() < 2
        or target.shape[:2] != inputs.shape[:2]
    ):
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(
            f"{owner}: targets have shape {shape}, inputs {tuple(inputs.shape)}; "
            "expected per-step targets (batch, time, ...) matching the inputs' "
            "first two dimensions"
        )
    if inputs.shape[1] == 0:
        raise ValueError(f"{owner}: the sequences have length 0")
