"""Migrating from torch.optim: change the import, keep the checkpoints.

    python docs/examples/guide_migrate.py

1. The same code with ``descent.AdamW`` in place of ``torch.optim.AdamW`` follows the
   same trajectory (same argument names, defaults and results).
2. A live optimizer moves between the libraries mid-run, state and all:
   ``descent.interop.from_torch`` and ``to_torch``.
3. A state dict saved by one library loads into the other's optimizer after
   ``descent.interop.convert_state_dict``; torch's own state dicts also load into
   descent's optimizers directly.
"""

import torch
from torch import nn

import descent
from descent.interop import convert_state_dict, from_torch, to_torch


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)).double()


BATCHES = [
    (x, x[:, :3].sum(1, keepdim=True))
    for x in torch.randn(20, 16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
]


def train(net: nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> None:
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        optimizer.step()


def difference(a: nn.Module, b: nn.Module) -> float:
    return max(
        ((p - q).abs().max() / q.abs().max()).item()
        for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def main() -> None:
    options = {"lr": 1e-2, "weight_decay": 0.01}

    # the reference: 20 steps of torch.optim.AdamW
    reference = model()
    train(reference, torch.optim.AdamW(reference.parameters(), **options), BATCHES)
    print(
        f"torch.optim.AdamW, 20 steps: the parameters moved by up to "
        f"{difference(reference, model()):.1e} (relative)"
    )

    # 1. the import changed, nothing else
    net = model()
    train(net, descent.AdamW(net.parameters(), **options), BATCHES)
    print(
        f"descent.AdamW vs torch.optim.AdamW: largest relative difference "
        f"{difference(net, reference):.1e}"
    )

    # 2. 10 steps with torch, then the same optimizer as descent's for 10 more (and back)
    net = model()
    torch_opt = torch.optim.AdamW(net.parameters(), **options)
    train(net, torch_opt, BATCHES[:10])
    opt = from_torch(torch_opt)  # descent.AdamW, state copied
    train(net, opt, BATCHES[10:15])
    train(net, to_torch(opt), BATCHES[15:])  # and back to torch.optim.AdamW
    print(
        f"switched libraries twice mid-run: largest relative difference "
        f"{difference(net, reference):.1e}"
    )

    # 3. a torch checkpoint resumed by descent, and a descent checkpoint resumed by torch
    net = model()
    torch_opt = torch.optim.AdamW(net.parameters(), **options)
    train(net, torch_opt, BATCHES[:10])
    saved = {"model": net.state_dict(), "optimizer": torch_opt.state_dict()}
    net = model()
    net.load_state_dict(saved["model"])
    opt = descent.AdamW(net.parameters(), **options)
    opt.load_state_dict(convert_state_dict(saved["optimizer"], opt))
    train(net, opt, BATCHES[10:15])
    saved = {"model": net.state_dict(), "optimizer": opt.state_dict()}
    net = model()
    net.load_state_dict(saved["model"])
    torch_opt = torch.optim.AdamW(net.parameters(), **options)
    torch_opt.load_state_dict(convert_state_dict(saved["optimizer"], torch_opt))
    train(net, torch_opt, BATCHES[15:])
    print(
        f"checkpoints across libraries: largest relative difference "
        f"{difference(net, reference):.1e}"
    )


if __name__ == "__main__":
    main()
