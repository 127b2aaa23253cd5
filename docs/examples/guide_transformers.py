"""descent with Hugging Face transformers: ``Trainer(optimizers=(optimizer, scheduler))``,
and a run resumed from the Trainer's checkpoint that ends where an uninterrupted run ends.

    python docs/examples/guide_transformers.py        # needs: pip install transformers

A two-layer BERT classifier built from a config (random weights; nothing downloaded)
on random token sequences. The Trainer saves the descent optimizer's and scheduler's
``state_dict()`` in each checkpoint and loads them on ``train(resume_from_checkpoint=...)``.
"""

import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import descent


class Tokens(torch.utils.data.Dataset):
    """Random sequences of 16 tokens; the label says whether token 7 occurs."""

    def __init__(self, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 50, (size, 16), generator=generator)
        self.labels = (self.ids == 7).any(1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def train(output: Path, max_steps: int, resume: bool = False) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    optimizer = descent.AdamW(model, lr=3e-3, weight_decay=0.01)
    scheduler = descent.schedules.LinearLR(
        optimizer, start_factor=1.0, end_factor=0.1, total_iters=8
    )
    arguments = TrainingArguments(
        output_dir=str(output),
        max_steps=max_steps,
        per_device_train_batch_size=16,
        save_steps=4,
        logging_steps=4,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=arguments, train_dataset=Tokens(192), optimizers=(optimizer, scheduler)
    )
    trainer.train(resume_from_checkpoint=str(output / "checkpoint-4") if resume else None)
    losses = [round(entry["loss"], 4) for entry in trainer.state.log_history if "loss" in entry]
    print(
        f"{max_steps} steps{' (resumed at step 4)' if resume else ''}: "
        f"lr {optimizer.param_groups[0]['lr']:.2e}, losses {losses}"
    )
    return model


def main(root: Path) -> None:
    uninterrupted = train(root / "a", max_steps=8)
    train(root / "b", max_steps=4)  # writes checkpoint-4
    resumed = train(root / "b", max_steps=8, resume=True)
    difference = max(
        (a - b).abs().max().item()
        for a, b in zip(resumed.parameters(), uninterrupted.parameters(), strict=True)
    )
    print(f"resumed vs uninterrupted: largest parameter difference {difference:.1e}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        main(Path(directory))
