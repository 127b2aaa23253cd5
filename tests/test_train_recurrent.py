"""RecurrentTrainer: TBPTT gradients against an unrolled reference, step modes, char-level task."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import descent
from descent.data import char_sequences, load_text, unigram_entropy
from descent.train import Callback, RecurrentTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


class Elman(nn.Module):
    """``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, ``y_t = W h_t + b``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.rnn = nn.RNN(3, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x, hidden):
        out, hidden = self.rnn(x, hidden)
        return self.head(out), hidden


def unrolled_truncated_loss(model: Elman, x, y, k: int | None) -> torch.Tensor:
    """The mean squared error of the whole sequence, unrolled step by step from the RNN
    equations, with the hidden state cut from the graph every ``k`` steps."""
    w_ih, w_hh = model.rnn.weight_ih_l0, model.rnn.weight_hh_l0
    b_ih, b_hh = model.rnn.bias_ih_l0, model.rnn.bias_hh_l0
    h = torch.zeros(x.shape[0], w_hh.shape[0])
    errors = []
    for t in range(x.shape[1]):
        if k is not None and t > 0 and t % k == 0:
            h = h.detach()
        h = torch.tanh(x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        errors.append((model.head(h) - y[:, t]) ** 2)
    return torch.stack(errors, dim=1).mean()


def sequences(n: int = 4, length: int = 10, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, 3, generator=generator)
    y = torch.randn(n, length, 2, generator=generator)
    return x, y


class GrabGradients(Callback):
    def __init__(self):
        self.grads = []

    def on_before_optimizer_step(self, trainer, optimizer, name):
        self.grads.append([p.grad.clone() for p in trainer.model.parameters()])


def reference_grads(model, loss):
    return [g.clone() for g in torch.autograd.grad(loss, list(model.parameters()))]


def assert_close_lists(a, b, rel=1e-12):
    for u, v in zip(a, b, strict=True):
        u, v = u.detach(), v.detach()
        assert float((u - v).abs().max()) <= rel * float(v.abs().max()), (u, v)


@pytest.mark.parametrize("k", [1, 3, 4, 10, None])
def test_tbptt_gradients_match_an_unrolled_reference(float64, k):
    x, y = sequences(length=10)  # k=3: chunks of 3, 3, 3 and a last one of 1
    model = Elman()
    grab = GrabGradients()
    RecurrentTrainer(
        descent.SGD(model, lr=0.0),
        batch_size=4,
        epochs=1,
        bptt_steps=k,
        step_every="sequence",
        shuffle=False,
        callbacks=[grab],
    ).train(model, x, y, nn.MSELoss())
    assert len(grab.grads) == 1
    assert_close_lists(
        grab.grads[0], reference_grads(model, unrolled_truncated_loss(model, x, y, k))
    )


def test_truncation_changes_the_gradient(float64):
    x, y = sequences(length=10)
    model = Elman()
    full = reference_grads(model, unrolled_truncated_loss(model, x, y, None))
    truncated = reference_grads(model, unrolled_truncated_loss(model, x, y, 3))
    w_hh = 1  # rnn.weight_hh_l0 is the second parameter
    assert float((full[w_hh] - truncated[w_hh]).abs().max()) > 1e-4


def test_step_per_chunk_matches_a_manual_sgd_loop(float64):
    x, y = sequences(n=6, length=7)
    model, reference = Elman(), Elman()
    RecurrentTrainer(
        descent.SGD(model, lr=0.1), batch_size=3, epochs=1, bptt_steps=3, shuffle=False
    ).train(model, x, y, nn.MSELoss())
    params = list(reference.parameters())
    for rows in (slice(0, 3), slice(3, 6)):
        hidden = None
        for start in (0, 3, 6):  # chunks of 3, 3, 1
            stop = min(start + 3, 7)
            out, hidden = reference(x[rows, start:stop], hidden)
            loss = ((out - y[rows, start:stop]) ** 2).mean()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p -= 0.1 * g
            hidden = hidden.detach()
    assert_close_lists(list(model.parameters()), params)


def test_chunk_windows_of_a_whole_sequence_equal_one_step_per_sequence(float64):
    x, y = sequences(n=4, length=12)
    a, b = Elman(), Elman()
    ta = RecurrentTrainer(
        descent.Adam(a, lr=1e-2),
        batch_size=2,
        epochs=2,
        bptt_steps=3,
        gradient_accumulation_steps=4,
        seed=1,
    )
    ta.train(a, x, y, nn.MSELoss())
    tb = RecurrentTrainer(
        descent.Adam(b, lr=1e-2),
        batch_size=2,
        epochs=2,
        bptt_steps=3,
        step_every="sequence",
        seed=1,
    )
    tb.train(b, x, y, nn.MSELoss())
    assert ta.state.step == tb.state.step == 4
    assert_close_lists(list(a.parameters()), list(b.parameters()))


def test_chunk_windows_end_with_the_sequence():
    x, y = sequences(n=2, length=10)
    model = Elman()
    trainer = RecurrentTrainer(
        descent.SGD(model, lr=0.01),
        batch_size=1,
        epochs=1,
        bptt_steps=3,
        gradient_accumulation_steps=3,
    )
    trainer.train(model, x, y, nn.MSELoss())
    assert trainer.state.step == 4  # per sequence: windows of chunks (3, 3, 3) + (1)


def test_lstm_hidden_tuples_are_carried_and_detached():
    class LSTMModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 5, batch_first=True)
            self.head = nn.Linear(5, 2)

        def forward(self, x, hidden):
            out, hidden = self.lstm(x, hidden)
            return self.head(out), hidden

    x, y = sequences(n=8, length=9)
    model = LSTMModel()
    history = RecurrentTrainer(
        descent.Adam(model, lr=1e-2), batch_size=4, epochs=3, bptt_steps=4, clip_grad_norm=1.0
    ).train(model, x, y, nn.MSELoss())
    assert len(history["loss"]) == 3
    assert len(history.steps["grad_norm"]) == 3 * 2 * 3


