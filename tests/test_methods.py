"""DoRA, VeRA and FourierFT against PEFT's implementations, in float64, on the same tensors.

Whole modules (attn.c_proj, mlp.c_fc, mlp.c_proj): PEFT runs on a copy of our ``GPT2LMModel``.
Slices (q, v of the fused c_attn): PEFT runs on an oracle copy whose c_attn is three separate
``nn.Linear``s q, k, v (what PEFT can adapt one by one). Each case compares the logits, the
gradients of every adapter tensor and the merged weights, and checks that the update is large
enough (> 1e-2 on the logits) for a wrong slice or scale to show.
"""

import copy

import peft
import pytest
import torch
import torch.nn as nn

from lora_nlg.methods import (
    METHODS,
    DoRAConfig,
    FourierFTConfig,
    LoRAConfig,
    VeRAConfig,
    adapter_config_of,
    adapter_layers,
    apply_adapter,
    count_trainable,
    mark_only_adapter_as_trainable,
    merge_adapter,
    unmerge_adapter,
)
from lora_nlg.model import GPT2Config, GPT2LMModel

WHOLE = ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")
SLICES = {"q": 0, "k": 1, "v": 2}


class SplitQKV(nn.Module):
    """c_attn as three nn.Linear q, k, v: the same function, adaptable slice by slice."""

    def __init__(self, fused: nn.Linear):
        super().__init__()
        out, in_ = fused.weight.shape
        c = out // 3
        for i, name in enumerate("qkv"):
            layer = nn.Linear(in_, c, dtype=fused.weight.dtype)
            with torch.no_grad():
                layer.weight.copy_(fused.weight[i * c : (i + 1) * c])
                layer.bias.copy_(fused.bias[i * c : (i + 1) * c])
            setattr(self, name, layer)

    def forward(self, x):
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def oracle(model: GPT2LMModel) -> GPT2LMModel:
    ref = copy.deepcopy(model)
    for block in ref.transformer.h:
        block.attn.c_attn = SplitQKV(block.attn.c_attn)
    return ref


def peft_config(cfg):
    """PEFT's config for our ``cfg``, naming the oracle's modules for slices."""
    modules = [f"attn.c_attn.{t}" if t in SLICES else t for t in cfg.targets]
    if isinstance(cfg, DoRAConfig):
        return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, use_dora=True, target_modules=modules)
    if isinstance(cfg, VeRAConfig):
        return peft.VeraConfig(
            r=cfg.r,
            target_modules=modules,
            projection_prng_key=cfg.seed,
            d_initial=cfg.d_initial,
            save_projection=False,
        )
    return peft.FourierFTConfig(
        n_frequency=cfg.n_frequency, scaling=cfg.scaling, random_loc_seed=cfg.seed, target_modules=modules
    )


def peft_tensors(layer, cfg):
    """PEFT's layer -> {our tensor name: its tensor (for one slice or module)}."""
    if isinstance(cfg, DoRAConfig):
        return {
            "lora_A": layer.lora_A["default"].weight,
            "lora_B": layer.lora_B["default"].weight,
            "lora_magnitude": layer.lora_magnitude_vector["default"].weight,
        }
    if isinstance(cfg, VeRAConfig):
        return {"vera_lambda_d": layer.vera_lambda_d["default"], "vera_lambda_b": layer.vera_lambda_b["default"]}
    return {"fourierft_spectrum": layer.fourierft_spectrum["default"]}


def slice_of(name: str, ours: torch.Tensor, j: int, n: int) -> torch.Tensor:
    """Slice j (of n enabled) of our stacked tensor ``name``: PEFT's tensor for that slice."""
    if name == "vera_lambda_d" or name == "fourierft_spectrum":
        return ours[j]
    return ours.chunk(n, dim=0)[j]


def pairs(model, ref, cfg):
    """(our tensor, PEFT's tensor, our stacked tensor's slice index or None) for every tensor."""
    out = []
    for name, layer in adapter_layers(model):
        paths = []
        if name.endswith("attn.c_attn"):
            on = [t for t in "qkv" if t in cfg.targets]
            paths = [(f"{name}.{t}", j, len(on)) for j, t in enumerate(on)]
        else:
            paths = [(name, 0, 1)]
        for path, j, n in paths:
            theirs = peft_tensors(ref.base_model.model.get_submodule(path), cfg)
            for key, t in layer.tensors().items():
                out.append((key, t, theirs[key], j, n))
    return out


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for key, t in layer.tensors().items():
                noise = torch.randn(t.shape, generator=g, dtype=t.dtype)
                if key == "lora_magnitude":
                    t.mul_(1 + 0.3 * noise)
                elif key == "fourierft_spectrum":
                    t.copy_(noise * 30)
                else:
                    t.copy_(noise * 0.2 + (0.3 if key == "vera_lambda_b" else 0.0))


