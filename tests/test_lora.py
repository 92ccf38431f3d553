"""LoRA against loralib 0.1.2 (upstream's implementation) and its algebraic contract.

Model-level comparisons run in float64 (``tiny64``): the shared tiny model is deliberately loud
(initializer_range=0.2), and in float32 it turns rounding into logit differences of ~3e-5, which
would force a tolerance loose enough to hide real mistakes. In float64 the same algebra agrees to
~1e-12, so the 1e-5 tolerances below are strict, while a wrong slice, scaling or layout moves the
logits by more than 1e-2 (each test checks that the LoRA update is that large).
"""

import copy
import math

import loralib
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lora_nlg.methods import (
    LoRAConfig,
    LoRALinear,
    adapter_layers,
    adapter_state_dict,
    apply_adapter,
    count_trainable,
    mark_only_adapter_as_trainable,
    merge_adapter,
    unmerge_adapter,
)
from lora_nlg.model import GPT2Config, GPT2LMModel
from lora_nlg.weights.adapter import apply_adapter_weights, load_adapter
from lora_nlg.weights.backbone import load_pretrained
from lora_nlg.weights.upstream import lora_config_from_tensors


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture
def tiny64(tiny_model):
    return tiny_model.double()


def randomize_lora(model, seed=0, std=0.1):
    """B is zero at init (the update starts at 0); tests need a non-zero update. The values are
    float32 numbers whatever the model's dtype, so a float32 file stores them exactly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in adapter_layers(model):
            m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g) * std)
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * std)


def loralib_model(base, lora_model, cfg):
    """``base`` (a plain GPT2LMModel) with its targeted layers replaced by loralib's layers holding
    the same weights and the same A, B as ``lora_model``: upstream's computation."""
    ref = copy.deepcopy(base)
    ours = dict(adapter_layers(lora_model))
    enable = [t in cfg.targets for t in ("q", "k", "v")]
    for i, block in enumerate(ref.transformer.h):
        for path in {"attn.c_attn" if t in "qkv" else t for t in cfg.targets}:
            parent_name, _, name = path.rpartition(".")
            parent = block.get_submodule(parent_name)
            old = getattr(parent, name)
            out_f, in_f = old.weight.shape
            if path == "attn.c_attn":
                new = loralib.MergedLinear(
                    in_f,
                    out_f,
                    r=cfg.r,
                    lora_alpha=cfg.alpha,
                    enable_lora=enable,
                    fan_in_fan_out=True,
                    merge_weights=False,
                )
            else:
                new = loralib.Linear(
                    in_f, out_f, r=cfg.r, lora_alpha=cfg.alpha, fan_in_fan_out=True, merge_weights=False
                )
            new = new.to(old.weight.dtype)
            src = ours[f"transformer.h.{i}.{path}"]
            with torch.no_grad():
                new.weight.copy_(old.weight.t())  # fan_in_fan_out: GPT-2's Conv1D layout (in, out)
                new.bias.copy_(old.bias)
                new.lora_A.copy_(src.lora_A)
                new.lora_B.copy_(src.lora_B)
            setattr(parent, name, new)
    return ref.eval()


