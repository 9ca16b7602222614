"""The batch types of the encoder: padded wordpiece sequences in, exits out.

Plain PyTorch: no spaCy or Thinc import.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class EncoderBatch:
    """Padded wordpiece sequences and the word layout on top of them.

    A "word" is one spaCy token; it is represented by its first wordpiece, or
    by the mean of its first and last (`MultiExitEncoder.word_pooling`).
    """

    input_ids: Tensor  # [B, T] long
    piece_mask: Tensor  # [B, T] bool: real wordpieces (specials included)
    piece_words: Tensor  # [B, T] long: word index of each piece, -1 for specials/padding
    word_starts: Tensor  # [B, W] long: position of each word's first piece (0 for padding)
    word_mask: Tensor  # [B, W] bool: real words
    case_ids: Optional[Tensor] = None  # [B, T] long: casing class of each piece's word
    word_ends: Optional[Tensor] = None  # [B, W] long: position of each word's last piece (0 for padding)
    # [B, T, F] long: rows of the lexical feature table for each piece's word
    # (0, a zero row, for special pieces and padding)
    lexical_ids: Optional[Tensor] = None

    @property
    def n_words(self) -> int:
        return int(self.word_mask.sum())

    def select_rows(self, index: Tensor) -> "EncoderBatch":
        """The sequences `index` [k] of this batch, padding trimmed to the
        longest of them."""
        t_len = max(1, int(self.piece_mask[index].sum(1).max())) if len(index) else 1
        w_len = max(1, int(self.word_mask[index].sum(1).max())) if len(index) else 1
        pieces = ("input_ids", "piece_mask", "piece_words", "case_ids", "lexical_ids")
        words = ("word_starts", "word_mask", "word_ends")
        kept = {name: getattr(self, name) for name in pieces + words}
        return EncoderBatch(
            **{
                name: None if value is None else value[index, : (t_len if name in pieces else w_len)]
                for name, value in kept.items()
            }
        )

    def padded_to(self, t_len: int) -> "EncoderBatch":
        """This batch with its piece axis padded to `t_len` >= T pieces (padding
        pieces: pad id 0, masked, no word, no features)."""
        extra = t_len - self.piece_mask.shape[1]
        if extra <= 0:
            return self
        pad_values = {"input_ids": 0, "piece_mask": False, "piece_words": -1, "case_ids": 0, "lexical_ids": 0}
        padded = {}
        for name, value in pad_values.items():
            tensor = getattr(self, name)
            if tensor is not None:
                tail = tensor.new_full((tensor.shape[0], extra, *tensor.shape[2:]), value)
                tensor = torch.cat([tensor, tail], dim=1)
            padded[name] = tensor
        return EncoderBatch(**padded, word_starts=self.word_starts, word_mask=self.word_mask, word_ends=self.word_ends)

    def to(self, device) -> "EncoderBatch":
        fields = (
            "input_ids",
            "piece_mask",
            "piece_words",
            "word_starts",
            "word_mask",
            "case_ids",
            "word_ends",
            "lexical_ids",
        )
        moved = {name: getattr(self, name) for name in fields}
        return EncoderBatch(**{k: (v.to(device) if v is not None else None) for k, v in moved.items()})


@dataclass
class ExitOutput:
    """What early-exit inference returns, one row per sequence of the batch."""

    labels: Tensor  # [B, W] long: label id at each word's exit
    exit_layers: Tensor  # [B, W] long: 1-based exit layer of each word
    uncertainty: Tensor  # [B, W] float: uncertainty at the exit
    cost: Tensor  # [B] float64: multiply-accumulates actually spent
    full_cost: Tensor  # [B] float64: multiply-accumulates of a full-depth pass
    probs: Optional[Tensor] = None  # [B, W, C] float: label distribution at each word's exit
