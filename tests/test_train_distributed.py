"""Trainers under torch.distributed: 2 processes with batch b equal 1 process with batch 2b.

One ``torchrun`` launch (``python -m torch.distributed.run --nproc_per_node=2``, gloo on
the CPU) runs a SupervisedTrainer in float64 in several configurations: plain, with
gradient accumulation, with accumulation and ``zero_redundancy=True``; and a run
interrupted after a checkpoint and resumed with the same world size. This test process
trains the single-process references with twice the batch size and compares.
Also checked: DDP all-reduces once per optimizer step (``no_sync()`` on the other
micro-batches, counted by a communication hook), the progress bar draws on rank 0
only, training metrics are averaged over the ranks, and a checkpoint of 2 processes
refuses to resume in 1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import descent
from descent.train import SupervisedTrainer

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="needs torch.distributed"
)

N, BATCH, EPOCHS = 64, 4, 2
CONFIGS = {"plain": (1, False), "accumulate": (3, False), "zero": (3, True)}

COMMON = r'''
import torch
from torch import nn
import descent

N, BATCH, EPOCHS = 64, 4, 2


def data():
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(N, 6, generator=generator, dtype=torch.float64)
    y = torch.stack([x[:, :3].sum(1), x[:, 3:].prod(1)], 1) + 0.1 * torch.randn(
        N, 2, generator=generator, dtype=torch.float64)
    return x, y


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    optimizer = descent.Adam(model, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    return model, optimizer, scheduler


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 8, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x, hidden):
        out, hidden = self.gru(x, hidden)
        return self.head(out), hidden


def sequences():
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(N, 10, 3, generator=generator, dtype=torch.float64)
    return x, 0.3 * x.cumsum(1)[..., :1]


def uneven_data():
    """46 samples: 23 per rank, in micro-batches of 4, 4, 4, 4, 4 and 3."""
    generator = torch.Generator().manual_seed(13)
    x = torch.randn(46, 6, generator=generator, dtype=torch.float64)
    return x, torch.stack([x[:, :3].sum(1), x[:, 3:].prod(1)], 1)


def padded_tokens():
    """30 token sequences of random lengths, targets padded with -100: the ranks' batches
    hold different numbers of tokens."""
    generator = torch.Generator().manual_seed(14)
    x = torch.randint(0, 5, (30, 6), generator=generator)
    y = torch.randint(0, 5, (30, 6), generator=generator)
    lengths = torch.randint(1, 7, (30,), generator=generator)
    y[torch.arange(6)[None, :] >= lengths[:, None]] = -100
    return x, y


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, tokens):
        return self.head(torch.tanh(self.embed(tokens))).transpose(1, 2)


def build_tokens():
    torch.manual_seed(0)
    model = Tokens().double()
    return model, descent.Adam(model, lr=1e-2)


def build_recurrent():
    torch.manual_seed(0)
    model = Tagger().double()
    optimizer = descent.RMSprop(model, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    return model, optimizer, scheduler
'''

SCRIPT = (
    COMMON
    + r"""
import json, sys
from pathlib import Path
from safetensors.torch import save_file
from descent import distributed as dist
from descent.data import gaussian_mixture
from descent.train import (AdversarialTrainer, Callback, ProgressBar, RecurrentTrainer,
                           SupervisedTrainer)

torch.set_num_threads(1)
CONFIGS = {"plain": (1, False), "accumulate": (3, False), "zero": (3, True)}


class Interrupt(Callback):
    def __init__(self, active):
        self.active = active

    def on_batch_end(self, trainer, batch, logs):
        if self.active and (trainer.state.epoch, batch) == (1, 2):
            raise KeyboardInterrupt


def run(name, accumulation, zero, out, rank, **options):
    model, optimizer, scheduler = build()
    bar = open(out / f"bar-{name}-{rank}.txt", "w")
    trainer = SupervisedTrainer(optimizer, batch_size=BATCH, epochs=EPOCHS,
                                gradient_accumulation_steps=accumulation, scheduler=scheduler,
                                zero_redundancy=zero, callbacks=[ProgressBar(file=bar)],
                                **options)
    x, y = data()
    ddp = trainer.wrap_model(model)
    reductions = []

    def counting_hook(state, bucket):
        reductions.append(bucket.index())
        work = torch.distributed.all_reduce(bucket.buffer(), async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0] / 2)

    ddp.register_comm_hook(None, counting_hook)
    history = trainer.train(model, x, y, nn.MSELoss())
    bar.close()
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  out / f"{name}.safetensors")
        report = {"loss": history["loss"], "steps": trainer.state.step,
                  "reductions": len(reductions), "batches": trainer.batches_per_epoch,
                  "optimizer": type(trainer.optimizer).__name__}
        (out / f"{name}.json").write_text(json.dumps(report))