def test_zero_B_is_exactly_the_base_model(tiny_model, token_ids):
    with torch.no_grad():
        base = tiny_model(token_ids)
        apply_adapter(
            tiny_model, LoRAConfig(r=4, alpha=32, targets=("q", "k", "v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
        )
        assert all(m.lora_A.abs().sum() > 0 and m.lora_B.abs().sum() == 0 for _, m in adapter_layers(tiny_model))
        assert torch.equal(tiny_model(token_ids), base)


@pytest.mark.parametrize("card,expected", [("gpt2.sm", 147_456), ("gpt2.md", 393_216), ("gpt2.lg", 737_280)])
def test_trainable_parameters_match_the_paper(card, expected):
    with torch.device("meta"):  # shapes only: GPT-2 L is never allocated
        model = GPT2LMModel(GPT2Config.from_card(card))
        apply_adapter(model, LoRAConfig(r=4, alpha=32, targets=("q", "v")))
    mark_only_adapter_as_trainable(model)
    assert count_trainable(model) == expected
    assert sum(t.numel() for t in adapter_state_dict(model).values()) == expected


def test_merge_contract(tiny64, token_ids):
    tiny_model = tiny64
    apply_adapter(tiny_model, LoRAConfig(r=4, alpha=32, targets=("q", "v", "mlp.c_fc", "attn.c_proj")))
    randomize_lora(tiny_model)
    weights = {n: m.base_layer.weight.clone() for n, m in adapter_layers(tiny_model)}
    with torch.no_grad():
        unmerged = tiny_model(token_ids)
        merge_adapter(tiny_model)
        merged_w = {n: m.base_layer.weight.clone() for n, m in adapter_layers(tiny_model)}
        assert all(not torch.equal(merged_w[n], weights[n]) for n in weights)
        merged = tiny_model(token_ids)
        assert max_diff(merged, unmerged) < 1e-5
        merge_adapter(tiny_model)  # idempotent
        assert all(torch.equal(m.base_layer.weight, merged_w[n]) for n, m in adapter_layers(tiny_model))
        assert max_diff(tiny_model(token_ids), unmerged) < 1e-5
        unmerge_adapter(tiny_model)
        unmerge_adapter(tiny_model)  # idempotent
        assert all(max_diff(m.base_layer.weight, weights[n]) < 1e-6 for n, m in adapter_layers(tiny_model))
        assert max_diff(tiny_model(token_ids), unmerged) < 1e-5


def test_merge_float32_layer():
    """The same contract in float32 on one c_attn-sized layer (GPT-2's usual scale)."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(128, 384), r=4, alpha=32, enable=(True, False, True))
    nn.init.normal_(layer.lora_B, std=0.02)
    w = layer.base_layer.weight.clone()
    x = torch.randn(10, 128)
    with torch.no_grad():
        unmerged = layer(x)
        assert (unmerged - layer.base_layer(x)).abs().max() > 1e-2
        layer.merge()
        assert max_diff(layer(x), unmerged) < 1e-5
        layer.unmerge()
        assert max_diff(layer.base_layer.weight, w) < 1e-6


@pytest.mark.parametrize(
    "targets", [("q", "v"), ("k",), ("q", "k", "v"), ("mlp.c_fc",), ("v", "attn.c_proj", "mlp.c_proj")]
)
def test_same_output_as_loralib(tiny64, token_ids, targets):
    """loralib.MergedLinear(enable_lora=..., fan_in_fan_out=True) on c_attn (upstream's layer) and
    loralib.Linear on plain layers, with the same A and B, compute the same model."""
    tiny_model = tiny64
    base = copy.deepcopy(tiny_model)
    cfg = LoRAConfig(r=3, alpha=7, targets=targets)  # r, alpha odd on purpose: scaling 7/3
    apply_adapter(tiny_model, cfg)
    randomize_lora(tiny_model, std=0.2)
    ref = loralib_model(base, tiny_model, cfg)
    with torch.no_grad():
        delta_ref = ref(token_ids) - base(token_ids)
        assert delta_ref.abs().max() > 1e-2  # the update matters, so a wrong one would show
        assert max_diff(tiny_model(token_ids), ref(token_ids)) < 1e-5
        for (name, ours), theirs in zip(
            adapter_layers(tiny_model), [m for m in ref.modules() if isinstance(m, loralib.LoRALayer)]
        ):
            their_delta = (
                theirs.merge_AB() if isinstance(theirs, loralib.MergedLinear) else theirs.lora_B @ theirs.lora_A
            ) * theirs.scaling
            if isinstance(theirs, loralib.MergedLinear):
                their_delta = their_delta.t()  # merge_AB returns the (in, out) layout
            assert max_diff(ours.delta_weight(), their_delta) < 1e-6, name


def test_rslora_scaling():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    x = torch.randn(5, 8)
    for rule, scale in [("alpha/sqrt(r)", 8 / math.sqrt(16)), ("alpha/r", 8 / 16)]:
        layer = LoRALinear(base, r=16, alpha=8, scaling_rule=rule)
        nn.init.normal_(layer.lora_B)
        assert layer.scaling == pytest.approx(scale)
        assert LoRAConfig(r=16, alpha=8, scaling_rule=rule).scaling == pytest.approx(scale)
        with torch.no_grad():
            expected = base(x) + (x @ layer.lora_A.t() @ layer.lora_B.t()) * scale
            assert max_diff(layer(x), expected) < 1e-5


def test_seed_lora_checkpoint_reproduces_loralib(tiny64, token_ids, tmp_path):
    """A LoRA-only file as upstream writes it (torch.save of {'model_state_dict': ...} with
    DistributedDataParallel's 'module.' prefix) loads and computes what loralib computed."""
    tiny_model = tiny64
    base = copy.deepcopy(tiny_model)
    seed_cfg = LoRAConfig(r=4, alpha=32, targets=("q", "v"))
    donor = apply_adapter(copy.deepcopy(tiny_model), seed_cfg)
    randomize_lora(donor, seed=5, std=0.1)
    ref = loralib_model(base, donor, seed_cfg)
    seed_sd = {f"module.{k}": v.float() for k, v in ref.state_dict().items() if "lora_" in k}
    assert "module.transformer.h.0.attn.c_attn.lora_A" in seed_sd
    assert seed_sd["module.transformer.h.0.attn.c_attn.lora_A"].shape == (2 * 4, 128)
    assert seed_sd["module.transformer.h.0.attn.c_attn.lora_B"].shape == (2 * 128, 4)
    path = tmp_path / "model.20000.pt"
    torch.save({"model_state_dict": seed_sd}, path)

    tensors, metadata = load_adapter(path)
    assert metadata is None  # upstream stores neither r nor alpha
    cfg = lora_config_from_tensors(tensors, alpha=32)
    assert (cfg.r, cfg.alpha, cfg.targets, cfg.scaling) == (4, 32, ("q", "v"), 8.0)
    apply_adapter(tiny_model, cfg)
    apply_adapter_weights(tiny_model, tensors)
    with torch.no_grad():
        assert (ref(token_ids) - base(token_ids)).abs().max() > 1e-2
        assert max_diff(tiny_model(token_ids), ref(token_ids)) < 1e-5


def test_only_lora_parameters_get_gradients(tiny_model, token_ids):
    apply_adapter(tiny_model, LoRAConfig(r=4, alpha=32, targets=("q", "v", "mlp.c_fc")))
    mark_only_adapter_as_trainable(tiny_model)
    randomize_lora(tiny_model)
    tiny_model.train()
    F.cross_entropy(tiny_model(token_ids[:, :-1]).flatten(0, 1), token_ids[:, 1:].flatten()).backward()
    lora_names = {n for n, _ in tiny_model.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    assert len(lora_names) == 2 * 2 * 4  # (A, B) x (c_attn, c_fc) x 4 layers
    for name, p in tiny_model.named_parameters():
        if name in lora_names:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert count_trainable(tiny_model) == sum(p.numel() for n, p in tiny_model.named_parameters() if n in lora_names)


def test_dropout_applies_to_lora_input_only(tiny_model, hf_tiny_dir, token_ids):
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = LoRALinear(base, r=4, alpha=8, dropout=0.5).train()
    nn.init.normal_(layer.lora_B)
    x = torch.randn(6, 16)
    with torch.no_grad():
        torch.manual_seed(11)
        y = layer(x)
        torch.manual_seed(11)
        x_dropped = F.dropout(x, 0.5, training=True)  # the same mask as the layer drew
        assert not torch.equal(x_dropped, x)
        expected = base(x) + x_dropped @ layer.lora_A.t() @ layer.lora_B.t() * layer.scaling
        assert max_diff(y, expected) < 1e-5
        layer.eval()
        assert max_diff(layer(x), base(x) + x @ layer.lora_A.t() @ layer.lora_B.t() * layer.scaling) < 1e-5

    # LoRA put on a model in eval mode is in eval mode too: no dropout at inference.
    with torch.no_grad():
        apply_adapter(tiny_model.eval(), LoRAConfig(r=4, alpha=32, dropout=0.5))
        randomize_lora(tiny_model)
        assert all(not m.training for _, m in adapter_layers(tiny_model))
        assert torch.equal(tiny_model(token_ids), tiny_model(token_ids))
        reference_lora = tiny_model(token_ids)
        tiny_model.train()
        assert not torch.equal(tiny_model(token_ids), reference_lora)

    # Whole model in training mode: with B = 0 it is exactly the backbone (no backbone dropout);
    # with B != 0 two passes differ (the LoRA path drops).
    model = load_pretrained(hf_tiny_dir)
    with torch.no_grad():
        reference = model(token_ids)
        apply_adapter(model, LoRAConfig(r=4, alpha=32, dropout=0.5))
        model.train()
        assert torch.equal(model(token_ids), reference)
        randomize_lora(model)
        assert not torch.equal(model(token_ids), model(token_ids))
