"""Callbacks (events, early stopping, lr monitor, loggers, progress bar) and History."""

from __future__ import annotations

import csv
import io
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import descent
from descent.train import (
    Callback,
    CSVLogger,
    EarlyStopping,
    History,
    JSONLogger,
    LRMonitor,
    ProgressBar,
    SupervisedTrainer,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def toy_data(n: int = 48, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=generator), torch.randint(0, 3, (n,), generator=generator)


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, trainer):
        self.events.append("train_begin")

    def on_train_end(self, trainer):
        self.events.append("train_end")

    def on_epoch_begin(self, trainer, epoch):
        self.events.append(f"epoch_begin {epoch}")

    def on_epoch_end(self, trainer, epoch, logs):
        self.events.append(f"epoch_end {epoch}")

    def on_batch_begin(self, trainer, batch):
        self.events.append(f"batch_begin {batch}")

    def on_batch_end(self, trainer, batch, logs):
        self.events.append(f"batch_end {batch}")

    def on_before_optimizer_step(self, trainer, optimizer, name):
        self.events.append("step")

    def on_exception(self, trainer, error):
        self.events.append(f"exception {type(error).__name__}")


def test_events_arrive_in_loop_order():
    recorder = Recorder()
    x, y = toy_data(24)
    model = mlp()
    SupervisedTrainer(
        descent.SGD(model, lr=0.1),
        batch_size=8,
        epochs=1,
        gradient_accumulation_steps=2,
        callbacks=[recorder],
    ).train(model, x, y, nn.CrossEntropyLoss())
    assert recorder.events == [
        "train_begin",
        "epoch_begin 0",
        "batch_begin 0",
        "batch_end 0",
        "batch_begin 1",
        "step",
        "batch_end 1",
        "batch_begin 2",
        "step",
        "batch_end 2",
        "epoch_end 0",
        "train_end",
    ]


def test_on_exception_sees_the_error_and_it_is_re_raised():
    recorder = Recorder()

    def failing_loss(output, target):
        raise RuntimeError("boom")

    x, y = toy_data()
    model = mlp()
    with pytest.raises(RuntimeError, match="boom"):
        SupervisedTrainer(descent.SGD(model, lr=0.1), callbacks=[recorder]).train(
            model, x, y, failing_loss
        )
    assert recorder.events[-1] == "exception RuntimeError"
    assert "train_end" not in recorder.events


# ---------------------------------------------------------------- early stopping


def drive(callback: EarlyStopping, values, key="val_loss"):
    trainer = SimpleNamespace(stop_training=False, model=nn.Linear(1, 1))
    for epoch, value in enumerate(values):
        callback.on_epoch_end(trainer, epoch, {key: value})
        if trainer.stop_training:
            return epoch
    return None


def test_early_stopping_patience_mode_and_min_delta():
    assert drive(EarlyStopping(patience=2), [1.0, 0.5, 0.6, 0.7, 0.1]) == 3
    assert drive(EarlyStopping(patience=3), [1.0, 0.5, 0.6, 0.7, 0.1]) is None
    # improvements smaller than min_delta do not count
    assert drive(EarlyStopping(patience=2, min_delta=0.1), [1.0, 0.95, 0.91, 0.5]) == 2
    stop = EarlyStopping("val_accuracy", patience=1)
    assert stop.mode == "max"
    assert drive(stop, [0.5, 0.7, 0.6], key="val_accuracy") == 2
    assert (stop.best, stop.best_epoch) == (0.7, 1)


def test_early_stopping_restores_the_best_weights_of_a_real_run():
    x, y = toy_data(60)
    x_val, y_val = toy_data(30, seed=5)
    weights = []

    class Snapshot(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    model = mlp()
    stop = EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    trainer = SupervisedTrainer(
        descent.SGD(model, lr=2.0), batch_size=8, epochs=12, callbacks=[Snapshot(), stop]
    )
    history = trainer.train(model, x, y, nn.CrossEntropyLoss(), validation_data=(x_val, y_val))
    best = min(range(len(history["val_loss"])), key=lambda e: history["val_loss"][e])
    assert stop.best_epoch == best
    assert len(history["val_loss"]) < 12, "a large learning rate should overfit and stop early"
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[best][key])


