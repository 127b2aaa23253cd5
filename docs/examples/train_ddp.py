"""SupervisedTrainer across processes with torchrun, checkpointed and resumable.

An MLP on scikit-learn's digits. Run it on 2 CPU processes (gloo), on every GPU of the
machine (NCCL), or in one plain process; the script is the same:

    torchrun --standalone --nproc-per-node=2 docs/examples/train_ddp.py
    torchrun --standalone --nproc-per-node=2 docs/examples/train_ddp.py --zero
    torchrun --standalone --nproc-per-node=gpu docs/examples/train_ddp.py
    python docs/examples/train_ddp.py

Each process trains on its share of every epoch's seeded order with ``--batch-size``
samples per batch (2 processes with 16 take the steps one process takes with 32), the
gradients are averaged once per optimizer step, metrics are averaged over the
processes, and rank 0 alone draws the progress bar and writes the checkpoints.
``--zero`` shards the optimizer state over the processes (ZeroRedundancyOptimizer).

Stop it at any moment (Ctrl-C, ``kill -9``, a pre-empted machine) and run the same
command again: it continues from the latest checkpoint in ``--checkpoint-dir`` exactly
where it was, with the same number of processes. Delete that directory to start over.
Needs descent[demo] (scikit-learn, tqdm).
"""

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import descent
from descent import distributed as dist


def main(args: argparse.Namespace) -> None:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)

    torch.manual_seed(0)  # the same initial model everywhere (DDP also copies rank 0's)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))
    optimizer = descent.AdamW(model, lr=3e-3, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.98)
    trainer = descent.SupervisedTrainer(
        optimizer,
        batch_size=args.batch_size,
        epochs=args.epochs,
        gradient_accumulation_steps=2,
        scheduler=scheduler,
        metrics=["accuracy"],
        callbacks=[descent.ProgressBar()],
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=10,
        keep_last=2,
        checkpoint_monitor="val_accuracy",
        checkpoint_mode="max",
        zero_redundancy=args.zero,
    )
    history = trainer.train(model, x, y, nn.CrossEntropyLoss(), validation_split=0.2, resume=True)
    if dist.is_main_process():
        print(
            f"{dist.get_world_size()} process(es): validation accuracy "
            f"{history['val_accuracy'][-1]:.2%} after {len(history.epochs)} epochs, "
            f"{trainer.state.step} optimizer steps; checkpoints in {args.checkpoint_dir}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--checkpoint-dir", default="runs/ddp-checkpoints")
    parser.add_argument(
        "--zero", action="store_true", help="shard the optimizer state (ZeroRedundancyOptimizer)"
    )
    try:
        main(parser.parse_args())  # returns, so the DDP model is freed before the group
    finally:
        dist.destroy_process_group()
