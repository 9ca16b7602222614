"""`LayerCost`: the analytic cost of a pass, one count for inference and calibration."""

import pytest
import torch

from spacy_earlyexit.core.encoder import MultiExitEncoder

from ..conftest import tiny_backbone


def test_cost_counts_every_layer_once_per_running_word():
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=5)
    cost = encoder.layer_cost
    n = torch.tensor([6.0])
    special = torch.tensor([2.0])
    pieces = torch.tensor([[1.0, 2.0, 1.0]])
    exits = torch.tensor([[1, 3, 2]])
    got = cost.of_exits(n, special, pieces, exits, 3, every_exit=True)
    expected = sum(
        cost.layer(n, special + torch.tensor([q]), 1.0) + cost.classifier(torch.tensor([a]))
        for q, a in ((4.0, 3.0), (3.0, 2.0), (2.0, 1.0))
    )
    assert got.item() == pytest.approx(expected.item())
    once = cost.of_exits(n, special, pieces, torch.full((1, 3), 3), 3, every_exit=False)
    assert once.item() == pytest.approx(cost.full(n, torch.tensor([3.0]), 3).item())