def run_uneven(out, rank):
    model, optimizer, scheduler = build()
    trainer = SupervisedTrainer(optimizer, batch_size=BATCH, epochs=EPOCHS,
                                gradient_accumulation_steps=3, scheduler=scheduler)
    history = trainer.train(model, *uneven_data(), nn.MSELoss())
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  out / "uneven.safetensors")
        (out / "uneven.json").write_text(json.dumps({"loss": history["loss"]}))


def run_tokens(out, rank):
    model, optimizer = build_tokens()
    trainer = SupervisedTrainer(optimizer, batch_size=3, epochs=EPOCHS,
                                gradient_accumulation_steps=2, normalize_by="targets")
    x, y = padded_tokens()
    tokens = []

    class Count(Callback):
        def on_batch_begin(self, trainer, batch):
            window = trainer.window
            tokens.append(window.counts[batch - window.first])

    trainer.callbacks.append(Count())
    history = trainer.train(model, x, y, nn.CrossEntropyLoss(ignore_index=-100))
    gathered = dist.all_gather_object(tokens)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  out / "tokens.safetensors")
        (out / "tokens.json").write_text(json.dumps({"loss": history["loss"],
                                                     "tokens": gathered}))


def run_recurrent(out, rank):
    model, optimizer, scheduler = build_recurrent()
    trainer = RecurrentTrainer(optimizer, batch_size=BATCH, epochs=EPOCHS, bptt_steps=4,
                               gradient_accumulation_steps=2, step_every="sequence",
                               scheduler=scheduler)
    x, y = sequences()
    trainer.train(model, x, y, nn.MSELoss())
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  out / "recurrent.safetensors")


def run_adversarial(out, rank, directory, crash):
    points, _ = gaussian_mixture(64, modes=4, seed=2)
    torch.manual_seed(rank)  # different initial networks: the trainer starts from rank 0's
    g = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    d = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    trainer = AdversarialTrainer(g, d, descent.Adam(g, lr=2e-3), descent.Adam(d, lr=2e-3),
                                 latent_dim=4, batch_size=4, epochs=2, n_critic=2,
                                 gradient_accumulation_steps=2, loss="wgan-gp",
                                 callbacks=[Interrupt(crash)],
                                 checkpoint_dir=out / directory, checkpoint_every=2)
    trainer.train(points, resume=True)
    return trainer


def run_adversarial_runs(out, rank):
    trainer = run_adversarial(out, rank, "ckpt-gan", False)
    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    try:
        run_adversarial(out, rank, "ckpt-gan-resumed", True)
        raise AssertionError("not interrupted")
    except KeyboardInterrupt:
        pass
    resumed = run_adversarial(out, rank, "ckpt-gan-resumed", False)
    resumed_flat = torch.cat([p.detach().flatten() for p in resumed.model.parameters()])
    gathered = dist.all_gather_object((flat, resumed_flat))
    if rank == 0:
        save_file({f"{kind}{r}": pair[i] for r, pair in enumerate(gathered)
                   for i, kind in enumerate(("rank", "resumed"))}, out / "gan.safetensors")
        (out / "gan.json").write_text(json.dumps({"steps": trainer.state.step,
                                                  "d_steps": trainer.state.d_step}))


