"""A bundled public-domain text and character-level training pairs cut from it."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from importlib import resources

import torch

TEXTS = {"coriolanus": "coriolanus.txt"}


def load_text(name: str = "coriolanus") -> str:
    """A bundled text: ``"coriolanus"``, the opening of Shakespeare's *Coriolanus*
    (public domain; about 12,000 characters of verse and dialogue)."""
    if name not in TEXTS:
        raise ValueError(f"load_text: name={name!r}; bundled texts are {sorted(TEXTS)}")
    return resources.files(__package__).joinpath(TEXTS[name]).read_text(encoding="utf-8")


class CharVocabulary:
    """The characters of a text, each mapped to an index (sorted by code point).

    >>> vocab = CharVocabulary("hello")
    >>> len(vocab), vocab.encode("hole").tolist(), vocab.decode([3, 1])
    (4, [1, 3, 2, 0], 'oh')
    """

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text:
            raise ValueError("CharVocabulary: text must be a non-empty str")
        self.chars = sorted(set(text))
        self.index = {char: i for i, char in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """``text`` as an int64 tensor of indices."""
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise ValueError(
                f"CharVocabulary.encode: characters {unknown} are not in the vocabulary"
            )
        return torch.tensor([self.index[char] for char in text], dtype=torch.long)

    def decode(self, indices: Iterable[int] | torch.Tensor) -> str:
        """The characters of ``indices``."""
        values = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
        return "".join(self.chars[int(i)] for i in values)


def char_sequences(
    text: str,
    seq_len: int,
    *,
    stride: int | None = None,
    vocabulary: CharVocabulary | None = None,
) -> tuple[torch.Tensor, torch.Tensor, CharVocabulary]:
    """Next-character pairs: ``x[i, t]`` is a character, ``y[i, t]`` the one after it.

    Windows of ``seq_len + 1`` characters start every ``stride`` characters (default
    ``seq_len``, no overlap); ``x`` is a window without its last character, ``y``
    without its first. Returns ``(x, y, vocabulary)``, ``x`` and ``y`` int64 of shape
    ``(N, seq_len)``.

    >>> x, y, vocab = char_sequences("abcdefg", 3)
    >>> vocab.decode(x[0]), vocab.decode(y[0]), x.shape
    ('abc', 'bcd', torch.Size([2, 3]))
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"char_sequences: seq_len={seq_len!r}; expected a positive integer")
    stride = seq_len if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"char_sequences: stride={stride!r}; expected a positive integer")
    if len(text) < seq_len + 1:
        raise ValueError(
            f"char_sequences: the text has {len(text)} characters; seq_len="
            f"{seq_len} needs at least {seq_len + 1}"
        )
    vocabulary = vocabulary or CharVocabulary(text)
    codes = vocabulary.encode(text)
    windows = codes.unfold(0, seq_len + 1, stride)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous(), vocabulary


def unigram_entropy(text: str) -> float:
    r"""Entropy of the text's character frequencies, in nats:
    :math:`-\sum_c p_c \log p_c`; the loss of the best model that ignores context."""
    counts = Counter(text)
    total = len(text)
    return -sum(n / total * math.log(n / total) for n in counts.values())
