"""The PyTorch layer: own layer loop, exits, loss weights."""

import pytest
import torch
from transformers import BertConfig

from spacy_earlyexit.core.batch import EncoderBatch
from spacy_earlyexit.core.encoder import MultiExitEncoder, attend
from spacy_earlyexit.core.objective import layer_loss_weights
from spacy_earlyexit.core.policies import FixedDepth, FullDepth

from ..conftest import random_batch, tiny_backbone


@pytest.mark.parametrize("lengths", [[7, 3, 5], [6, 6]])  # packed and dense paths
@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_own_layer_loop_matches_hugging_face(kind, lengths):
    torch.manual_seed(0)
    backbone = tiny_backbone(kind).eval()
    assert_own_loop_matches_hugging_face(backbone, random_batch(lengths))


def assert_own_loop_matches_hugging_face(backbone, batch):
    expected = backbone(input_ids=batch.input_ids, attention_mask=batch.piece_mask.long()).last_hidden_state
    encoder = MultiExitEncoder(backbone, n_labels=4).eval()
    with torch.no_grad():
        hidden = encoder.embed(batch)
        for index in range(encoder.n_layers):
            hidden = encoder._run_layer(index, hidden, batch.piece_mask, batch.piece_mask)
    real = batch.piece_mask
    assert torch.allclose(hidden[real], expected[real], atol=1e-5)


def test_forward_returns_every_exit_and_trains():
    torch.manual_seed(0)
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=5)
    batch = random_batch([4, 2])
    logits = encoder(batch)
    assert logits.shape == (3, 6, 5)
    logits.sum().backward()
    assert encoder.heads[0].weight.grad is not None
    assert encoder.backbone.encoder.layer[0].attention.self.query.weight.grad is not None


def test_frozen_words_keep_their_state_in_training_forward():
    torch.manual_seed(0)
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=3).eval()
    batch = random_batch([5])
    exits = torch.tensor([[1, 3, 3, 3, 3]])
    with torch.no_grad():
        logits = encoder(batch, word_exit_layers=exits)
        hidden = encoder._run_layer(0, encoder.embed(batch), batch.piece_mask, batch.piece_mask)
        frozen = hidden[0, batch.word_starts[0, 0]]
        # word 0 left after layer 1: every later exit reads that same state
        assert torch.allclose(logits[1, 0], encoder.heads[1](frozen), atol=1e-6)
        assert torch.allclose(logits[2, 0], encoder.heads[2](frozen), atol=1e-6)
        # while the other words kept running
        assert not torch.allclose(logits[2, 1], encoder.heads[2](hidden[0, batch.word_starts[0, 1]]))


def test_predict_full_depth_matches_last_exit_of_forward():
    torch.manual_seed(0)
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=5).eval()
    batch = random_batch([6, 2, 4])
    with torch.no_grad():
        expected = encoder(batch)[-1].argmax(-1)
    out = encoder.predict(batch, FullDepth())
    assert torch.equal(out.labels[batch.word_mask], expected)
    assert bool((out.exit_layers[batch.word_mask] == 3).all())
    assert torch.allclose(out.cost, out.full_cost)


def test_fixed_depth_reads_that_layer():
    torch.manual_seed(0)
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=5).eval()
    batch = random_batch([6, 3])
    with torch.no_grad():
        expected = encoder(batch)[1].argmax(-1)
    out = encoder.predict(batch, FixedDepth(2))
    assert torch.equal(out.labels[batch.word_mask], expected)
    assert bool((out.exit_layers[batch.word_mask] == 2).all())
    assert bool((out.cost < out.full_cost).all())


def test_layer_loss_weights():
    assert layer_loss_weights(3) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert layer_loss_weights(2, "uniform") == [0.5, 0.5]
    assert layer_loss_weights(3, "last") == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="layer weighting"):
        layer_loss_weights(3, "quadratic")


class _NotBert(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = BertConfig(hidden_size=8, num_attention_heads=2, intermediate_size=8)
        self.encoder = torch.nn.Module()


def test_unsupported_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="Unsupported encoder type"):
        MultiExitEncoder(_NotBert(), 3)


