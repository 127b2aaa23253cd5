"""SupervisedTrainer: an MLP on scikit-learn's digits, with accumulation, a schedule,
validation, early stopping, a CSV log and a plot of the curves.

Run: python docs/examples/train_supervised.py   (a few seconds; needs descent[demo])
"""

import torch
from sklearn.datasets import load_digits
from torch import nn

import descent
from descent.schedules import OneCycleLR

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = descent.AdamW(model, lr=3e-3, weight_decay=1e-2)
epochs, batch_size, accumulation = 12, 16, 2  # steps on 32 samples, in 2 halves
steps_per_epoch = -(-int(0.8 * len(x)) // batch_size // accumulation)
scheduler = OneCycleLR(
    optimizer, max_lr=3e-3, total_steps=epochs * steps_per_epoch + 1, cycle_momentum=False
)

trainer = descent.SupervisedTrainer(
    optimizer,
    batch_size=batch_size,
    epochs=epochs,
    gradient_accumulation_steps=accumulation,
    scheduler=scheduler,
    clip_grad_norm=5.0,
    metrics=["accuracy"],
    callbacks=[
        descent.ProgressBar(),
        descent.LRMonitor(),
        descent.EarlyStopping("val_loss", patience=3, restore_best_weights=True),
        descent.CSVLogger("runs/digits.csv"),
    ],
)
history = trainer.train(model, x, y, nn.CrossEntropyLoss(), validation_split=0.2)

print(
    f"validation accuracy {history['val_accuracy'][-1]:.2%} after {len(history.epochs)} "
    f"epochs, {trainer.state.step} optimizer steps"
)
history.plot("runs/digits.png")  # returns the matplotlib figure, saved as a PNG
print("curves: runs/digits.png")