def test_character_model_beats_the_unigram_baseline_on_held_out_text():
    text = load_text()
    x, y, vocab = char_sequences(text, 64)

    class CharRNN(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(len(vocab), 32)
            self.rnn = nn.GRU(32, 64, batch_first=True)
            self.head = nn.Linear(64, len(vocab))

        def forward(self, chars, hidden):
            out, hidden = self.rnn(self.embed(chars), hidden)
            return self.head(out), hidden

    model = CharRNN()
    trainer = RecurrentTrainer(
        descent.Adam(model, lr=1e-2),
        batch_size=16,
        epochs=6,
        bptt_steps=16,
        clip_grad_norm=1.0,
        metrics=["accuracy"],
    )
    history = trainer.train(model, x, y, nn.CrossEntropyLoss(), validation_split=0.1)
    baseline = unigram_entropy(text)  # 3.26 nats per character
    assert history["val_loss"][-1] < 0.75 * baseline, (history["val_loss"], baseline)
    assert history["loss"][-1] < 0.7 * baseline
    assert history["val_accuracy"][-1] > 0.3


class OutputOnly(Elman):
    def forward(self, x, hidden):
        return super().forward(x, hidden)[0]


def test_contract_and_shape_errors_are_clear():
    x, y = sequences()

    def train(model, x, y):
        RecurrentTrainer(descent.SGD(model, lr=0.1), batch_size=2, bptt_steps=3).train(
            model, x, y, nn.MSELoss()
        )

    with pytest.raises(TypeError, match=r"model\(x_chunk, hidden\) -> \(y_chunk, hidden\)"):
        train(OutputOnly(), x, y)
    with pytest.raises(ValueError, match="batch first"):
        train(Elman(), x[:, 0, 0], y[:, 0, 0])
    with pytest.raises(ValueError, match="per-step targets"):
        train(Elman(), x, y[:, :5])
    with pytest.raises(ValueError, match="bptt_steps=0"):
        RecurrentTrainer(descent.SGD(Elman(), lr=0.1), bptt_steps=0)
    with pytest.raises(ValueError, match="step_every='batch'"):
        RecurrentTrainer(descent.SGD(Elman(), lr=0.1), step_every="batch")


def test_recurrent_extension_points_are_called():
    calls = {"initial_hidden": 0, "forward_chunk": 0, "compute_loss": 0}

    class Hooked(RecurrentTrainer):
        def initial_hidden(self, model, inputs):
            calls["initial_hidden"] += 1
            return torch.zeros(1, inputs.shape[0], 6)

        def forward_chunk(self, model, x_chunk, hidden):
            calls["forward_chunk"] += 1
            return super().forward_chunk(model, x_chunk, hidden)

        def compute_loss(self, output, target):
            calls["compute_loss"] += 1
            return super().compute_loss(output, target)

    x, y = sequences(n=4, length=10)
    model = Elman()
    Hooked(descent.SGD(model, lr=0.1), batch_size=2, epochs=1, bptt_steps=4).train(
        model, x, y, nn.MSELoss()
    )
    assert calls == {"initial_hidden": 2, "forward_chunk": 6, "compute_loss": 6}
