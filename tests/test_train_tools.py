"""The tools around the trainers: the learning-rate range test and weight-decay groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import descent
from descent.train import CSVLogger, LRFinderResult, SupervisedTrainer, lr_find, lr_find_demo

pytestmark = pytest.mark.usefixtures("one_thread")


def data(n: int = 256, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    return x, (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()


def build(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.2), nn.ReLU(), nn.Linear(32, 3))
    optimizer = descent.Adam(model, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    return model, optimizer, scheduler


# ---------------------------------------------------------------- lr_find


def test_lr_find_sweeps_smooths_stops_and_suggests_by_its_rule(tmp_path):
    x, y = data()
    model, optimizer, scheduler = build()
    trainer = SupervisedTrainer(optimizer, batch_size=16, scheduler=scheduler)
    result = lr_find(
        trainer, model, x, y, nn.CrossEntropyLoss(), start_lr=1e-5, end_lr=100.0, steps=60
    )
    n = len(result.losses)
    assert 10 < n < 60 and result.stopped.startswith("diverged at lr")
    # the planned exponential sweep, from start_lr, 60 steps to end_lr
    assert result.lrs == pytest.approx([1e-5 * 1e7 ** (i / 59) for i in range(n)], rel=1e-9)

    # the stop: the bias-corrected running mean (beta 0.9) passed 4 x its lowest, and only
    # at the last step
    def running_mean(values):
        average, out = 0.0, []
        for i, loss in enumerate(values):
            average = 0.9 * average + 0.1 * loss
            out.append(average / (1 - 0.9 ** (i + 1)))
        return out

    running = running_mean(result.losses)
    assert running[-1] > 4 * min(running)
    assert all(running[i] <= 4 * min(running[: i + 1]) for i in range(n - 1))
    # the curve: a centred mean over the 11 steps around each (fewer at the ends)
    smoothed = [
        sum(result.losses[max(0, i - 5) : i + 6]) / (min(n, i + 6) - max(0, i - 5))
        for i in range(n)
    ]
    assert result.smoothed == pytest.approx(smoothed, rel=1e-12)
    lowest = min(range(n), key=smoothed.__getitem__)
    assert result.suggestion == pytest.approx(result.lrs[lowest] / 10)
    assert result.rule == "a tenth of the learning rate at which the smoothed loss was lowest"
    assert result.steepest is not None and result.steepest < result.lrs[lowest]
    assert result.losses[0] > min(result.losses)  # the loss fell first
    figure = result.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"
    assert figure.axes[0].get_xscale() == "log" and len(figure.axes[0].lines) >= 2


def test_lr_find_restores_everything_so_training_is_unchanged(tmp_path):
    """After the sweep, model, optimizer, scheduler, counters, history, callbacks,
    checkpoint directory and random generators are as before: training afterwards gives
    bit-identical parameters to training without the sweep (dropout draws included)."""
    x, y = data()
    results = []
    for sweep in (False, True):
        model, optimizer, scheduler = build()
        trainer = SupervisedTrainer(
            optimizer,
            batch_size=16,
            epochs=2,
            scheduler=scheduler,
            gradient_accumulation_steps=2,
            clip_grad_norm=1.0,
            callbacks=[CSVLogger(tmp_path / f"log-{sweep}.csv")],
            checkpoint_dir=tmp_path / f"ckpt-{sweep}",
        )
        trainer.train(model, x, y, nn.CrossEntropyLoss(), epochs=1)
        torch.manual_seed(7)
        if sweep:
            before = trainer.state_dict()
            lr_find(trainer, model, x, y, nn.CrossEntropyLoss(), steps=30)
            assert trainer.state_dict()["loop"] == before["loop"]
            assert trainer.history.state_dict() == before["history"]
            assert (
                optimizer.param_groups[0]["lr"]
                == before["optimizers"]["optimizer"]["param_groups"][0]["lr"]
            )
            assert scheduler.last_epoch == before["schedulers"]["optimizer"]["last_epoch"]
        trainer.train(model, x, y, nn.CrossEntropyLoss(), epochs=1)
        steps = sorted(p.name for p in (tmp_path / f"ckpt-{sweep}").iterdir())
        results.append(
            (
                [p.detach().clone() for p in model.parameters()],
                steps,
                (tmp_path / f"log-{sweep}.csv").read_text(),
            )
        )
    (plain, plain_steps, plain_log), (swept, swept_steps, swept_log) = results
    assert all(torch.equal(p, q) for p, q in zip(plain, swept, strict=True))
    assert plain_steps == swept_steps and plain_log == swept_log


def test_lr_find_keeps_param_group_ratios_and_stops_on_nonfinite_loss():
    x, y = data(64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = descent.SGD(
        [
            {"params": model[0].parameters(), "lr": 1.0},
            {"params": model[2].parameters(), "lr": 0.1},
        ],
        lr=1.0,
    )
    rates = []

    class Spy(SupervisedTrainer):
        def optimizer_step(self, optimizer, scheduler=None, *, name="optimizer"):
            stepped = super().optimizer_step(optimizer, scheduler, name=name)
            rates.append([group["lr"] for group in optimizer.param_groups])
            return stepped

    trainer = Spy(optimizer, batch_size=8)
    result = lr_find(
        trainer,
        model,
        x,
        y,
        nn.CrossEntropyLoss(),
        start_lr=1e-3,
        end_lr=1e12,
        steps=40,
        diverge=math.inf,
    )
    assert result.stopped.startswith("non-finite loss or gradient at lr")
    assert all(second == pytest.approx(first / 10) for first, second in rates[:-1])
    assert [group["lr"] for group in optimizer.param_groups] == [1.0, 0.1]
    assert all(math.isfinite(loss) for loss in result.losses)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"start_lr": 0.0}, "start_lr=0.0; expected a finite number > 0"),
        ({"start_lr": 1.0, "end_lr": 0.1}, "expected start_lr < end_lr"),
        ({"steps": 1}, "steps=1; expected at least 2"),
        ({"smoothing": 1.0}, r"smoothing=1\.0; expected a number in \[0, 1\)"),
        ({"diverge": 1.0}, "diverge=1.0; expected a number > 1"),
    ],
)
def test_lr_find_refuses_bad_arguments(options, message):
    model, optimizer, _ = build()
    trainer = SupervisedTrainer(optimizer)
    with pytest.raises(ValueError, match=message):
        lr_find(trainer, model, *data(16), nn.CrossEntropyLoss(), **options)
    with pytest.raises(TypeError, match="expected a trainer with one optimizer"):
        lr_find(object(), model, *data(16), nn.CrossEntropyLoss())


def test_lr_find_plot_into_a_subfigure_saves_and_returns_the_whole_figure(tmp_path):
    figure_module = pytest.importorskip("matplotlib.figure")
    result = LRFinderResult(
        lrs=[1e-4, 1e-3, 1e-2, 1e-1],
        losses=[2.0, 1.5, 1.0, 3.0],
        smoothed=[1.9, 1.5, 1.2, 2.5],
        suggestion=1e-3,
        steepest=1e-3,
        stopped="diverged",
    )
    whole = figure_module.Figure()
    left, _ = whole.subfigures(1, 2)
    axis = left.add_subplot()
    returned = result.plot(tmp_path / "sub.png", ax=axis)
    assert returned is whole
    assert (tmp_path / "sub.png").read_bytes()[:4] == b"\x89PNG"
    assert axis.get_xscale() == "log" and len(axis.lines) >= 2


def test_lr_find_demo_runs_on_the_bundled_text(tmp_path):
    pytest.importorskip("matplotlib")
    result = lr_find_demo(steps=12, path=tmp_path / "demo.png")
    assert isinstance(result, LRFinderResult) and len(result.losses) == 12
    assert result.losses[0] == pytest.approx(math.log(58), rel=0.05)  # uniform over 58 chars
    assert (tmp_path / "demo.png").exists()


# ---------------------------------------------------------------- param_groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.norm = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 3)
        self.pos_embed = nn.Parameter(torch.zeros(5, 4))

    def forward(self, tokens):
        hidden = self.embed(tokens) + self.pos_embed
        hidden = self.bn(torch.tanh(self.conv(hidden.transpose(1, 2)))).transpose(1, 2)
        return self.head(self.norm(hidden)).mean(1)


def test_param_groups_exempt_biases_norms_and_embeddings(capsys):
    model = Net()
    groups = descent.param_groups(model, weight_decay=0.1)
    assert [group["weight_decay"] for group in groups] == [0.1, 0.0]
    assert groups[0]["param_names"] == ["pos_embed", "conv.weight", "head.weight"]
    assert groups[1]["param_names"] == [
        "embed.weight",
        "conv.bias",
        "norm.weight",
        "norm.bias",
        "bn.weight",
        "bn.bias",
        "head.bias",
    ]
    named = dict(model.named_parameters())
    assert all(
        p is named[n] for g in groups for p, n in zip(g["params"], g["param_names"], strict=True)
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("weight_decay=0.1: 3 tensors, 80 values: pos_embed")
    assert printed[1].startswith("weight_decay=0: 7 tensors, 63 values: embed.weight")


def test_param_groups_overrides_by_pattern_and_type():
    model = Net()
    groups = descent.param_groups(
        model,
        0.05,
        no_decay=["*bias", "pos_embed", nn.LayerNorm],
        decay=["norm.weight"],
        verbose=False,
        lr=3e-4,
    )
    assert groups[1]["param_names"] == [
        "pos_embed",
        "conv.bias",
        "norm.bias",
        "bn.bias",
        "head.bias",
    ]
    assert all(group["lr"] == 3e-4 for group in groups)
    model.head.weight.requires_grad_(False)
    frozen = descent.param_groups(model, 0.05, verbose=False)
    assert "head.weight" not in frozen[0]["param_names"] + frozen[1]["param_names"]


def test_param_groups_train_like_hand_made_groups():
    """AdamW on the helper's groups equals torch's AdamW on groups listed by hand."""
    model, reference = Net(), Net()
    tokens = torch.randint(0, 10, (8, 5), generator=torch.Generator().manual_seed(2))
    optimizer = descent.AdamW(descent.param_groups(model, 0.5, verbose=False), lr=0.1)
    decayed = [reference.conv.weight, reference.head.weight, reference.pos_embed]
    rest = [p for p in reference.parameters() if all(p is not q for q in decayed)]
    torch_optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.5}, {"params": rest, "weight_decay": 0.0}], lr=0.1
    )
    for net, opt in ((model, optimizer), (reference, torch_optimizer)):
        for _ in range(3):
            net(tokens).square().sum().backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not torch.equal(model.norm.weight, Net().norm.weight)


def test_param_groups_refuses_bad_arguments():
    with pytest.raises(ValueError, match=r"weight_decay=-0\.1; expected a finite number >= 0"):
        descent.param_groups(Net(), -0.1)
    with pytest.raises(TypeError, match=r"no_decay\[1\]=3; expected a name pattern"):
        descent.param_groups(Net(), 0.1, no_decay=["*bias", 3])
    with pytest.raises(TypeError, match="model is a list"):
        descent.param_groups([nn.Linear(2, 2)], 0.1)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        descent.param_groups(frozen, 0.1)
