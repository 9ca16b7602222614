"""Analytic cost of a multi-exit encoder, in multiply-accumulates (MACs).

Per layer, with n real pieces in a sequence of which q are active, hidden size
d and feed-forward size f: keys and values `2 n d^2`, queries and output
projection `2 q d^2`, attention scores and weighted sum `2 q n d`, feed-forward
`2 q d f`; a classifier costs `d C` per word it labels. Embeddings are the same
for every policy and left out.
"""
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class LayerCost:
    hidden_size: int
    ff_size: int
    n_labels: int

    def layer(self, n: Tensor, q: Tensor) -> Tensor:
        """MACs of one layer for sequences of n pieces with q active."""
        d, f = self.hidden_size, self.ff_size
        return 2 * n * d * d + 2 * q * d * d + 2 * q * n * d + 2 * q * d * f

    def classifier(self, n_words: Tensor) -> Tensor:
        return n_words * self.hidden_size * self.n_labels

    def full(self, n: Tensor, n_words: Tensor, n_layers: int) -> Tensor:
        """A standard single-exit pass: every layer on every piece, one classifier."""
        return n_layers * self.layer(n, n) + self.classifier(n_words)
