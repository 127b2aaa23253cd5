"""A 2-D mixture of Gaussians with its means on a ring."""

from __future__ import annotations

import math

import torch


def ring_centers(modes: int = 8, radius: float = 2.0) -> torch.Tensor:
    """The ``modes`` means of the mixture, evenly spaced on a circle: shape ``(modes, 2)``.

    Mode ``k`` sits at angle :math:`2\\pi k / \\text{modes}`.

    >>> ring_centers(4, 1.0).round(decimals=6)
    tensor([[ 1.,  0.],
            [ 0.,  1.],
            [-1.,  0.],
            [-0., -1.]])
    """
    if isinstance(modes, bool) or not isinstance(modes, int) or modes < 1:
        raise ValueError(f"ring_centers: modes={modes!r}; expected a positive integer")
    if not isinstance(radius, int | float) or not radius > 0 or not math.isfinite(radius):
        raise ValueError(f"ring_centers: radius={radius!r}; expected a positive number")
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def gaussian_mixture(
    n: int, modes: int = 8, radius: float = 2.0, std: float = 0.05, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of an equal-weight mixture of isotropic Gaussians on a ring.

    Returns ``(points, labels)``: float32 points ``(n, 2)`` and the int64 index of
    the mode each was drawn from. Mode ``k`` has mean :func:`ring_centers` ``[k]`` and
    standard deviation ``std`` in each coordinate. Deterministic given ``seed``.

    >>> points, labels = gaussian_mixture(1000, modes=8, seed=0)
    >>> points.shape, int(labels.max())
    (torch.Size([1000, 2]), 7)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"gaussian_mixture: n={n!r}; expected a positive integer")
    if not isinstance(std, int | float) or not std > 0 or not math.isfinite(std):
        raise ValueError(f"gaussian_mixture: std={std!r}; expected a positive number")
    centers = ring_centers(modes, radius)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(modes, (n,), generator=generator)
    noise = torch.randn(n, 2, generator=generator) * std
    return centers[labels] + noise, labels