CASES = [
    DoRAConfig(r=4, alpha=8, targets=WHOLE),
    DoRAConfig(r=4, alpha=8, targets=("q", "v")),
    DoRAConfig(r=2, alpha=4, targets=("k", "mlp.c_proj")),
    VeRAConfig(r=16, targets=WHOLE),
    VeRAConfig(r=16, targets=("q", "v"), seed=3),
    VeRAConfig(r=8, targets=("q", "v", "mlp.c_fc")),
    FourierFTConfig(n_frequency=60, scaling=150.0, targets=WHOLE),
    FourierFTConfig(n_frequency=60, scaling=300.0, targets=("q", "v"), seed=2024),
]


@pytest.fixture
def tiny64(tiny_model):
    return tiny_model.double()


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.name} {'+'.join(c.targets)}")
def test_equals_peft(cfg, tiny64, token_ids):
    sliced = any(t in SLICES for t in cfg.targets)
    ref = peft.get_peft_model(oracle(tiny64) if sliced else copy.deepcopy(tiny64), peft_config(cfg))
    ref.double()
    model = apply_adapter(copy.deepcopy(tiny64), cfg).double()
    mark_only_adapter_as_trainable(model)
    if isinstance(cfg, VeRAConfig):  # the frozen projections come from the seed, as PEFT draws them
        layer = next(m for _, m in adapter_layers(model))
        peft_layer = next(m for m in ref.modules() if isinstance(m, peft.tuners.vera.layer.Linear))
        assert torch.equal(layer.projections.vera_A, peft_layer.vera_A["default"].double())
        assert torch.equal(layer.projections.vera_B, peft_layer.vera_B["default"].double())
    if isinstance(cfg, DoRAConfig):  # the magnitude starts at the rows' norms, as in PEFT
        for _, ours, theirs, j, n in pairs(model, ref, cfg):
            if ours.ndim == 1:
                torch.testing.assert_close(slice_of("lora_magnitude", ours, j, n), theirs, rtol=1e-12, atol=0)
    randomize(model)
    with torch.no_grad():
        for key, ours, theirs, j, n in pairs(model, ref, cfg):
            theirs.copy_(slice_of(key, ours, j, n))
    ref.eval()
    model.eval()

    base = tiny64(token_ids)
    out, ref_out = model(token_ids), ref(token_ids)
    update = float((out - base).abs().max())
    assert update > 1e-2
    # PEFT computes FourierFT's ifft2 in float32: agreement to float32's precision relative to the update.
    tol = 1e-5 * update if isinstance(cfg, FourierFTConfig) else 1e-9
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)

    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * probe).sum().backward()
    (ref_out * probe).sum().backward()
    for key, ours, theirs, j, n in pairs(model, ref, cfg):
        want = theirs.grad
        got = slice_of(key, ours.grad, j, n)
        tol = 1e-3 if isinstance(cfg, FourierFTConfig) else 1e-9  # PEFT computes ifft2 in float32
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))

    weights = {n: m.base_layer.weight.clone() for n, m in adapter_layers(model)}
    merge_adapter(model)
    ref.merge_adapter()
    for name, m in adapter_layers(model):
        if name.endswith("attn.c_attn"):
            split = [ref.base_model.model.get_submodule(f"{name}.{t}") for t in "qkv"]
            theirs = torch.cat([getattr(s, "base_layer", s).weight for s in split])
        else:
            theirs = ref.base_model.model.get_submodule(name).base_layer.weight
        change = float((m.base_layer.weight - weights[name]).abs().max())
        tol = 1e-5 * change if isinstance(cfg, FourierFTConfig) else 1e-12  # float32 ifft2 in PEFT
        torch.testing.assert_close(m.base_layer.weight, theirs, rtol=tol, atol=tol)
    with torch.no_grad():
        torch.testing.assert_close(model(token_ids), out, rtol=1e-9, atol=1e-9)  # merged equals unmerged
    merge_adapter(model)  # idempotent
    unmerge_adapter(model)
    unmerge_adapter(model)
    for name, m in adapter_layers(model):
        torch.testing.assert_close(m.base_layer.weight, weights[name], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cfg", [c for c in CASES if any(t in SLICES for t in c.targets)], ids=lambda c: c.name)
def test_disabled_slices_keep_their_weights(cfg, tiny64, token_ids):
    """k (not a target) keeps its rows exactly when the adapter is merged."""
    model = apply_adapter(copy.deepcopy(tiny64), cfg).double()
    randomize(model)
    layer = model.transformer.h[0].attn.c_attn
    before = layer.base_layer.weight.clone()
    merge_adapter(model)
    c = layer.out_slice
    for t, i in SLICES.items():
        same = torch.equal(layer.base_layer.weight[i * c : (i + 1) * c], before[i * c : (i + 1) * c])
        assert same == (t not in cfg.targets), t


@pytest.mark.parametrize(
    "cfg,expected",
    [
        (LoRAConfig(r=4), 393_216),
        (DoRAConfig(r=4), 442_368),
        (VeRAConfig(r=1024), 98_304),  # the VeRA paper's 0.098M on E2E
        (FourierFTConfig(n_frequency=1000), 48_000),  # the FourierFT paper's 0.048M
    ],
    ids=lambda c: getattr(c, "name", c),
)
def test_trainable_parameters_on_gpt2_medium(cfg, expected):
    shapes = cfg.tensor_shapes(24, 1024)
    assert sum(torch.Size(s).numel() for s in shapes.values()) == expected
    with torch.device("meta"):
        model = apply_adapter(GPT2LMModel(GPT2Config.from_card("gpt2.md")), cfg)
    mark_only_adapter_as_trainable(model)
    assert count_trainable(model) == expected


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.name} {'+'.join(c.targets)}")
def test_config_round_trips(cfg, tiny64):
    model = apply_adapter(copy.deepcopy(tiny64), cfg)
    assert adapter_config_of(model) == cfg
    d = cfg.to_dict()
    assert d["method"] == cfg.name
    assert METHODS[d["method"]].from_dict(d) == cfg


