"""GPT-2 forward, cached decoding and padding against transformers' GPT2LMHeadModel.

The reference weights (conftest) have initializer_range=0.2 and random biases / LayerNorms, so a
wrong GELU, a dropped bias or a misplaced transpose shows in the logits: ``test_erf_gelu_would_fail``
checks that the tolerance used here does catch the erf-vs-tanh GELU difference.
"""

import pytest
import torch
import torch.nn.functional as F

import lora_nlg.model
from lora_nlg.weights.backbone import load_pretrained

TOL = 1e-4  # max abs logit difference accepted against transformers (float32)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def hf_logits(hf_model, ids, attention_mask=None):
    return hf_model(input_ids=ids, attention_mask=attention_mask).logits


@pytest.mark.parametrize("folder", ["hf_tiny_dir", "hf_tiny_bin_dir"])
@torch.no_grad()
def test_logits_match_transformers(folder, request, hf_tiny_model, token_ids):
    model = load_pretrained(request.getfixturevalue(folder))
    assert not model.training
    ours = model(token_ids)
    ref = hf_logits(hf_tiny_model, token_ids)
    assert ours.shape == ref.shape == (3, 16, 101)
    assert max_diff(ours, ref) < TOL


@torch.no_grad()
def test_erf_gelu_would_fail(tiny_model, hf_tiny_model, token_ids, monkeypatch):
    """The same comparison with the erf GELU (nanoGPT's) must exceed the tolerance by far."""
    ref = hf_logits(hf_tiny_model, token_ids)
    assert max_diff(tiny_model(token_ids), ref) < TOL
    gelu = F.gelu
    monkeypatch.setattr(lora_nlg.model.F, "gelu", lambda x, approximate="none": gelu(x))
    assert max_diff(tiny_model(token_ids), ref) > 10 * TOL


@torch.no_grad()
def test_cached_decoding_matches_transformers(tiny_model, hf_tiny_model, token_ids):
    ref = hf_logits(hf_tiny_model, token_ids)  # (B, T, V): the full forward is the truth
    B, T = token_ids.shape
    prompt = 6
    cache = tiny_model.new_cache(B, T)
    steps = [tiny_model(token_ids[:, :prompt], cache=cache)]
    for t in range(prompt, T):
        steps.append(tiny_model(token_ids[:, t : t + 1], cache=cache))
    assert cache.length == T
    ours = torch.cat(steps, dim=1)
    assert ours.shape == ref.shape
    assert max_diff(ours, ref) < TOL


def _left_pad(rows, pad_id=0):
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r) :] = r
        mask[i, T - len(r) :] = 1
    return ids, mask


@torch.no_grad()
def test_left_padded_rows_equal_rows_alone(tiny_model, hf_tiny_model, token_ids):
    rows = [token_ids[0], token_ids[1, :9], token_ids[2, :4]]
    ids, mask = _left_pad(rows, pad_id=50 % 101)
    batch = tiny_model(ids, attention_mask=mask)
    T = ids.shape[1]
    for i, r in enumerate(rows):
        alone = tiny_model(r[None])[0]
        ref = hf_logits(hf_tiny_model, r[None])[0]
        got = batch[i, T - len(r) :]
        assert max_diff(got, alone) < 1e-5
        assert max_diff(got, ref) < TOL


@torch.no_grad()
def test_left_padded_cached_decoding_equals_rows_alone(tiny_model, hf_tiny_model, token_ids):
    """Batched beam search's case: prompts of different lengths share one cache."""
    rows = [token_ids[0, :10], token_ids[1, :3], token_ids[2, :7]]
    new = token_ids[:, 10:15]  # 5 continuation tokens per row, fed one at a time
    ids, mask = _left_pad(rows)
    cache = tiny_model.new_cache(3, ids.shape[1] + new.shape[1])
    tiny_model(ids, attention_mask=mask, cache=cache)
    steps = []
    for t in range(new.shape[1]):
        mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], dim=1)
        steps.append(tiny_model(new[:, t : t + 1], attention_mask=mask, cache=cache))
    got = torch.cat(steps, dim=1)  # (B, 5, V)
    for i, r in enumerate(rows):
        full = torch.cat([r, new[i]])[None]
        ref = hf_logits(hf_tiny_model, full)[0, len(r) :]
        assert max_diff(got[i], ref) < TOL


@torch.no_grad()
def test_logit_mask_selects_rows(tiny_model, token_ids):
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(token_ids.shape, generator=g) < 0.4
    full = tiny_model(token_ids)
    picked = tiny_model(token_ids, output_mask=mask)
    assert picked.shape == (int(mask.sum()), 101)
    assert max_diff(picked, full[mask]) < 1e-5
    # Row-major order: the first selected position is row 0's first True.
    b, t = mask.nonzero()[0].tolist()
    assert max_diff(picked[0], full[b, t]) < 1e-5


def completion_mask(shape, starts):
    """Boolean (B, T): True from ``starts[b]`` on, as the loss positions of training rows."""
    return torch.arange(shape[1])[None, :] >= torch.tensor(starts)[:, None]


@torch.no_grad()
def test_logit_mask_with_late_first_column_and_padding(tiny_model, token_ids):
    """The last block's queries start at the first selected column (here 9): the shifted causal
    mask, and a left-padding mask cut to those queries, must give the full forward's logits."""
    mask = completion_mask(token_ids.shape, [9, 12, 14])
    full = tiny_model(token_ids)
    assert max_diff(tiny_model(token_ids, output_mask=mask), full[mask]) < 1e-5
    padding = torch.ones_like(token_ids)
    padding[1, :3] = 0  # row 1 left-padded
    full = tiny_model(token_ids, attention_mask=padding)
    assert max_diff(tiny_model(token_ids, attention_mask=padding, output_mask=mask), full[mask]) < 1e-5
    empty = tiny_model(token_ids, output_mask=torch.zeros_like(mask))
    assert empty.shape == (0, 101)


def test_logit_mask_gradients_match_full_forward(token_ids):
    """LoRA gradients of a loss on the selected positions: the same whether the last block and
    the LM head run on every position (loss masked afterwards) or on the selected ones only."""
    from lora_nlg.methods import LoRAConfig, apply_adapter, mark_only_adapter_as_trainable

    torch.manual_seed(0)
    model = lora_nlg.model.GPT2LMModel(
        lora_nlg.model.GPT2Config(vocab_size=101, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    ).double()
    apply_adapter(model, LoRAConfig(r=2, alpha=4, targets=("q", "v", "mlp.c_fc")))
    mark_only_adapter_as_trainable(model)
    for p in model.parameters():  # B starts at zero: make every gradient path non-trivial
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    mask = completion_mask(token_ids.shape, [7, 10, 13])
    labels = token_ids.roll(-1, dims=1)

    def grads(logits_fn):
        model.zero_grad()
        F.cross_entropy(logits_fn(), labels[mask], reduction="sum").backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    selected = grads(lambda: model(token_ids, output_mask=mask))
    everywhere = grads(lambda: model(token_ids)[mask])
    assert len(selected) == 8  # A and B of c_attn and c_fc in 2 blocks
    for a, b in zip(selected, everywhere):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