def main():
    out = Path(sys.argv[1])
    assert dist.init_process_group()
    rank = dist.get_rank()
    for name, (accumulation, zero) in CONFIGS.items():
        run(name, accumulation, zero, out, rank)
    run_recurrent(out, rank)
    run_uneven(out, rank)
    run_tokens(out, rank)
    model, optimizer, _ = build()
    model(torch.zeros(1, 6, dtype=torch.float64)).sum().backward()
    optimizer.step()
    try:
        SupervisedTrainer(optimizer, zero_redundancy=True).train(model, *data(), nn.MSELoss())
    except ValueError as error:
        if rank == 0:
            (out / "zero-error.txt").write_text(str(error))
    run_adversarial_runs(out, rank)
    # interrupted after a checkpoint, resumed by new objects in the same processes
    for zero in (False, True):
        model, optimizer, scheduler = build()
        options = dict(batch_size=BATCH, epochs=EPOCHS, gradient_accumulation_steps=3,
                       scheduler=scheduler, zero_redundancy=zero,
                       checkpoint_dir=out / f"ckpt-{zero}", checkpoint_every=2)
        x, y = data()
        trainer = SupervisedTrainer(optimizer, callbacks=[Interrupt(True)], **options)
        try:
            trainer.train(model, x, y, nn.MSELoss(), resume=True)
            raise AssertionError("not interrupted")
        except KeyboardInterrupt:
            pass
        model, optimizer, scheduler = build()
        options["scheduler"] = scheduler
        trainer = SupervisedTrainer(optimizer, callbacks=[Interrupt(False)], **options)
        trainer.train(model, x, y, nn.MSELoss(), resume=True)
        if rank == 0:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                      out / f"resumed-{zero}.safetensors")
    dist.destroy_process_group()


main()
"""
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Run the script under torchrun with 2 processes; return its output directory."""
    out = tmp_path_factory.mktemp("ddp")
    script = out / "script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(script),
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def single_process(accumulation: int) -> tuple[nn.Module, SupervisedTrainer, dict]:
    """The reference: one process, batch 2b, same seeds."""
    namespace: dict = {}
    exec(COMMON, namespace)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, optimizer, scheduler = namespace["build"]()
        trainer = SupervisedTrainer(
            optimizer,
            batch_size=2 * BATCH,
            epochs=EPOCHS,
            gradient_accumulation_steps=accumulation,
            scheduler=scheduler,
        )
        x, y = namespace["data"]()
        trainer.train(model, x, y, nn.MSELoss())
    finally:
        torch.set_num_threads(threads)
    return model, trainer, namespace


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest ``max|a - b| / max|b|`` over the tensors."""
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in b)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_processes_with_batch_b_equal_one_with_batch_2b(launched, name):
    accumulation, zero = CONFIGS[name]
    model, trainer, _ = single_process(accumulation)
    reference = {k: v for k, v in model.state_dict().items()}
    final = load_file(launched / f"{name}.safetensors")
    assert sorted(final) == sorted(reference)
    assert max_relative_difference(final, reference) <= 1e-12
    # the parameters moved: the comparison is not between two untrained models
    namespace: dict = {}
    exec(COMMON, namespace)
    initial = namespace["build"]()[0].state_dict()
    assert max_relative_difference(final, initial) > 1e-2
    report = json.loads((launched / f"{name}.json").read_text())
    assert report["steps"] == trainer.state.step
    assert report["batches"] == trainer.batches_per_epoch  # 32 samples per rank, batch 4
    # training metrics averaged over the ranks: the single process's sample means
    assert report["loss"] == pytest.approx(trainer.history["loss"], rel=1e-12)
    assert report["optimizer"] == ("ZeroRedundancyOptimizer" if zero else "Adam")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_are_all_reduced_once_per_optimizer_step(launched, name):
    """no_sync() on the micro-batches inside a window: one all-reduce per step (the model
    fits in one DDP bucket), not one per micro-batch."""
    report = json.loads((launched / f"{name}.json").read_text())
    windows = -(-report["batches"] // CONFIGS[name][0])
    assert report["steps"] == EPOCHS * windows
    assert report["reductions"] == report["steps"]


def test_recurrent_trainer_two_processes_equal_one_with_twice_the_batch(launched):
    """TBPTT (chunks of 4, one step per 2 batches of sequences) under DDP: rank means of
    the (batch x time)-merged loss average to the single process's mean."""
    namespace: dict = {}
    exec(COMMON, namespace)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, optimizer, scheduler = namespace["build_recurrent"]()
        trainer = descent.RecurrentTrainer(
            optimizer,
            batch_size=2 * BATCH,
            epochs=EPOCHS,
            bptt_steps=4,
            gradient_accumulation_steps=2,
            step_every="sequence",
            scheduler=scheduler,
        )
        x, y = namespace["sequences"]()
        trainer.train(model, x, y, nn.MSELoss())
    finally:
        torch.set_num_threads(threads)
    final = load_file(launched / "recurrent.safetensors")
    assert max_relative_difference(final, model.state_dict()) <= 1e-12
    initial = namespace["build_recurrent"]()[0].state_dict()
    assert max_relative_difference(final, initial) > 1e-2


