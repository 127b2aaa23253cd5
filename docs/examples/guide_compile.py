"""descent with ``torch.compile``: a compiled model, and a whole compiled training step with
the optimizer's step inside it, both equal to the same training without the compiler.

    python docs/examples/guide_compile.py                        # inductor (needs a C++ compiler)
    python docs/examples/guide_compile.py --backend aot_eager    # no code generation, faster

The optimizer's step is left out of the compiled graph (descent's engine runs it as it
runs outside the compiler, with its own fused or generated kernels), so compiling a
function that calls ``optimizer.step()`` traces the forward and backward passes and
runs the step as it is; no recompilation happens when a scheduler changes the
learning rate.
"""

import argparse

import torch
from torch import nn

import descent


def model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 1))
    return model, descent.AdamW(model, lr=1e-2, weight_decay=0.01)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (x, x[:, :4].sum(1, keepdim=True)) for x in torch.randn(10, 32, 16, generator=generator)
    ]


def train(compile_model: bool, compile_step: bool, backend: str) -> nn.Module:
    model, optimizer = model_and_optimizer()
    scheduler = descent.schedules.StepLR(optimizer, step_size=3, gamma=0.5)
    forward = torch.compile(model, backend=backend) if compile_model else model

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.mse_loss(forward(x), y)
        loss.backward()
        optimizer.step()  # runs outside the graph, as it does without the compiler
        optimizer.zero_grad()
        return loss

    step = torch.compile(train_step, backend=backend) if compile_step else train_step
    for x, y in batches():
        step(x, y)
        scheduler.step()  # a new lr each 3 steps: no recompilation
    return model


def largest_difference(a: nn.Module, b: nn.Module) -> float:
    return max(
        (p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def main(backend: str = "inductor") -> None:
    eager = train(compile_model=False, compile_step=False, backend=backend)
    compiled_model = train(compile_model=True, compile_step=False, backend=backend)
    compiled_step = train(compile_model=False, compile_step=True, backend=backend)
    print(f"backend {backend}")
    print(
        f"compiled model vs eager: largest parameter difference "
        f"{largest_difference(compiled_model, eager):.1e}"
    )
    print(
        f"compiled training step vs eager: largest parameter difference "
        f"{largest_difference(compiled_step, eager):.1e}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="inductor", help="torch.compile's backend")
    main(parser.parse_args().backend)
