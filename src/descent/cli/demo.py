"""``descent demo``: several descent optimizers on scikit-learn's bundled digits data."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

import descent

OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "SGD": lambda m: descent.SGD(m, lr=0.1, momentum=0.9, nesterov=True),
    "Adam": lambda m: descent.Adam(m, lr=1e-3),
    "AdamW": lambda m: descent.AdamW(m, lr=1e-3, weight_decay=1e-2),
    "RMSprop": lambda m: descent.RMSprop(m, lr=1e-3),
    "Adagrad": lambda m: descent.Adagrad(m, lr=3e-2),
    "NAdam": lambda m: descent.NAdam(m, lr=1e-3),
    "RAdam": lambda m: descent.RAdam(m, lr=1e-3),
    "Adamax": lambda m: descent.Adamax(m, lr=2e-3),
    "Signum": lambda m: descent.SignSGD(m, lr=1e-3, momentum=0.9),
    "Lion": lambda m: descent.Lion(m, lr=1e-4, weight_decay=1e-2),
}


def load_digits(seed: int) -> tuple[torch.Tensor, ...]:
    """The 8x8 digits (1,797 images, bundled with scikit-learn), scaled, split 80/20."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as error:
        raise SystemExit("descent demo needs scikit-learn: pip install 'descent[demo]'") from error
    data = sk_load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def make_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def train_one(name: str, data: tuple[torch.Tensor, ...], epochs: int, seed: int,
              batch_size: int = 32) -> tuple[float, float, float]:
    """Train a fresh MLP with optimizer ``name``; return (train loss, test accuracy, seconds)."""
    x_train, y_train, x_test, y_test = data
    model = make_mlp(seed)
    optimizer = OPTIMIZERS[name](model)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for begin in range(0, len(order), batch_size):
            index = order[begin:begin + batch_size]
            optimizer.zero_grad()
            loss_fn(model(x_train[index]), y_train[index]).backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        train_loss = loss_fn(model(x_train), y_train).item()
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return train_loss, accuracy, seconds


def run_demo(epochs: int = 15, seed: int = 0, optimizers: Sequence[str] | None = None) -> int:
    names = list(optimizers or OPTIMIZERS)
    unknown = [name for name in names if name not in OPTIMIZERS]
    if unknown:
        raise SystemExit(f"descent demo: unknown optimizers {unknown}; choose from "
                         f"{', '.join(OPTIMIZERS)}")
    data = load_digits(seed)
    print(f"descent {descent.__version__} demo: MLP 64-128-10 on digits "
          f"({len(data[0])} train / {len(data[2])} test images), {epochs} epochs, batch 32")
    print(f"{'optimizer':<10} {'train loss':>10} {'test acc':>9} {'time (s)':>9}")
    for name in names:
        loss, accuracy, seconds = train_one(name, data, epochs, seed)
        print(f"{name:<10} {loss:>10.4f} {accuracy:>9.2%} {seconds:>9.2f}")
    return 0
