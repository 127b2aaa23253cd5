"""EMA of weights: closed forms, warmup, swapping in and out, buffers, state dicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import descent
from descent.utils import EMA


def test_constant_decay_matches_the_closed_form() -> None:
    """avg_T = d^T p_0 + sum_{t=1..T} (1 - d) d^(T-t) p_t for values p_t set by hand."""
    param = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    decay = 0.9
    values = [torch.full((3,), float(v), dtype=torch.float64) for v in (1.0, -2.0, 5.0, 0.5)]
    with torch.no_grad():
        param.copy_(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    initial = param.detach().clone()
    ema = EMA([param], decay=decay)
    for value in values:
        with torch.no_grad():
            param.copy_(value)
        ema.update()
    steps = len(values)
    expected = decay**steps * initial + sum(
        (1 - decay) * decay ** (steps - t) * values[t - 1] for t in range(1, steps + 1)
    )
    torch.testing.assert_close(ema.averaged()[0], expected, rtol=1e-14, atol=1e-14)
    assert ema.num_updates == steps


def test_warmup_uses_tensorflows_num_updates_rule() -> None:
    param = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    ema = EMA([param], decay=0.99, warmup=True)
    expected = 0.0
    for t in range(40):
        beta = min(0.99, (1 + t) / (10 + t))
        assert ema.current_decay() == pytest.approx(beta, rel=1e-15)
        with torch.no_grad():
            param.fill_(float(t + 1))
        ema.update()
        expected = beta * expected + (1 - beta) * (t + 1)
    assert ema.averaged()[0].item() == pytest.approx(expected, rel=1e-13)
    assert EMA([param], decay=0.5, warmup=True).current_decay() == pytest.approx(0.1)


def test_decay_as_a_function_of_the_update_count() -> None:
    param = nn.Parameter(torch.zeros(1))
    ema = EMA([param], decay=lambda t: 0.0 if t == 0 else 1.0)
    with torch.no_grad():
        param.fill_(3.0)
    ema.update()
    with torch.no_grad():
        param.fill_(7.0)
    ema.update()
    assert ema.averaged()[0].item() == 3.0
    bad = EMA([param], decay=lambda t: 1.5)
    with pytest.raises(ValueError, match=r"decay\(0\)=1\.5 is invalid"):
        bad.update()


def test_average_parameters_swaps_in_and_restores_even_on_error() -> None:
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    trained = [p.detach().clone() for p in model.parameters()]
    averages = ema.named_averages()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    now = [p.detach().clone() for p in model.parameters()]
    with ema.average_parameters():
        for p, t in zip(model.parameters(), trained, strict=True):
            torch.testing.assert_close(p.detach(), t + 0.5)
        with pytest.raises(RuntimeError, match=r"update after the block"):
            ema.update()
        with pytest.raises(RuntimeError, match=r"already swapped in"), ema.average_parameters():
            pass
    for p, n in zip(model.parameters(), now, strict=True):
        assert torch.equal(p.detach(), n)
    with pytest.raises(ZeroDivisionError), ema.average_parameters():
        _ = 1 / 0
    for p, n in zip(model.parameters(), now, strict=True):
        assert torch.equal(p.detach(), n)
    assert set(averages) == {"weight", "bias"}
    ema.copy_to()
    for p, t in zip(model.parameters(), trained, strict=True):
        torch.testing.assert_close(p.detach(), t + 0.5)


def test_ema_of_a_training_run_with_batchnorm_buffers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    ema = EMA(model, decay=0.9, include_buffers=True)
    assert "1.running_mean" in ema.named_averages()
    assert "1.num_batches_tracked" not in ema.named_averages()
    opt = descent.SGD(model, lr=0.1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    history = []
    for _ in range(15):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        ema.update()
        history.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    # Reference average of the running mean from the history; it starts at the
    # running mean of a new BatchNorm, zeros.
    expected = torch.zeros(8)
    for snapshot in history:
        expected = 0.9 * expected + 0.1 * snapshot["1.running_mean"]
    torch.testing.assert_close(ema.named_averages()["1.running_mean"], expected)
    model.eval()
    with ema.average_parameters():
        averaged_output = model(x)
    assert not torch.allclose(averaged_output, model(x))


def test_state_dict_round_trip_and_validation() -> None:
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.8, warmup=True)
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(0.1)
        ema.update()
    saved = ema.state_dict()
    other = EMA(nn.Linear(3, 2), decay=0.5)
    other.load_state_dict(saved)
    assert other.num_updates == 3 and other.decay == 0.8 and other.warmup is True
    for a, b in zip(other.averaged(), ema.averaged(), strict=True):
        assert torch.equal(a, b)
    assert other.averaged()[0] is not saved["averages"][0]

    target = EMA(nn.Linear(3, 2), decay=0.5)
    before = [a.clone() for a in target.averaged()]
    bad_cases = [
        ({**saved, "averages": [saved["averages"][0]]}, r"averages \['weight', 'bias'\]"),
        (
            {**saved, "averages": [torch.zeros(2, 2), saved["averages"][1]]},
            r"average of 'weight' has shape \(2, 2\)",
        ),
        (
            {**saved, "averages": [saved["averages"][0].double(), saved["averages"][1]]},
            r"dtype torch\.float64",
        ),
        ({**saved, "num_updates": -1}, r"num_updates=-1"),
        ({**saved, "decay": 2.0}, r"decay=2\.0"),
        ({**saved, "format_version": 9}, r"format_version=9"),
        ({k: v for k, v in saved.items() if k != "names"}, r"keys"),
    ]
    for bad, match in bad_cases:
        with pytest.raises(ValueError, match=match):
            target.load_state_dict(bad)
        assert target.num_updates == 0 and target.decay == 0.5
        assert all(torch.equal(a, b) for a, b in zip(target.averaged(), before, strict=True))
    with pytest.raises(TypeError, match=r"expected a dict"):
        target.load_state_dict([])


def test_bad_arguments() -> None:
    param = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"decay=1\.5 is invalid"):
        EMA([param], decay=1.5)
    with pytest.raises(ValueError, match=r"decay=True"):
        EMA([param], decay=True)
    with pytest.raises(TypeError, match=r"warmup=1"):
        EMA([param], warmup=1)
    with pytest.raises(ValueError, match=r"parameters is empty"):
        EMA([])
    with pytest.raises(TypeError, match=r"parameter '0' has dtype torch\.int64"):
        EMA([torch.zeros(2, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"parameter '1' is given twice"):
        EMA([param, param])
    with pytest.raises(ValueError, match=r"include_buffers=True needs a module"):
        EMA([param], include_buffers=True)
    with pytest.raises(TypeError, match=r"parameter '0' has type float"):
        EMA([1.0])


def test_averages_in_float32_for_bfloat16_parameters() -> None:
    """In bfloat16, 0.999 * avg + 0.001 * p rounds back to avg; float32 averages move."""
    param = nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    low = EMA([param], decay=0.999)
    high = EMA([param], decay=0.999, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        param.fill_(2.0)
    for _ in range(100):
        low.update()
        high.update()
    assert high.averaged()[0].dtype == torch.float32
    expected = 2.0 - 0.999**100  # avg_t = 2 - 0.999^t from avg_0 = 1 with p = 2
    assert high.averaged()[0][0].item() == pytest.approx(expected, rel=1e-5)
    assert low.averaged()[0][0].item() == 1.0  # the bfloat16 average never moved
    with high.average_parameters():
        assert param.dtype == torch.bfloat16
        assert param[0].item() == pytest.approx(expected, rel=1e-2)
    assert param[0].item() == 2.0
    with pytest.raises(TypeError, match=r"dtype=torch\.int64 is invalid"):
        EMA([param], dtype=torch.int64)
