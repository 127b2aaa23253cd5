"""Choose a learning rate with the range test, then train with it.

An MLP with layer normalisation on scikit-learn's digits, AdamW with weight decay on the
weight matrices only (descent.param_groups), the learning-rate range test
(descent.train.lr_find), which leaves model and optimizer as they were, and a short
training run at the suggested rate. Writes runs/lr_find.png.

Run: python docs/examples/train_lr_find.py          (a few seconds; needs descent[demo])
"""

import torch
from sklearn.datasets import load_digits
from torch import nn

import descent

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)

torch.set_num_threads(1)  # a small network: one thread is fastest
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.LayerNorm(128), nn.ReLU(), nn.Linear(128, 10))
groups = descent.param_groups(model, weight_decay=0.05)  # prints what went where
optimizer = descent.AdamW(groups, lr=1e-3)
trainer = descent.SupervisedTrainer(optimizer, batch_size=32, epochs=5, metrics=["accuracy"])

result = descent.train.lr_find(
    trainer, model, x, y, nn.CrossEntropyLoss(), start_lr=1e-6, end_lr=10.0, steps=100
)
result.plot("runs/lr_find.png")
print(
    f"range test: {len(result.losses)} steps, {result.stopped}; suggestion "
    f"{result.suggestion:.2g} ({result.rule})"
)

for group in optimizer.param_groups:
    group["lr"] = result.suggestion
history = trainer.train(model, x, y, nn.CrossEntropyLoss(), validation_split=0.2)
print(
    f"validation accuracy {history['val_accuracy'][-1]:.2%} after {len(history.epochs)} "
    f"epochs at lr {result.suggestion:.2g}"
)
