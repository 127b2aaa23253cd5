"""RecurrentTrainer: a character-level GRU on the bundled opening of Coriolanus,
trained with truncated back-propagation through time (chunks of 16 characters).

Run: python docs/examples/train_recurrent.py   (a few seconds)
"""

import torch
from torch import nn

import descent
from descent.data import char_sequences, load_text, unigram_entropy

text = load_text()  # about 12,800 characters
x, y, vocabulary = char_sequences(text, 64)  # y[i, t] is the character after x[i, t]


class CharGRU(nn.Module):
    """The contract: model(x_chunk, hidden) -> (y_chunk, hidden)."""

    def __init__(self, vocab: int, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.rnn = nn.GRU(32, width, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, chars, hidden):
        out, hidden = self.rnn(self.embed(chars), hidden)
        return self.head(out), hidden


torch.manual_seed(0)
model = CharGRU(len(vocabulary))
trainer = descent.RecurrentTrainer(
    descent.Adam(model, lr=1e-2),
    batch_size=16,
    epochs=6,
    bptt_steps=16,  # chunk length; the hidden state is carried and detached
    step_every="chunk",  # one optimizer step per chunk ("sequence": one per batch)
    clip_grad_norm=1.0,  # the usual guard against exploding RNN gradients
    metrics=["accuracy"],
    callbacks=[descent.ProgressBar()],
)
history = trainer.train(model, x, y, nn.CrossEntropyLoss(), validation_split=0.1)

print(
    f"held-out loss {history['val_loss'][-1]:.3f} nats/char; "
    f"a unigram model scores {unigram_entropy(text):.3f}"
)