def test_adversarial_trainer_keeps_the_ranks_in_step(launched):
    """The AdversarialTrainer averages gradients with descent.distributed (no DDP), in
    windows of 2 micro-batches, and starts from rank 0's networks: both ranks end with
    the same parameters."""
    gathered = load_file(launched / "gan.safetensors")
    assert torch.equal(gathered["rank0"], gathered["rank1"])
    report = json.loads((launched / "gan.json").read_text())
    assert report == {"steps": 4, "d_steps": 8}  # 32 samples per rank, windows of 2 x 4
    assert descent.checkpoint.CheckpointManager(launched / "ckpt-gan").records()


def test_uneven_micro_batches_on_two_processes_equal_one_with_the_combined_batches(launched):
    """46 samples: each rank's windows of 3 micro-batches hold 4 + 4 + 4 and 4 + 4 + 3
    samples; one process with batches of 8 holds 8 + 8 + 8 and 8 + 8 + 6."""
    namespace: dict = {}
    exec(COMMON, namespace)
    model, optimizer, scheduler = namespace["build"]()
    trainer = SupervisedTrainer(
        optimizer,
        batch_size=2 * BATCH,
        epochs=EPOCHS,
        gradient_accumulation_steps=3,
        scheduler=scheduler,
    )
    history = trainer.train(model, *namespace["uneven_data"](), nn.MSELoss())
    final = load_file(launched / "uneven.safetensors")
    assert max_relative_difference(final, model.state_dict()) <= 1e-12
    assert max_relative_difference(final, namespace["build"]()[0].state_dict()) > 1e-2
    report = json.loads((launched / "uneven.json").read_text())
    assert report["loss"] == pytest.approx(history["loss"], rel=1e-12)


def test_token_counts_are_summed_over_the_ranks(launched):
    """Padded sequences, the loss normalised by non-padding tokens: the ranks' batches hold
    different numbers of tokens, and the window's count is their sum, so 2 processes
    with batch 3 equal 1 process with batch 6 (parameters and epoch losses)."""
    namespace: dict = {}
    exec(COMMON, namespace)
    model, optimizer = namespace["build_tokens"]()
    trainer = SupervisedTrainer(
        optimizer,
        batch_size=6,
        epochs=EPOCHS,
        gradient_accumulation_steps=2,
        normalize_by="targets",
    )
    history = trainer.train(
        model, *namespace["padded_tokens"](), nn.CrossEntropyLoss(ignore_index=-100)
    )
    final = load_file(launched / "tokens.safetensors")
    assert max_relative_difference(final, model.state_dict()) <= 1e-12
    assert max_relative_difference(final, namespace["build_tokens"]()[0].state_dict()) > 1e-2
    report = json.loads((launched / "tokens.json").read_text())
    assert report["loss"] == pytest.approx(history["loss"], rel=1e-12)
    assert report["tokens"][0] != report["tokens"][1]  # the ranks' counts differ


def test_adversarial_trainer_resumes_exactly_across_processes(launched):
    """WGAN-GP on 2 ranks interrupted mid-epoch and resumed: each rank's own noise stream
    comes back from the checkpoint, and both ranks end as the uninterrupted run."""
    gathered = load_file(launched / "gan.safetensors")
    for rank in range(2):
        assert torch.equal(gathered[f"resumed{rank}"], gathered["rank0"])


def test_progress_bar_on_rank_0_only(launched):
    for name in CONFIGS:
        assert "epoch 2/2" in (launched / f"bar-{name}-0.txt").read_text()
        assert (launched / f"bar-{name}-1.txt").read_text() == ""


