"""Exact gradient accumulation: a window of micro-batches equals one batch of all its samples.

The references are plain PyTorch loops written here from the definition (one batch of
the window's samples, the loss's mean over all of them, one optimizer step), not the
trainer with another batch size. Everything runs in float64; the required agreement is
1e-12 relative to the largest parameter. The data sizes are chosen so that micro-batches
are uneven: a short last micro-batch (``drop_last=False``) and padded sequences whose
micro-batches hold different numbers of tokens.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import descent
from descent.distributed import ResumableSampler
from descent.train import AdversarialTrainer, RecurrentTrainer, SupervisedTrainer
from descent.train.accumulation import Window, count_targets
from descent.train.data import epoch_permutation

pytestmark = pytest.mark.usefixtures("one_thread")

PAD = -100


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def relative_difference(a: nn.Module, b: nn.Module) -> float:
    return max(
        float((p - q).detach().abs().max() / q.detach().abs().max())
        for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def regression(n: int = 46, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=generator)
    return x, torch.stack([x[:, :2].sum(1), x[:, 2:].prod(1)], 1)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))


def big_batch_reference(
    model, optimizer, x, y, loss_fn, *, window: int, orders: list[torch.Tensor]
) -> list[list[float]]:
    """One step per ``window`` samples of each epoch's order (the last may be short): the
    mean loss over all of them, the step of one batch. Returns each epoch's window losses."""
    losses = []
    for order in orders:
        losses.append([])
        for start in range(0, len(order), window):
            rows = order[start : start + window]
            optimizer.zero_grad()
            loss = loss_fn(model(x[rows]), y[rows])
            loss.backward()
            optimizer.step()
            losses[-1].append(float(loss.detach()))
    return losses


def seeded_orders(n: int, seed: int, epochs: int) -> list[torch.Tensor]:
    return [epoch_permutation(n, seed, epoch) for epoch in range(epochs)]


@pytest.mark.parametrize("source", ["tensors", "dataloader"])
@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
        lambda m: descent.Adam(m, lr=1e-2),
    ],
    ids=["torch.SGD-momentum", "descent.Adam"],
)
def test_uneven_micro_batches_equal_one_batch_of_the_window(make_optimizer, source):
    # 46 samples in micro-batches of 4 (the last one of 2), windows of 3: per epoch three
    # windows of 12 samples and a last one of 4 + 4 + 2 = 10
    x, y = regression(46)
    model, reference = mlp(), mlp()
    trainer = SupervisedTrainer(
        make_optimizer(model), batch_size=4, epochs=3, gradient_accumulation_steps=3, seed=5
    )
    if source == "tensors":
        trainer.train(model, x, y, nn.MSELoss())
        orders = seeded_orders(46, 5, 3)
    else:  # a user's DataLoader with a seeded sampler (its own order, set_epoch each epoch)
        sampler = ResumableSampler(46, seed=11, num_replicas=1, rank=0)
        trainer.train(
            model, DataLoader(TensorDataset(x, y), batch_size=4, sampler=sampler), loss=nn.MSELoss()
        )
        orders = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            orders.append(torch.tensor(sampler.order()))
    big_batch_reference(
        reference, make_optimizer(reference), x, y, nn.MSELoss(), window=12, orders=orders
    )
    assert trainer.state.step == 3 * 4
    assert relative_difference(model, reference) <= 1e-12
    assert relative_difference(model, mlp()) > 1e-2  # it trained


def test_dividing_by_the_number_of_micro_batches_would_be_measurably_wrong():
    """The control: the common normalisation (each micro-batch's mean loss divided by the
    number of micro-batches in its window) differs from the big batch by far more than
    the tolerance above, so the test above can fail."""
    x, y = regression(46)
    naive, reference = mlp(), mlp()
    optimizer = torch.optim.SGD(naive.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(3):
        order = epoch_permutation(46, 5, epoch)
        micro = [order[i : i + 4] for i in range(0, 46, 4)]
        for start in range(0, len(micro), 3):
            window = micro[start : start + 3]
            for rows in window:
                (nn.MSELoss()(naive(x[rows]), y[rows]) / len(window)).backward()
            optimizer.step()
            optimizer.zero_grad()
    big_batch_reference(
        reference,
        torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9),
        x,
        y,
        nn.MSELoss(),
        window=12,
        orders=seeded_orders(46, 5, 3),
    )
    assert relative_difference(naive, reference) > 1e-3


# ---------------------------------------------------------------- counted targets (tokens)


