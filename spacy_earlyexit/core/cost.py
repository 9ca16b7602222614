"""Analytic cost of a multi-exit encoder, in multiply-accumulates (MACs).

Per layer, with n real pieces in a sequence of which q are active, hidden size
d, attention width a (kept heads x head size; d at full width) and f kept
feed-forward neurons: keys and values `2 n d a`, queries and output projection
`2 q d a`, attention scores and weighted sum `2 q n a`, feed-forward
`2 q d f`; a classifier costs `d C` per word it labels. Embeddings are the same
for every policy and width, and left out.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from .width import kept


@dataclass(frozen=True)
class LayerCost:
    hidden_size: int
    ff_size: int
    n_labels: int
    n_heads: int = 1

    def layer(self, n: Tensor, q: Tensor, width: float = 1.0) -> Tensor:
        """MACs of one layer at `width` for sequences of n pieces with q active."""
        d = self.hidden_size
        a = kept(width, self.n_heads) * (d // self.n_heads)
        f = kept(width, self.ff_size)
        return 2 * n * d * a + 2 * q * d * a + 2 * q * n * a + 2 * q * d * f

    def classifier(self, n_words: Tensor) -> Tensor:
        return n_words * self.hidden_size * self.n_labels

    def full(self, n: Tensor, n_words: Tensor, n_layers: int) -> Tensor:
        """A standard single-exit pass: every layer on every piece at full
        width, one classifier."""
        return n_layers * self.layer(n, n) + self.classifier(n_words)

    def of_exits(
        self,
        n_pieces: Tensor,
        n_special: Tensor,
        word_pieces: Tensor,
        exits: Tensor,
        n_layers: int,
        width: float = 1.0,
        every_exit: bool = True,
    ) -> Tensor:
        """MACs a layer loop spends when each word leaves at `exits`.

        n_pieces [S]: real pieces of each sequence, specials included;
        n_special [S]: its special pieces (active while the sequence runs);
        word_pieces [S, W]: pieces of each word, 0 for padding;
        exits [S, W]: 1-based exit layer of each word (any value for padding);
        every_exit: whether a classifier runs after every layer on the words
        still active there (exit policies), or once per word at its exit
        (fixed depths). A sequence runs until its last word leaves. The one
        count that inference (`MultiExitEncoder.predict`) and calibration's
        simulation both use. Returns [S] float64."""
        n = n_pieces.double()
        special = n_special.double()
        pieces = word_pieces.double()
        words = pieces > 0
        cost = torch.zeros(n.shape, dtype=torch.float64, device=n.device)
        for index in range(n_layers):
            active = words & (exits > index)
            running = active.any(1)
            if not bool(running.any()):
                break
            layer = self.layer(n, special + (pieces * active).sum(1), width)
            if every_exit:
                layer = layer + self.classifier(active.sum(1).double())
            cost += torch.where(running, layer, torch.zeros_like(layer))
        if not every_exit:
            cost += self.classifier(words.sum(1).double())
        return cost
