"""SupervisedTrainer: accumulation equivalence, continuation, inputs, non-finite policy, bf16."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import descent
from descent.train import Callback, NonFiniteError, SupervisedTrainer
from descent.train.data import epoch_permutation

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(seed: int = 0, dtype: torch.dtype = torch.float32, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Linear(width, 3)).to(dtype)


def toy_data(n: int = 80, dtype: torch.dtype = torch.float32, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=generator, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=generator)
    return x, y


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def max_relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- accuracy on digits


def test_mlp_on_digits_reaches_95_percent_test_accuracy():
    sklearn = pytest.importorskip("sklearn.datasets")
    data = sklearn.load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    mean, std = x[train].mean(0), x[train].std(0) + 0.1  # statistics of the training part
    x = (x - mean) / std
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    trainer = SupervisedTrainer(
        descent.Adam(model, lr=3e-3), batch_size=32, epochs=8, metrics=["accuracy"]
    )
    history = trainer.train(model, x[train], y[train], nn.CrossEntropyLoss())
    with torch.no_grad():
        test_accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert test_accuracy >= 0.95, test_accuracy
    assert history["loss"][-1] < history["loss"][0]
    assert len(history["accuracy"]) == 8


# ---------------------------------------------------------------- accumulation


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda m: descent.SGD(m, lr=0.1),
        lambda m: descent.Adam(m, lr=1e-2),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
    ],
    ids=["descent.SGD", "descent.Adam", "torch.SGD-momentum"],
)
def test_accumulating_micro_batches_equals_one_large_batch(make_optimizer):
    # 10 micro-batches of 8 per epoch in windows of 4: windows 4, 4 and an uneven 2.
    # The reference: batches of 32, 32, 16 (the same seeded order), one step each.
    torch.set_default_dtype(torch.float64)
    try:
        x, y = toy_data(80, torch.float64)
        results = []
        for batch_size, accumulation in ((8, 4), (32, 1)):
            model = mlp(0, torch.float64)
            optimizer = make_optimizer(model)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s))
            trainer = SupervisedTrainer(
                optimizer,
                batch_size=batch_size,
                epochs=3,
                gradient_accumulation_steps=accumulation,
                scheduler=scheduler,
                seed=7,
            )
            trainer.train(model, x, y, nn.CrossEntropyLoss())
            assert trainer.state.step == 9  # 3 steps per epoch, nothing carried over
            assert scheduler.last_epoch == 9  # one scheduler step per optimizer step
            results.append(params_of(model))
    finally:
        torch.set_default_dtype(torch.float32)
    assert max_relative_error(results[0], results[1]) <= 1e-12


def test_uneven_last_window_is_normalised_by_its_actual_size():
    # One epoch of 3 micro-batches with windows of 2: the last window holds one batch,
    # so its gradient must be that batch's full gradient (a fixed 1/2 would halve it).
    torch.set_default_dtype(torch.float64)
    try:
        x, y = toy_data(24, torch.float64)
        grads = []

        class Grab(Callback):
            def on_before_optimizer_step(self, trainer, optimizer, name):
                grads.append([p.grad.clone() for p in trainer.model.parameters()])

        model = mlp(0, torch.float64)
        SupervisedTrainer(
            descent.SGD(model, lr=0.0),
            batch_size=8,
            epochs=1,
            shuffle=False,
            gradient_accumulation_steps=2,
            callbacks=[Grab()],
        ).train(model, x, y, nn.CrossEntropyLoss())
        model.zero_grad()
        nn.CrossEntropyLoss()(model(x[16:]), y[16:]).backward()
        expected = [p.grad.clone() for p in model.parameters()]
    finally:
        torch.set_default_dtype(torch.float32)
    assert len(grads) == 2
    assert max_relative_error(grads[1], expected) <= 1e-12


def test_backward_sync_flag_marks_the_last_micro_batch_of_each_window():
    flags = []

    class Recording(SupervisedTrainer):
        def backward(self, loss, *, model, sync):
            flags.append(sync)
            super().backward(loss, model=model, sync=sync)

    x, y = toy_data(80)
    model = mlp()
    Recording(
        descent.SGD(model, lr=0.1), batch_size=8, epochs=1, gradient_accumulation_steps=4
    ).train(model, x, y, nn.CrossEntropyLoss())
    assert flags == [False, False, False, True] * 2 + [False, True]


# ---------------------------------------------------------------- continuation / resume


def test_a_second_train_call_continues_where_the_first_ended():
    x, y = toy_data()
    model_a, model_b = mlp(), mlp()
    opt_a, opt_b = descent.Adam(model_a, lr=1e-2), descent.Adam(model_b, lr=1e-2)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, 7, 0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, 7, 0.5)
    a = SupervisedTrainer(
        opt_a, batch_size=16, epochs=2, scheduler=sched_a, gradient_accumulation_steps=2
    )
    a.train(model_a, x, y, nn.CrossEntropyLoss())
    history = a.train(model_a, x, y, nn.CrossEntropyLoss())
    b = SupervisedTrainer(
        opt_b, batch_size=16, epochs=4, scheduler=sched_b, gradient_accumulation_steps=2
    )
    b.train(model_b, x, y, nn.CrossEntropyLoss())
    assert all(
        torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True)
    )
    assert history.epochs == [0, 1, 2, 3]
    assert a.state.step == b.state.step == 12
    assert float(opt_a.state[next(model_a.parameters())]["step"]) == 12
    assert sched_a.last_epoch == 12


def test_an_interrupted_run_finishes_from_the_next_batch_identically():
    x, y = toy_data()

    class Interrupt(Callback):
        def __init__(self):
            self.fired = False

        def on_batch_begin(self, trainer, batch):
            if trainer.state.epoch == 1 and batch == 3 and not self.fired:
                self.fired = True
                raise KeyboardInterrupt

    model_a, model_b = mlp(), mlp()
    a = SupervisedTrainer(
        descent.Adam(model_a, lr=1e-2),
        batch_size=8,
        epochs=3,
        gradient_accumulation_steps=4,
        callbacks=[Interrupt()],
    )
    with pytest.raises(KeyboardInterrupt):
        a.train(model_a, x, y, nn.CrossEntropyLoss())
    assert (a.state.epoch, a.state.batch, a.state.window, a.state.running) == (1, 3, 3, True)
    a.train(model_a, x, y, nn.CrossEntropyLoss())
    b = SupervisedTrainer(
        descent.Adam(model_b, lr=1e-2), batch_size=8, epochs=3, gradient_accumulation_steps=4
    )
    b.train(model_b, x, y, nn.CrossEntropyLoss())
    assert all(
        torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True)
    )
    assert a.history["loss"] == pytest.approx(b.history["loss"], rel=1e-12)
    assert a.state.step == b.state.step == 9


def test_epoch_order_depends_only_on_seed_and_epoch():
    seen = []

    class Record(SupervisedTrainer):
        def forward(self, model, inputs):
            seen.append(inputs[:, 0].clone())
            return model(inputs)

    x = torch.arange(20.0)[:, None].repeat(1, 5)
    y = torch.zeros(20, dtype=torch.long)
    model = mlp()
    Record(descent.SGD(model, lr=0.0), batch_size=20, epochs=3, seed=5).train(
        model, x, y, nn.CrossEntropyLoss()
    )
    for epoch, order in enumerate(seen):
        assert torch.equal(order.long(), epoch_permutation(20, 5, epoch))
    assert not torch.equal(seen[0], seen[1])


def test_state_dict_round_trip_and_refusal_changes_nothing():
    x, y = toy_data()
    model = mlp()
    scheduler_opt = descent.Adam(model, lr=1e-2)
    trainer = SupervisedTrainer(
        scheduler_opt,
        batch_size=16,
        epochs=2,
        scheduler=torch.optim.lr_scheduler.StepLR(scheduler_opt, 3),
    )
    trainer.train(model, x, y, nn.CrossEntropyLoss())
    saved = trainer.state_dict()
    other_model = mlp(1)
    other_opt = descent.Adam(other_model, lr=1e-2)
    other = SupervisedTrainer(
        other_opt, batch_size=16, epochs=2, scheduler=torch.optim.lr_scheduler.StepLR(other_opt, 3)
    )
    other.load_state_dict(saved)
    assert other.state == trainer.state
    assert other.history["loss"] == trainer.history["loss"]
    assert other.scheduler.last_epoch == trainer.scheduler.last_epoch
    before = other.state_dict()
    broken = dict(saved, loop=dict(saved["loop"], step=-1))
    with pytest.raises(ValueError, match="step"):
        other.load_state_dict(broken)
    assert other.state_dict()["loop"] == before["loop"]
    with pytest.raises(ValueError, match="seed"):
        SupervisedTrainer(descent.Adam(mlp(), lr=1e-2), seed=3).load_state_dict(saved)


# ---------------------------------------------------------------- inputs


def test_arrays_tensors_datasets_give_the_same_run_and_loaders_work():
    x, y = toy_data(40)
    finals = []
    for kind in ("numpy", "tensor", "dataset"):
        model = mlp()
        trainer = SupervisedTrainer(descent.SGD(model, lr=0.1), batch_size=8, epochs=2)
        if kind == "numpy":
            trainer.train(model, x.numpy(), y.numpy(), nn.CrossEntropyLoss())
        elif kind == "tensor":
            trainer.train(model, x, y, nn.CrossEntropyLoss())
        else:
            trainer.train(model, TensorDataset(x, y), loss=nn.CrossEntropyLoss())
        finals.append(params_of(model))
    for other in finals[1:]:
        assert all(
            torch.allclose(p, q, rtol=0, atol=1e-7) for p, q in zip(finals[0], other, strict=True)
        )
    model_a, model_b = mlp(), mlp()
    SupervisedTrainer(descent.SGD(model_a, lr=0.1), batch_size=8, epochs=2, shuffle=False).train(
        model_a, x, y, nn.CrossEntropyLoss()
    )
    SupervisedTrainer(descent.SGD(model_b, lr=0.1), epochs=2).train(
        model_b, DataLoader(TensorDataset(x, y), batch_size=8), loss=nn.CrossEntropyLoss()
    )
    assert all(
        torch.allclose(p, q, rtol=0, atol=1e-7)
        for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True)
    )


def test_torch_optim_and_descent_optimizers_give_the_same_training():
    x, y = toy_data()
    model_a, model_b = mlp(), mlp()
    SupervisedTrainer(descent.Adam(model_a, lr=1e-2), batch_size=16, epochs=2).train(
        model_a, x, y, nn.CrossEntropyLoss()
    )
    SupervisedTrainer(
        torch.optim.Adam(model_b.parameters(), lr=1e-2), batch_size=16, epochs=2
    ).train(model_b, x, y, nn.CrossEntropyLoss())
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_drop_last_and_step_counts():
    x, y = toy_data(70)
    model = mlp()
    kept = SupervisedTrainer(descent.SGD(model, lr=0.1), batch_size=16, epochs=1)
    kept.train(model, x, y, nn.CrossEntropyLoss())
    dropped = SupervisedTrainer(descent.SGD(model, lr=0.1), batch_size=16, epochs=1, drop_last=True)
    dropped.train(model, x, y, nn.CrossEntropyLoss())
    assert (kept.state.step, dropped.state.step) == (5, 4)


def test_validation_metrics_match_an_independent_evaluation():
    x, y = toy_data(100)
    x_val, y_val = toy_data(30, seed=9)
    model = mlp()
    trainer = SupervisedTrainer(
        descent.Adam(model, lr=1e-2),
        batch_size=16,
        epochs=3,
        metrics=["accuracy"],
        validation_batch_size=7,
    )
    history = trainer.train(model, x, y, nn.CrossEntropyLoss(), validation_data=(x_val, y_val))
    with torch.no_grad():
        output = model(x_val)
        loss = nn.CrossEntropyLoss()(output, y_val).item()
        accuracy = (output.argmax(1) == y_val).float().mean().item()
    assert history["val_loss"][-1] == pytest.approx(loss, rel=1e-5)
    assert history["val_accuracy"][-1] == pytest.approx(accuracy, abs=1e-6)
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_validation_split_holds_out_a_seeded_fraction():
    x, y = toy_data(50)
    seen_rows = []

    class Record(SupervisedTrainer):
        def forward(self, model, inputs):
            if model.training:
                seen_rows.append(len(inputs))
            return model(inputs)

    model = mlp()
    history = Record(descent.SGD(model, lr=0.1), batch_size=50, epochs=1).train(
        model, x, y, nn.CrossEntropyLoss(), validation_split=0.2
    )
    assert seen_rows == [40]
    assert "val_loss" in history


def test_plateau_scheduler_gets_the_monitored_metric_once_per_epoch():
    calls = []

    class Plateau:
        def step(self, metric):
            calls.append(metric)

        def state_dict(self):
            return {}

    x, y = toy_data()
    model = mlp()
    history = SupervisedTrainer(
        descent.SGD(model, lr=0.1), batch_size=16, epochs=3, scheduler=Plateau()
    ).train(model, x, y, nn.CrossEntropyLoss(), validation_split=0.25)
    assert calls == history["val_loss"]
    for plateau in (
        torch.optim.lr_scheduler.ReduceLROnPlateau,
        descent.schedules.ReduceLROnPlateau,
    ):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = plateau(opt, patience=0, factor=0.5)
        SupervisedTrainer(
            opt, batch_size=16, epochs=2, scheduler=scheduler, scheduler_monitor="loss"
        ).train(model, x, y, lambda o, t: o.sum() * 0)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # constant loss: one cut


# ---------------------------------------------------------------- non-finite values


def test_nonfinite_raise_names_the_step_and_parameters_and_updates_nothing():
    x, y = toy_data(32)
    x[0, 0] = math.nan
    model = mlp()
    start = params_of(model)
    trainer = SupervisedTrainer(descent.Adam(model, lr=1e-2), batch_size=8, epochs=1, shuffle=False)
    with pytest.raises(NonFiniteError) as info:
        trainer.train(model, x, y, nn.CrossEntropyLoss())
    message = str(info.value)
    assert "optimizer step 1" in message and "0.weight" in message and "2.bias" in message
    assert "non-finite loss nan" in message
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), start, strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_nonfinite_skip_skips_and_counts_the_step():
    x, y = toy_data(32)
    x[9, 2] = math.inf
    model = mlp()
    trainer = SupervisedTrainer(
        descent.Adam(model, lr=1e-2), batch_size=8, epochs=2, shuffle=False, nonfinite="skip"
    )
    history = trainer.train(model, x, y, nn.CrossEntropyLoss())
    assert trainer.state.skipped == 2 and trainer.state.step == 6
    assert history["skipped_steps"] == [1.0, 2.0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------- precision, devices


def test_bf16_autocast_runs_the_forward_in_bfloat16_on_cpu():
    dtypes = []
    x, y = toy_data(64)
    model = mlp()
    model[0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    trainer = SupervisedTrainer(
        descent.Adam(model, lr=1e-2), batch_size=16, epochs=8, precision="bf16"
    )
    history = trainer.train(model, x, y, nn.CrossEntropyLoss())
    assert set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_moves_model_and_batches_to_cuda():
    x, y = toy_data()
    model = mlp()
    SupervisedTrainer(descent.SGD(model, lr=0.1), device="cuda", epochs=1).train(
        model, x, y, nn.CrossEntropyLoss()
    )
    assert next(model.parameters()).is_cuda


# ---------------------------------------------------------------- hooks and errors


def test_extension_points_are_called():
    calls = {
        "forward": 0,
        "compute_loss": 0,
        "backward": 0,
        "optimizer_step": 0,
        "reduce_metrics": 0,
    }

    class Hooked(SupervisedTrainer):
        def forward(self, model, inputs):
            calls["forward"] += 1
            return super().forward(model, inputs)

        def compute_loss(self, output, target):
            calls["compute_loss"] += 1
            return super().compute_loss(output, target)

        def backward(self, loss, *, model, sync):
            calls["backward"] += 1
            super().backward(loss, model=model, sync=sync)

        def optimizer_step(self, optimizer, scheduler=None, *, name="optimizer"):
            calls["optimizer_step"] += 1
            return super().optimizer_step(optimizer, scheduler, name=name)

        def reduce_metrics(self, metrics):
            calls["reduce_metrics"] += 1
            return {key: value * 0 for key, value in metrics.items()}

    x, y = toy_data(48)
    model = mlp()
    history = Hooked(
        descent.SGD(model, lr=0.1), batch_size=8, epochs=2, gradient_accumulation_steps=3
    ).train(model, x, y, nn.CrossEntropyLoss())
    assert calls == {
        "forward": 12,
        "compute_loss": 12,
        "backward": 12,
        "optimizer_step": 4,
        "reduce_metrics": 2,
    }
    assert history["loss"] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"epochs": 1.5}, ValueError, "epochs=1.5"),
        ({"gradient_accumulation_steps": -1}, ValueError, "gradient_accumulation_steps=-1"),
        ({"clip_grad_norm": -1.0}, ValueError, "clip_grad_norm=-1.0"),
        ({"nonfinite": "ignore"}, ValueError, "nonfinite='ignore'"),
        ({"precision": "int8"}, ValueError, "precision='int8'"),
        ({"metrics": ["f1"]}, ValueError, "unknown metric 'f1'"),
        ({"scheduler": 3}, TypeError, "scheduler"),
        ({"callbacks": [print]}, TypeError, "callbacks[0]"),
    ],
)
def test_bad_arguments_are_refused_with_their_name(kwargs, error, words):
    with pytest.raises(error) as info:
        SupervisedTrainer(descent.SGD(mlp(), lr=0.1), **kwargs)
    assert words in str(info.value)


def test_bad_train_inputs_are_refused_with_their_name():
    x, y = toy_data(20)
    trainer = SupervisedTrainer(descent.SGD(mlp(), lr=0.1))
    with pytest.raises(TypeError, match="expected an optimizer"):
        SupervisedTrainer(object())
    with pytest.raises(ValueError, match="y has 19 samples and x has 20"):
        trainer.train(mlp(), x, y[:19], nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match="loss=None"):
        trainer.train(mlp(), x, y)
    with pytest.raises(ValueError, match=r"validation_split=1\.5"):
        trainer.train(mlp(), x, y, nn.CrossEntropyLoss(), validation_split=1.5)
    with pytest.raises(TypeError, match="x has type list"):
        trainer.train(mlp(), [[1.0]], y, nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="y must be None"):
        trainer.train(mlp(), TensorDataset(x, y), y, nn.CrossEntropyLoss())
    assert trainer.state.step == 0 and not trainer.state.running
    assert isinstance(np.asarray(x), np.ndarray)


def test_refusals_before_the_loop_leave_the_trainer_untouched():
    class Unsized(torch.utils.data.IterableDataset):
        def __iter__(self):
            x, y = toy_data(16)
            return iter(zip(x, y, strict=True))

    model = mlp()
    trainer = SupervisedTrainer(descent.SGD(model, lr=0.1), gradient_accumulation_steps=2)
    with pytest.raises(TypeError, match="has no len"):
        trainer.train(model, DataLoader(Unsized(), batch_size=4), loss=nn.CrossEntropyLoss())
    assert trainer.state.running is False and trainer.state.end_epoch == 0
    with pytest.raises(ValueError, match="device='gpu0'"):
        SupervisedTrainer(descent.SGD(model, lr=0.1), device="gpu0")
    one_at_a_time = SupervisedTrainer(descent.SGD(model, lr=0.1), epochs=1)
    one_at_a_time.train(model, DataLoader(Unsized(), batch_size=4), loss=nn.CrossEntropyLoss())
    assert one_at_a_time.state.step == 4


def test_after_a_nonfinite_error_the_next_call_continues_past_the_bad_window():
    x, y = toy_data(32)
    x[10, 1] = math.nan  # in batch 1 of 4 (batches of 8)
    model = mlp()
    trainer = SupervisedTrainer(
        descent.SGD(model, lr=0.1),
        batch_size=8,
        epochs=1,
        shuffle=False,
        gradient_accumulation_steps=2,
    )
    with pytest.raises(NonFiniteError, match="optimizer step 1"):
        trainer.train(model, x, y, nn.CrossEntropyLoss())
    assert (trainer.state.batch, trainer.state.window, trainer.state.step) == (2, 0, 0)
    trainer.train(model, x, y, nn.CrossEntropyLoss())  # finishes the epoch: batches 2, 3
    assert (trainer.state.epoch, trainer.state.step) == (1, 1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