def padded_tokens(n: int = 23, length: int = 7, vocabulary: int = 6, seed: int = 2):
    """Token sequences of random lengths 1..length; targets padded with -100 after each end."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocabulary, (n, length), generator=generator)
    y = torch.randint(0, vocabulary, (n, length), generator=generator)
    lengths = torch.randint(1, length + 1, (n,), generator=generator)
    y[torch.arange(length)[None, :] >= lengths[:, None]] = PAD
    return x, y


class Tagger(nn.Module):
    """Per-token class scores ``(N, C, T)`` for ``CrossEntropyLoss`` over ``(N, T)`` targets."""

    def __init__(self, vocabulary: int = 6, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocabulary, 8)
        self.mix = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, vocabulary)

    def forward(self, tokens):
        hidden = torch.tanh(self.mix(self.embed(tokens).transpose(1, 2))).transpose(1, 2)
        return self.head(hidden).transpose(1, 2)


@pytest.mark.parametrize("class_weights", [False, True])
def test_token_normalised_windows_equal_one_batch_of_all_their_tokens(class_weights):
    x, y = padded_tokens()
    weight = torch.linspace(0.5, 2.0, 6) if class_weights else None
    loss = nn.CrossEntropyLoss(ignore_index=PAD, weight=weight)
    model, reference = Tagger(), Tagger()
    trainer = SupervisedTrainer(
        descent.Adam(model, lr=1e-2),
        batch_size=3,
        epochs=2,
        gradient_accumulation_steps=3,
        normalize_by="targets",
        seed=4,
    )
    history = trainer.train(model, x, y, loss)
    # the reference: CrossEntropyLoss's own mean over every non-padding token of the window
    orders = seeded_orders(23, 4, 2)
    window_losses = big_batch_reference(
        reference, descent.Adam(reference, lr=1e-2), x, y, loss, window=9, orders=orders
    )
    assert relative_difference(model, reference) <= 1e-12
    # the epoch's loss is the mean over its tokens too (each counted with its class weight)
    for epoch, order in enumerate(orders):
        counts = []
        for start in range(0, 23, 9):
            target = y[order[start : start + 9]]
            kept = target[target != PAD]
            counts.append(float(weight[kept].sum()) if class_weights else kept.numel())
        expected = sum(c * value for c, value in zip(counts, window_losses[epoch], strict=True))
        assert history["loss"][epoch] == pytest.approx(expected / sum(counts), rel=1e-12)


def test_sample_normalisation_is_not_exact_with_padding():
    """The control: weighting micro-batches by samples when the loss counts tokens."""
    x, y = padded_tokens()
    loss = nn.CrossEntropyLoss(ignore_index=PAD)
    model, reference = Tagger(), Tagger()
    SupervisedTrainer(
        descent.Adam(model, lr=1e-2), batch_size=3, epochs=2, gradient_accumulation_steps=3, seed=4
    ).train(model, x, y, loss)
    big_batch_reference(
        reference,
        descent.Adam(reference, lr=1e-2),
        x,
        y,
        loss,
        window=9,
        orders=seeded_orders(23, 4, 2),
    )
    assert relative_difference(model, reference) > 1e-4


def test_a_callable_count_is_used_as_the_weight():
    x, y = padded_tokens()
    loss = nn.CrossEntropyLoss(ignore_index=PAD)
    model, reference = Tagger(), Tagger()
    SupervisedTrainer(
        descent.SGD(model, lr=0.5),
        batch_size=3,
        epochs=1,
        gradient_accumulation_steps=3,
        seed=4,
        normalize_by=lambda target: (target != PAD).sum(),
    ).train(model, x, y, loss)
    big_batch_reference(
        reference,
        descent.SGD(reference, lr=0.5),
        x,
        y,
        loss,
        window=9,
        orders=seeded_orders(23, 4, 1),
    )
    assert relative_difference(model, reference) <= 1e-12


class GRUTagger(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(6, 5)
        self.rnn = nn.GRU(5, 8, batch_first=True)
        self.head = nn.Linear(8, 6)

    def forward(self, tokens, hidden):
        out, hidden = self.rnn(self.embed(tokens), hidden)
        return self.head(out), hidden


@pytest.mark.parametrize("step_every", ["sequence", "chunk"])
def test_recurrent_windows_are_normalised_by_their_tokens(step_every):
    """TBPTT in chunks of 3 (7 steps: chunks of 3, 3, 1), each window's loss the mean over
    its non-padding tokens: per chunk window of 2 chunks ("chunk"), or per window of 3
    batches of sequences ("sequence"). The reference unrolls the chunks by hand and
    divides the summed token losses by the window's token count."""
    x, y = padded_tokens(n=14)
    model, reference = GRUTagger(), GRUTagger()
    accumulation = 3 if step_every == "sequence" else 2
    trainer = RecurrentTrainer(
        descent.SGD(model, lr=0.3),
        batch_size=4,
        epochs=1,
        bptt_steps=3,
        step_every=step_every,
        normalize_by="targets",
        gradient_accumulation_steps=accumulation,
        seed=6,
    )
    trainer.train(model, x, y, nn.CrossEntropyLoss(ignore_index=PAD))
    summed = nn.CrossEntropyLoss(ignore_index=PAD, reduction="sum")
    optimizer = descent.SGD(reference, lr=0.3)
    order = epoch_permutation(14, 6, 0)
    batches = [order[i : i + 4] for i in range(0, 14, 4)]
    spans = [(0, 3), (3, 6), (6, 7)]
    if step_every == "sequence":
        windows = [[(rows, spans) for rows in batches[i : i + 3]] for i in range(0, 4, 3)]
    else:  # windows of 2 chunks within a batch: (0-3, 3-6) then (6-7)
        windows = [[(rows, spans[i : i + 2])] for rows in batches for i in range(0, 3, 2)]
    carried = None  # the hidden state a batch's next chunk window starts from
    for window in windows:
        tokens = sum(
            int((y[rows][:, a:b] != PAD).sum()) for rows, chunk in window for a, b in chunk
        )
        for rows, chunk in window:
            hidden = carried if chunk[0][0] > 0 else None
            for a, b in chunk:
                out, hidden = reference(x[rows][:, a:b], hidden)
                (summed(out.flatten(0, 1), y[rows][:, a:b].flatten()) / tokens).backward()
                hidden = hidden.detach()
            carried = hidden
        optimizer.step()
        optimizer.zero_grad()
    assert trainer.state.step == len(windows)
    assert relative_difference(model, reference) <= 1e-12
    if step_every == "chunk":  # some chunk windows are all padding: they add nothing
        assert any(
            int((y[rows][:, a:b] != PAD).sum()) == 0
            for window in windows
            for rows, chunk in window
            for a, b in chunk
        )


