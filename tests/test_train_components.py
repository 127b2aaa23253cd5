"""The components beside the loop, each on its own: StepGuard, Meter, Distribution (in one
process; the 2-process runs are in test_train_distributed.py), the progress output, and
the errors for mistakes that would otherwise train silently wrong."""

from __future__ import annotations

import io
import math
import socket
import warnings

import pytest
import torch
from torch import nn

import descent
from descent.train import NonFiniteError, ProgressBar, SupervisedTrainer
from descent.train.distribution import Distribution
from descent.train.metrics import Meter
from descent.train.step import StepGuard

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def toy_data(n: int = 48, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def with_gradients(model: nn.Module, seed: int = 3, scale: float = 1.0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.grad = scale * torch.randn(param.shape, generator=generator)
    return [p.grad.clone() for p in model.parameters()]


# ---------------------------------------------------------------- StepGuard


def test_step_guard_clips_like_torch_and_lets_callbacks_see_raw_gradients():
    model, reference = mlp(), mlp()
    grads = with_gradients(model, scale=3.0)
    for param, grad in zip(reference.parameters(), grads, strict=True):
        param.grad = grad.clone()
    seen = []
    guard = StepGuard("test", clip_grad_norm=1.0, clip_grad_value=0.5)
    logs = guard.step(
        descent.SGD(model, lr=1.0),
        before_step=lambda: seen.append([p.grad.clone() for p in model.parameters()]),
    )
    torch.nn.utils.clip_grad_value_(reference.parameters(), 0.5)
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    with torch.no_grad():
        for param in reference.parameters():
            param -= param.grad
    assert all(torch.equal(a, b) for a, b in zip(seen[0], grads, strict=True))
    assert logs == {"grad_norm": pytest.approx(float(norm), rel=1e-6)}
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


def test_step_guard_refuses_nonfinite_gradients_and_changes_nothing():
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    with_gradients(model)
    model[2].bias.grad[1] = math.inf
    guard = StepGuard("Owner")
    guard.names = {id(p): name for name, p in model.named_parameters()}
    with pytest.raises(NonFiniteError, match=r"Owner: non-finite gradients in 2\.bias at step 7"):
        guard.step(descent.Adam(model, lr=1.0), where=lambda: "step 7")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert all(p.grad is None for p in model.parameters())
    with_gradients(model)
    guard.note_loss(torch.tensor(math.nan), epoch=2, index=5)
    skipping = StepGuard("Owner", nonfinite="skip")
    skipping.nonfinite_loss = guard.nonfinite_loss
    assert skipping.step(descent.Adam(model, lr=1.0)) is None
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_grad_scaler_overflow_skips_the_step_and_halves_the_scale():
    model = mlp()
    optimizer = descent.SGD(model, lr=0.1)
    guard = StepGuard("test", precision="fp16")  # nonfinite="raise": overflow is not an error
    guard.load_state(
        {
            "scale": 2.0**126,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 0,
        }
    )
    before = [p.detach().clone() for p in model.parameters()]
    x, y = toy_data(8)
    with guard.autocast():
        loss = nn.CrossEntropyLoss()(model(x), y)
    guard.scale_loss(loss * 1e3).backward()  # 1e3 * 2^126 overflows float32
    assert guard.step(optimizer) is None
    assert guard.state_dict()["scale"] == 2.0**125
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    guard.load_state({**guard.state_dict(), "scale": 1024.0})
    with guard.autocast():
        output = model(x)
        loss = nn.CrossEntropyLoss()(output, y)
    assert output.dtype == torch.float16
    guard.scale_loss(loss).backward()
    assert guard.step(optimizer) == {}
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_fp16_training_runs_and_its_scaler_state_is_saved():
    x, y = toy_data(64)
    model = mlp()
    dtypes = []
    model[0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    trainer = SupervisedTrainer(
        descent.Adam(model, lr=1e-2), batch_size=16, epochs=6, precision="fp16"
    )
    history = trainer.train(model, x, y, nn.CrossEntropyLoss())
    assert set(dtypes) == {torch.float16}
    assert history["loss"][-1] < history["loss"][0]
    state = trainer.state_dict()
    assert isinstance(state["scaler"]["scale"], float)
    other_model = mlp()
    other = SupervisedTrainer(descent.Adam(other_model, lr=1e-2), precision="fp16")
    other.load_state_dict(state)
    assert other.state_dict()["scaler"] == state["scaler"]
    with pytest.raises(
        ValueError, match="has a GradScaler state, this trainer has precision='fp32'"
    ):
        SupervisedTrainer(descent.Adam(mlp(), lr=1e-2)).load_state_dict(state)


def test_scheduler_steps_after_the_optimizer_and_plateau_ones_wait_for_the_epoch():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    guard = StepGuard("test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "scheduler before optimizer" warning
        with_gradients(model)
        guard.step(optimizer, scheduler)
        with_gradients(model)
        guard.step(optimizer, plateau)
    assert scheduler.last_epoch == 1 and optimizer.param_groups[0]["lr"] == 0.5
    assert plateau.last_epoch == 0


def test_zero_redundancy_drives_the_users_scheduler_without_patching_it():
    """A process group of one: the trainer wraps the optimizer in ZeroRedundancyOptimizer
    on the optimizer's own param groups, so the StepLR built on the optimizer sets the
    rates the wrapper steps with; torch's scheduler-order warning is not raised, and no
    step function is replaced. The run equals the one without ZeRO."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    x, y = toy_data(48)
    results = []
    for zero in (False, True):
        model = mlp()
        optimizer = descent.Adam(model, lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        step_function = optimizer.step  # as the scheduler wrapped it
        trainer = SupervisedTrainer(
            optimizer,
            batch_size=8,
            epochs=1,
            scheduler=scheduler,
            zero_redundancy=zero,
            callbacks=[descent.LRMonitor()],
        )
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
        )
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                history = trainer.train(model, x, y, nn.CrossEntropyLoss())
            assert (type(trainer.optimizer).__name__ == "ZeroRedundancyOptimizer") == zero
            assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
            assert optimizer.step is step_function  # not replaced since
            results.append(([p.detach().clone() for p in model.parameters()], history.steps["lr"]))
            del trainer, optimizer, scheduler
        finally:
            descent.distributed.destroy_process_group()
    assert results[1][1] == results[0][1] == [0.1 * 0.5 ** (step // 2) for step in range(6)]
    assert all(torch.equal(p, q) for p, q in zip(results[0][0], results[1][0], strict=True))


# ---------------------------------------------------------------- Meter


def test_meter_weights_each_metric_by_its_own_count():
    meter = Meter()
    meter.add({"loss": 2.0}, weight=6)  # a micro-batch of 6 counted tokens
    meter.add({"accuracy": 0.5}, weight=2)  # its 2 samples
    meter.add({"loss": 5.0}, weight=3)
    meter.add({"accuracy": 1.0}, weight=2)
    meter.add({"loss": math.nan}, weight=0)  # counted nothing: left out
    assert meter.means() == {"loss": (12 + 15) / 9, "accuracy": 0.75}
    assert meter.global_means() == meter.means()
    meter.add_window(2.0, 6)
    meter.add_window(5.0, 3)
    assert meter.pop_window() == {"loss": 3.0} and meter.pop_window() == {}
    copy = Meter()
    copy.load_state_dict(meter.state_dict())
    assert copy.means() == meter.means()
    with pytest.raises(ValueError, match="'sums' has keys \\['loss'\\], 'counts' \\[\\]"):
        copy.load_state_dict({"sums": {"loss": 1.0}, "counts": {}, "window": [0, 0]})
    assert copy.means() == meter.means()


# ---------------------------------------------------------------- Distribution


def test_distribution_in_one_process_does_the_single_process_thing():
    distribution = Distribution("test", zero_redundancy=True)
    model = mlp()
    optimizer = descent.SGD(model, lr=0.1)
    assert not distribution.active and distribution.replicas == 1
    assert distribution.wrap_model(model) is model
    assert distribution.shard({"optimizer": optimizer}) == {"optimizer": optimizer}
    assert distribution.sum(2.5) == 2.5 and distribution.is_main_process
    assert distribution.reduce_metrics({"loss": 1.0, "val_loss": 2.0}, {"loss": 3.0}) == {
        "loss": 1.0,
        "val_loss": 2.0,
    }
    with pytest.raises(TypeError, match="zero_redundancy=1; expected a bool"):
        Distribution("test", zero_redundancy=1)


# ---------------------------------------------------------------- progress output


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_with(bar: ProgressBar, epochs: int = 2) -> None:
    x, y = toy_data(48)
    model = mlp()
    SupervisedTrainer(
        descent.SGD(model, lr=0.1),
        batch_size=4,
        epochs=epochs,
        metrics=["accuracy"],
        callbacks=[bar],
    ).train(model, x, y, nn.CrossEntropyLoss())


def test_progress_off_a_terminal_is_one_line_per_epoch():
    stream = io.StringIO()
    run_with(ProgressBar(file=stream), epochs=3)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all(
        "12/12 batches" in line and "loss=" in line and "accuracy=" in line for line in lines
    )


def test_progress_on_a_terminal_is_a_bar_redrawn_in_place():
    pytest.importorskip("tqdm")
    terminal = Terminal()
    run_with(ProgressBar(file=terminal))
    assert "\r" in terminal.getvalue() and "12/12" in terminal.getvalue()
    forced = Terminal()
    run_with(ProgressBar(file=forced, dynamic=False))
    assert "\r" not in forced.getvalue() and len(forced.getvalue().splitlines()) == 2
    with pytest.raises(TypeError, match="dynamic='yes'"):
        ProgressBar(dynamic="yes")


# ---------------------------------------------------------------- silent mistakes


def test_an_optimizer_of_another_model_is_refused_before_training():
    x, y = toy_data()
    model, other = mlp(), mlp(1)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = SupervisedTrainer(descent.SGD(other, lr=0.1))
    with pytest.raises(
        ValueError,
        match=r"none of the 4 parameters of the optimizer is a "
        r"parameter of the model being trained.*build the "
        r"optimizer on this model's parameters",
    ):
        trainer.train(model, x, y, nn.CrossEntropyLoss())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert trainer.state.step == 0 and not trainer.state.running


def test_parameters_of_a_loss_module_count_as_trained():
    class LearnedTemperature(nn.Module):
        def __init__(self):
            super().__init__()
            self.log_t = nn.Parameter(torch.zeros(()))

        def forward(self, output, target):
            return nn.functional.cross_entropy(output / self.log_t.exp(), target)

    x, y = toy_data()
    model, loss = mlp(), LearnedTemperature()
    trainer = SupervisedTrainer(descent.SGD([loss.log_t], lr=0.1), batch_size=16, epochs=1)
    trainer.train(model, x, y, loss)
    assert float(loss.log_t.detach()) != 0.0


def test_a_loss_class_instead_of_an_instance_is_named():
    x, y = toy_data()
    model = mlp()
    with pytest.raises(
        TypeError,
        match=r"loss is the class CrossEntropyLoss, not a loss; "
        r"pass an instance, e.g. loss=CrossEntropyLoss\(\)",
    ):
        SupervisedTrainer(descent.SGD(model, lr=0.1)).train(model, x, y, nn.CrossEntropyLoss)


def test_a_scheduler_of_another_optimizer_is_refused():
    model = mlp()
    optimizer, other = descent.SGD(model, lr=0.1), descent.SGD(model, lr=0.1)
    with pytest.raises(
        ValueError,
        match=r"scheduler \(StepLR\) was built on another "
        r"optimizer .* Build the scheduler on the optimizer",
    ):
        SupervisedTrainer(optimizer, scheduler=torch.optim.lr_scheduler.StepLR(other, 2))
    generator, discriminator = mlp(), mlp(1)
    g_optimizer = descent.SGD(generator, lr=0.1)
    d_optimizer = descent.SGD(discriminator, lr=0.1)
    with pytest.raises(ValueError, match="g_scheduler"):
        descent.AdversarialTrainer(
            generator,
            discriminator,
            g_optimizer,
            d_optimizer,
            latent_dim=5,
            g_scheduler=torch.optim.lr_scheduler.StepLR(d_optimizer, 2),
        )