def test_early_stopping_names_a_missing_metric_and_bad_arguments():
    x, y = toy_data()
    model = mlp()
    with pytest.raises(ValueError, match=r"monitor='val_loss' is not among the epoch metrics"):
        SupervisedTrainer(descent.SGD(model, lr=0.1), epochs=1, callbacks=[EarlyStopping()]).train(
            model, x, y, nn.CrossEntropyLoss()
        )
    with pytest.raises(ValueError, match="patience=0"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode='up'"):
        EarlyStopping(mode="up")


def test_early_stopping_state_round_trip():
    stop = EarlyStopping(patience=3)
    drive(stop, [1.0, 0.4, 0.6])
    other = EarlyStopping(patience=3)
    other.load_state_dict(stop.state_dict())
    assert (other.best, other.wait, other.best_epoch) == (0.4, 1, 1)
    with pytest.raises(ValueError, match="monitors"):
        EarlyStopping("loss").load_state_dict(stop.state_dict())


# ---------------------------------------------------------------- lr monitor and loggers


def test_lr_monitor_records_the_scheduled_rate_of_each_step():
    x, y = toy_data(48)
    model = mlp()
    optimizer = descent.SGD(model, lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    history = SupervisedTrainer(
        optimizer, batch_size=8, epochs=2, scheduler=scheduler, callbacks=[LRMonitor()]
    ).train(model, x, y, nn.CrossEntropyLoss())
    expected = [0.1 * 0.5 ** (step // 2) for step in range(12)]  # StepLR in closed form
    assert history.steps["lr"] == pytest.approx(expected)
    assert history.step_indices["lr"] == list(range(1, 13))
    assert history["lr"] == pytest.approx([0.1 * 0.5**3, 0.1 * 0.5**6])


def test_csv_and_json_loggers_write_the_history(tmp_path):
    x, y = toy_data()
    model = mlp()
    trainer = SupervisedTrainer(
        descent.SGD(model, lr=0.1),
        batch_size=16,
        epochs=3,
        metrics=["accuracy"],
        callbacks=[CSVLogger(tmp_path / "log.csv"), JSONLogger(tmp_path / "sub" / "log.json")],
    )
    history = trainer.train(model, x, y, nn.CrossEntropyLoss())
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["loss"]) for r in rows] == history["loss"]
    assert [float(r["accuracy"]) for r in rows] == history["accuracy"]
    payload = json.loads((tmp_path / "sub" / "log.json").read_text())
    assert payload["epoch_metrics"]["loss"] == history["loss"]
    assert payload["steps"]["loss"] == history.steps["loss"]


def test_progress_bar_draws_one_line_per_epoch():
    pytest.importorskip("tqdm")
    x, y = toy_data()
    stream = io.StringIO()
    model = mlp()
    SupervisedTrainer(
        descent.SGD(model, lr=0.1),
        batch_size=16,
        epochs=2,
        metrics=["accuracy"],
        callbacks=[ProgressBar(file=stream)],
    ).train(model, x, y, nn.CrossEntropyLoss())
    text = stream.getvalue()
    finished = [line for line in text.replace("\r", "\n").split("\n") if "3/3" in line]
    assert any(line.startswith("epoch 1/2") for line in finished)
    assert any(line.startswith("epoch 2/2") for line in finished)
    assert "loss=" in text and "accuracy=" in text
    assert text.count("\n") == 2  # each epoch's line is redrawn in place, then left


def test_callbacks_are_quiet_off_the_main_process(tmp_path):
    class Worker(SupervisedTrainer):
        @property
        def is_main_process(self):
            return False

    x, y = toy_data()
    stream = io.StringIO()
    model = mlp()
    Worker(
        descent.SGD(model, lr=0.1),
        epochs=1,
        callbacks=[ProgressBar(file=stream), CSVLogger(tmp_path / "log.csv")],
    ).train(model, x, y, nn.CrossEntropyLoss())
    assert stream.getvalue() == "" and not (tmp_path / "log.csv").exists()


# ---------------------------------------------------------------- History


def test_history_is_a_mapping_with_padding_and_round_trip():
    history = History()
    history.log_epoch(0, {"loss": 1.0})
    history.log_epoch(1, {"loss": 0.5, "val_loss": 0.7})
    history.log_step(1, {"loss": 1.2})
    assert dict(history)["loss"] == [1.0, 0.5]
    assert math.isnan(history["val_loss"][0]) and history["val_loss"][1] == 0.7
    assert len(history) == 2 and "val_loss" in history
    with pytest.raises(KeyError, match="has no epoch metric 'acc'"):
        history["acc"]
    copy = History()
    copy.load_state_dict(history.state_dict())
    assert json.dumps(copy.state_dict()) == json.dumps(history.state_dict())
    with pytest.raises(ValueError, match="3 values for 2 epochs"):
        copy.load_state_dict({**history.state_dict(), "epoch_metrics": {"loss": [1.0, 2.0, 3.0]}})
    assert copy["loss"] == [1.0, 0.5]


def test_history_plot_returns_the_figure_and_leaves_the_backend_alone(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    x, y = toy_data()
    model = mlp()
    history = SupervisedTrainer(
        descent.SGD(model, lr=0.1), batch_size=16, epochs=3, metrics=["accuracy"]
    ).train(model, x, y, nn.CrossEntropyLoss(), validation_split=0.25)
    backend = matplotlib.get_backend()
    matplotlib.use("pdf")  # a user's backend, which plotting must not switch
    try:
        figure = history.plot(tmp_path / "curves.png", title="toy")
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(backend)
    path = tmp_path / "curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000
    # loss and accuracy panels, each with its validation curve and per-step values
    assert [axis.get_title() for axis in figure.axes] == ["loss", "accuracy"]
    assert [line.get_label() for line in figure.axes[0].lines] == [
        "loss (per step)",
        "loss",
        "val_loss",
    ]
    assert figure.axes[0].lines[1].get_ydata().tolist() == history["loss"]
    unsaved = history.plot(keys=["loss"])  # no path: drawn, returned, not saved
    assert len(unsaved.axes) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
    with pytest.raises(ValueError, match="were not recorded"):
        history.plot(tmp_path / "x.png", keys=["perplexity"])