def test_case_embedding_starts_neutral_and_changes_states_once_trained():
    torch.manual_seed(0)
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=3, case_classes=6).eval()
    batch = random_batch([4, 2])
    plain = encoder(batch)
    batch.case_ids = torch.randint(0, 6, batch.input_ids.shape)
    assert torch.allclose(encoder(batch), plain)  # zero-initialized: the pretrained model unchanged
    with torch.no_grad():
        encoder.case_embedding.weight.normal_()
    assert not torch.allclose(encoder(batch), plain)


def test_electra_with_a_projected_embedding_runs():
    from transformers import ElectraConfig, ElectraModel

    torch.manual_seed(0)
    config = ElectraConfig(
        vocab_size=50,
        embedding_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
    )
    backbone = ElectraModel(config).eval()
    assert_own_loop_matches_hugging_face(backbone, random_batch([5, 3]))


def test_dense_and_packed_paths_agree_and_keep_inactive_pieces():
    torch.manual_seed(0)
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=3).eval()
    batch = random_batch([8, 8])
    active = batch.piece_mask.clone()
    active[0, 3] = False  # 19 of 20 active: dense
    with torch.no_grad():
        hidden = encoder.embed(batch)
        dense = encoder._run_layer(0, hidden.clone(), batch.piece_mask, active)
        encoder.DENSE_FRACTION = 1.01  # force packing
        packed = encoder._run_layer(0, hidden.clone(), batch.piece_mask, active)
    assert torch.equal(dense[0, 3], hidden[0, 3])
    assert torch.allclose(dense, packed, atol=1e-5)


def _multi_piece_batch():
    """Two sequences whose words have one to three pieces each."""
    sizes = [[1, 3, 2], [2, 1]]
    B, W = len(sizes), max(len(s) for s in sizes)
    T = max(sum(s) for s in sizes) + 2
    gen = torch.Generator().manual_seed(1)
    ids = torch.zeros(B, T, dtype=torch.long)
    piece_mask = torch.zeros(B, T, dtype=torch.bool)
    piece_words = torch.full((B, T), -1, dtype=torch.long)
    starts = torch.zeros(B, W, dtype=torch.long)
    ends = torch.zeros(B, W, dtype=torch.long)
    word_mask = torch.zeros(B, W, dtype=torch.bool)
    for b, word_sizes in enumerate(sizes):
        n = sum(word_sizes)
        ids[b, : n + 2] = torch.randint(5, 50, (n + 2,), generator=gen)
        piece_mask[b, : n + 2] = True
        position = 1
        for w, size in enumerate(word_sizes):
            piece_words[b, position : position + size] = w
            starts[b, w], ends[b, w] = position, position + size - 1
            position += size
        word_mask[b, : len(word_sizes)] = True
    return EncoderBatch(ids, piece_mask, piece_words, starts, word_mask, word_ends=ends)


def test_first_last_pooling_reads_the_mean_of_first_and_last_piece():
    torch.manual_seed(0)
    backbone = tiny_backbone("bert").eval()
    encoder = MultiExitEncoder(backbone, n_labels=3, word_pooling="first_last").eval()
    batch = _multi_piece_batch()
    with torch.no_grad():
        hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.piece_mask.long()).last_hidden_state
        logits = encoder(batch)[-1]
    rows, cols = batch.word_mask.nonzero(as_tuple=True)
    pooled = (hidden[rows, batch.word_starts[rows, cols]] + hidden[rows, batch.word_ends[rows, cols]]) / 2
    assert torch.allclose(logits, encoder.heads[-1](pooled), atol=1e-5)
    # a one-piece word reads the same state either way; a three-piece word does not
    first = MultiExitEncoder(backbone, n_labels=3).eval()
    first.heads.load_state_dict(encoder.heads.state_dict())
    with torch.no_grad():
        plain = first(batch)[-1]
    assert torch.allclose(plain[0], logits[0], atol=1e-5) and not torch.allclose(plain[1], logits[1], atol=1e-3)
    # early-exit inference reads words the same way as training
    output = encoder.predict(batch)
    assert torch.equal(output.labels[batch.word_mask], logits.argmax(-1))