@pytest.mark.parametrize("zero", [False, True])
def test_interrupted_distributed_run_resumes_exactly(launched, zero):
    """Interrupted mid-epoch, resumed from the checkpoint with the same world size: the
    parameters equal the uninterrupted 2-process run bit for bit (ZeRO state
    consolidated on save, re-sharded on load)."""
    resumed = load_file(launched / f"resumed-{zero}.safetensors")
    uninterrupted = load_file(launched / f"{'zero' if zero else 'accumulate'}.safetensors")
    for key, tensor in uninterrupted.items():
        assert torch.equal(resumed[key], tensor), key
    manager = descent.checkpoint.CheckpointManager(launched / f"ckpt-{zero}")
    assert manager.records(), "no checkpoint was written"


def test_a_checkpoint_of_two_processes_does_not_resume_in_one(launched, tmp_path):
    _, _, namespace = single_process(1)
    model, optimizer, scheduler = namespace["build"]()
    trainer = SupervisedTrainer(
        optimizer,
        batch_size=BATCH,
        epochs=EPOCHS,
        gradient_accumulation_steps=3,
        scheduler=scheduler,
        checkpoint_dir=launched / "ckpt-False",
        checkpoint_every=2,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = namespace["data"]()
    with pytest.raises(ValueError, match=r"written by 2 process\(es\), this run has 1"):
        trainer.train(model, x, y, nn.MSELoss(), resume=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.state.step == 0 and not optimizer.state


def test_the_readme_example_runs_under_torchrun(tmp_path):
    """``torchrun --standalone --nproc-per-node=2 docs/examples/train_ddp.py --zero``, as the
    README shows it (2 epochs here), trains, checkpoints, and reports on rank 0 only."""
    pytest.importorskip("sklearn")
    example = Path(__file__).resolve().parent.parent / "docs" / "examples" / "train_ddp.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(example),
        "--epochs",
        "2",
        "--zero",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = [line for line in done.stdout.splitlines() if "validation accuracy" in line]
    assert len(reports) == 1 and reports[0].startswith("2 process(es)")
    assert "after 2 epochs, 46 optimizer steps" in reports[0]
    assert [r.step for r in descent.checkpoint.CheckpointManager(tmp_path / "ckpt").records()] == [
        40,
        46,
    ]


@pytest.mark.parametrize("kind", ["tensors", "dataset"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_rank_shards_make_up_the_single_process_batches(kind, shuffle):
    """Rank r's k-th batch of b and the other ranks' make up one process's k-th batch of
    R*b, for tensors and map-style datasets (R = 3, 10 samples: padded to 12 with the
    epoch's first two samples)."""
    from descent.train.data import make_batches

    x = torch.arange(10.0).unsqueeze(1)
    y = torch.arange(10)
    source = torch.utils.data.TensorDataset(x, y) if kind == "dataset" else x
    targets = None if kind == "dataset" else y

    def batches(batch_size: int, replicas: int, rank: int) -> list[list[int]]:
        made = make_batches(
            "test",
            source,
            targets,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=4,
            num_replicas=replicas,
            rank=rank,
        )
        return [batch[1].tolist() for batch in made.epoch(2)]

    single = batches(6, 1, 0)
    shards = [batches(2, 3, rank) for rank in range(3)]
    assert all(len(shard) == 2 for shard in shards)  # ceil(10 / 3) = 4 samples, batches of 2
    for k, whole in enumerate(single):
        together = sorted(index for shard in shards for index in shard[k])
        expected = sorted(whole + single[0][: 6 - len(whole)])  # padded with the first
        assert together == expected


def test_zero_redundancy_refuses_an_optimizer_with_state(launched):
    message = (launched / "zero-error.txt").read_text()
    assert "zero_redundancy=True shards optimizer 'optimizer'" in message
    assert "already has state" in message


def test_in_one_process_zero_redundancy_changes_nothing():
    """Without a process group the trainer is the single-process one: no DDP wrapper, no
    ZeRO wrapper, rank 0 is the main process, the same parameters."""
    results = []
    for zero in (False, True):
        namespace: dict = {}
        exec(COMMON, namespace)
        model, optimizer, scheduler = namespace["build"]()
        trainer = SupervisedTrainer(
            optimizer, batch_size=8, epochs=1, scheduler=scheduler, zero_redundancy=zero
        )
        trainer.train(model, *namespace["data"](), nn.MSELoss())
        assert trainer.optimizer is optimizer and trainer.wrap_model(model) is model
        assert trainer.is_main_process
        results.append(model.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