# ---------------------------------------------------------------- adversarial


def test_adversarial_windows_equal_one_batch_of_all_their_samples():
    """WGAN-GP with two critic steps per generator step: micro-batches of 8 in windows of
    3 (46 samples, drop_last=False: windows of 24 and 8 + 8 + 6) against batches of 24
    (24 and 22), the same seeded order and noise."""
    from descent.data import gaussian_mixture

    real, _ = gaussian_mixture(46, modes=4, seed=3)
    real = real.double()

    def build():
        torch.manual_seed(0)
        g = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
        d = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
        return g, d, descent.Adam(g, lr=1e-3, betas=(0.5, 0.9)), descent.Adam(d, lr=1e-3)

    runs = []
    for batch_size, accumulation in ((8, 3), (24, 1)):
        g, d, g_opt, d_opt = build()
        trainer = AdversarialTrainer(
            g,
            d,
            g_opt,
            d_opt,
            latent_dim=3,
            batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            epochs=3,
            n_critic=2,
            loss="wgan-gp",
            drop_last=False,
            seed=1,
        )
        trainer.train(real)
        runs.append((trainer, g, d))
    (micro, g1, d1), (big, g2, d2) = runs
    assert (micro.state.d_step, micro.state.step) == (big.state.d_step, big.state.step) == (6, 3)
    assert relative_difference(g1, g2) <= 1e-12 and relative_difference(d1, d2) <= 1e-12
    assert micro.history["d_loss"] == pytest.approx(big.history["d_loss"], rel=1e-12)
    assert relative_difference(g1, build()[0]) > 1e-3


# ---------------------------------------------------------------- the pieces


def test_window_weights_are_shares_of_the_count_over_the_ranks():
    window = Window(
        first=6, batches=["a", "b", "c"], counts=[4.0, 4.0, 2.0], total=20.0, replicas=2
    )
    assert [window.weight(i) for i in (6, 7, 8)] == [0.4, 0.4, 0.2]
    assert list(window.remaining(7)) == [(7, "b"), (8, "c")]
    assert window.size == 3
    assert Window(0, ["a"], [0.0], 0.0).weight(0) == 0.0


def test_counting_targets_follows_the_loss():
    target = torch.tensor([[1, 2, PAD], [0, PAD, PAD]])
    assert count_targets(nn.CrossEntropyLoss(), target) == 3
    assert count_targets(nn.NLLLoss(ignore_index=0), target) == 5
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([0.5, 1.0, 3.0]))
    assert count_targets(weighted, target) == 0.5 + 1.0 + 3.0
    assert count_targets(nn.MSELoss(), torch.zeros(4, 3)) == 12
    # the reference: CrossEntropyLoss's mean is its summed loss over this count
    scores = torch.randn(2, 3, 3)
    total = nn.CrossEntropyLoss(weight=weighted.weight, reduction="sum")(scores, target)
    assert float(weighted(scores, target)) == pytest.approx(float(total) / 4.5, rel=1e-12)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tokens", "normalize_by='tokens'; expected 'samples', 'targets' or a callable"),
        (3, "normalize_by=3"),
    ],
)
def test_bad_normalize_by_is_refused(value, message):
    with pytest.raises(ValueError, match=message):
        SupervisedTrainer(descent.SGD(mlp(), lr=0.1), normalize_by=value)


def test_a_count_that_is_not_a_number_is_named():
    x, y = regression(8)
    model = mlp()
    trainer = SupervisedTrainer(
        descent.SGD(model, lr=0.1), batch_size=4, normalize_by=lambda target: "four"
    )
    with pytest.raises(ValueError, match=r"normalize_by returned 'four' for a batch"):
        trainer.train(model, x, y, nn.MSELoss())