def test_lora_metadata_has_no_method_key():
    """LoRA adapter files stay as they were before other methods existed."""
    assert "method" not in LoRAConfig().to_dict()


def test_vera_layers_share_one_projection(tiny64):
    model = apply_adapter(copy.deepcopy(tiny64), VeRAConfig(r=8, targets=("q", "v", "mlp.c_fc")))
    projections = {id(m.projections) for _, m in adapter_layers(model)}
    assert len(projections) == 1
    assert not any("vera_A" in k or "vera_B" in k for k in model.state_dict())  # the seed rebuilds them


def test_fourierft_zeros_init_is_the_base_model(tiny64, token_ids):
    model = apply_adapter(copy.deepcopy(tiny64), FourierFTConfig(n_frequency=60, init="zeros"))
    torch.testing.assert_close(model(token_ids), tiny64(token_ids), rtol=0, atol=0)


def test_fourierft_frequencies_are_peft_s(tiny64):
    cfg = FourierFTConfig(n_frequency=60, targets=("mlp.c_fc",), seed=5)
    model = apply_adapter(copy.deepcopy(tiny64), cfg)
    ref = peft.get_peft_model(copy.deepcopy(tiny64), peft_config(cfg))
    ours = model.transformer.h[1].mlp.c_fc
    theirs = ref.base_model.model.transformer.h[1].mlp.c_fc.indices["default"]
    assert torch.equal(torch.stack([ours._freq_rows, ours._freq_cols]), theirs)


def test_fourierft_update_is_the_inverse_dft(tiny64):
    """In float64, dW = scaling * Re(ifft2(F)) summed term by term: the strict reference (PEFT's is float32)."""
    cfg = FourierFTConfig(n_frequency=40, scaling=300.0, targets=("v",), seed=1)
    model = apply_adapter(copy.deepcopy(tiny64), cfg).double()
    randomize(model)
    layer = model.transformer.h[2].attn.c_attn
    rows, cols, coef = layer._freq_rows, layer._freq_cols, layer.fourierft_spectrum[0].detach()
    M, N = layer.out_slice, layer.in_features
    m = torch.arange(M, dtype=torch.float64)[:, None, None]
    n = torch.arange(N, dtype=torch.float64)[None, :, None]
    phase = 2 * torch.pi * (rows.double() * m / M + cols.double() * n / N)  # (M, N, terms)
    want = cfg.scaling * (coef * torch.cos(phase)).sum(-1) / (M * N)
    delta = layer.delta_weight()
    assert torch.count_nonzero(delta[: 2 * M]) == 0  # q and k untouched
    torch.testing.assert_close(delta[2 * M :], want, rtol=1e-10, atol=1e-12)