def test_lexical_embedding_starts_neutral_keeps_row_zero_and_trains():
    torch.manual_seed(0)
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=3, lexical_rows=11).eval()
    batch = random_batch([4, 2])
    plain = encoder(batch)
    lexical = torch.randint(1, 11, batch.input_ids.shape + (4,))
    lexical[~batch.piece_mask] = 0
    batch.lexical_ids = lexical
    assert torch.allclose(encoder(batch), plain)  # zero-initialized
    encoder.train()
    encoder(batch).sum().backward()
    grad = encoder.lexical_embedding.weight.grad
    assert bool(grad[1:].abs().sum() > 0) and bool((grad[0] == 0).all())  # padding row never learns
    with torch.no_grad():
        encoder.lexical_embedding.weight[1:].normal_()
    encoder.eval()
    assert not torch.allclose(encoder(batch), plain)


def test_word_pooling_is_checked():
    with pytest.raises(ValueError, match="word_pooling"):
        MultiExitEncoder(tiny_backbone("bert"), n_labels=3, word_pooling="mean")


def test_bf16_training_forward_keeps_float32_weights_classifiers_and_gradients():
    """Mixed precision: the layers' products under bf16 autocast, the exit
    logits and every gradient float32, and the logits close to fp32's."""
    torch.manual_seed(0)
    # eval mode switches dropout off; autograd alone selects the training path
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=5).eval()
    batch = random_batch([6, 2, 4])
    fp32 = encoder(batch)
    bf16 = encoder(batch, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    # bf16 keeps 8 bits of mantissa: products round at ~0.4% while the
    # residual stream stays float32, so the logits stay close to fp32's
    assert float((bf16 - fp32).abs().max()) < 0.1
    assert float((bf16 - fp32).abs().max()) > 0.0  # the products did run in bf16
    bf16.sum().backward()
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    assert encoder.backbone.encoder.layer[0].attention.self.query.weight.grad is not None


def test_bf16_training_with_frozen_words_and_sampled_exits_runs_the_packed_path():
    torch.manual_seed(0)
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=3)
    batch = random_batch([5, 3])
    exits = torch.tensor([[1, 3, 2, 3, 3], [2, 1, 3, 0, 0]])
    logits = encoder(batch, word_exit_layers=exits, precision="bf16")
    assert logits.dtype == torch.float32
    logits.sum().backward()
    assert encoder.heads[2].weight.grad is not None


@pytest.mark.parametrize("precision", ["int8", "auto", "fp16"])
def test_training_refuses_a_precision_it_cannot_train_in(precision):
    encoder = MultiExitEncoder(tiny_backbone("bert"), n_labels=3).train()
    with pytest.raises(ValueError, match="Training runs in fp32 or bf16"):
        encoder(random_batch([3]), precision=precision)


@pytest.mark.parametrize("n_keys", [16, 160])
def test_bf16_training_attention_runs_in_float32_without_amx(monkeypatch, n_keys):
    monkeypatch.setenv("SPACY_EARLYEXIT_AMX", "0")
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n_keys, 8, generator=generator, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 1, n_keys, dtype=torch.bool)
    mask[1, ..., n_keys // 2 :] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
        context = attend(qb, kb, vb, mask, 0.0)
    expected = torch.nn.functional.scaled_dot_product_attention(qb.float(), kb.float(), vb.float(), attn_mask=mask)
    assert context.dtype == torch.float32
    assert torch.allclose(context, expected, atol=1e-5)
    context.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # inference: torch's kernel, in bf16
        assert attend(qb, kb, vb, mask, 0.0).dtype == torch.bfloat16
    monkeypatch.setenv("SPACY_EARLYEXIT_AMX", "1")  # with AMX: bf16, as before
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attend(qb, kb, vb, mask, 0.0).dtype == torch.bfloat16
