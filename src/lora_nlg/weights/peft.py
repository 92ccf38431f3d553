"""Our adapters <-> Hugging Face PEFT adapter folders for transformers' ``GPT2LMHeadModel``.

LoRA below in detail. DoRA, VeRA and FourierFT export (``method_to_peft``) to PEFT's LoRA with
``use_dora``, VeRA (``save_projection`` off: PEFT redraws A and B from ``projection_prng_key``, our
seed) and FourierFT (``random_loc_seed``, our seed) when they sit on whole modules only: on slices of
the fused c_attn PEFT would compute another function (a magnitude per row of all of q, k, v, one
shared projection or spectrum for the three), so export refuses naming why. Import is LoRA's.

A PEFT folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` with, for every
adapted layer, ``base_model.model.transformer.h.<i>.<module>.lora_A.weight`` (R, in) and
``...lora_B.weight`` (out, R); PEFT adds ``scaling * B A x`` with ``scaling = alpha / R`` (or
``alpha / sqrt(R)`` under ``use_rslora``), R from ``r`` or ``rank_pattern``, alpha from
``lora_alpha`` or ``alpha_pattern``. transformers' GPT-2 uses our module names (``attn.c_attn``,
``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``), so only the fused c_attn needs thought.

Export. n enabled slices of c_attn (q and v: n = 2) with rank r each are one PEFT adapter of rank
R = n r on the whole c_attn, with no loss:

    A = [A_q; A_v]                         (2r, C)     our lora_A as it is
    B = [[B_q, 0], [0, 0], [0, B_v]]       (3C, 2r)    rows q | k | v, columns of A_q | A_v

and B A = [B_q A_q; 0; B_v A_v], our update. The scale is kept by choosing PEFT's alpha for each
module: under alpha/r, ``lora_alpha = scaling * R`` (= n alpha: alpha doubled for q, v); under
alpha/sqrt(r) (rsLoRA), ``use_rslora`` stays on (so PEFT keeps the rule if the adapter is trained
on) and ``lora_alpha = scaling * sqrt(R)`` (= sqrt(n) alpha). Modules whose rank differs from the
config's ``r`` get ``rank_pattern`` / ``alpha_pattern`` entries. A and B are written as trained:
training on in PEFT sees the same parameters under the same scale. Our own metadata rides along
in the safetensors header (PEFT ignores it), so importing our export gives back r, alpha and the
model card exactly.

What PEFT cannot express, and export refuses with a message (``NotRepresentable``):
- a scale that is not a finite number (alpha or r corrupted): PEFT computes alpha / R from JSON;
- ``integer_alpha=True`` (for consumers that read ``lora_alpha`` as an int, as PEFT's own type
  hint says) when the alpha that keeps the scale is not an integer, e.g. rsLoRA on q and v
  (alpha sqrt 2) or alpha/r with a fractional ``scaling * R``.
Everything our checkpoints can hold is otherwise representable: any subset of q, k, v (zero rows),
trained biases (PEFT's ``bias`` lora_only / all), one dropout (PEFT has one per adapter, as we do).

Import. Any PEFT LoRA adapter on GPT-2's c_attn, c_proj (attention and MLP) and c_fc, exactly:
- c_attn: a slice of B that is zero in every layer is left out of our targets; if B is
  block-structured like our exports (each slice uses only its own r columns), the slices get their
  own A (rank R / n: our export comes back as it went out); otherwise each slice gets the whole A
  (rank R) and its rows of B, which computes the same [B_q A; B_k A; B_v A] = B A;
- ranks that differ between modules (``rank_pattern``) are padded with zero rows of A and zero
  columns of B to the largest one; scales that differ (``alpha_pattern``) are folded into B
  (``B * s_module / s``): the function is unchanged, and the notes in the metadata say so;
- layers PEFT left out (``layers_to_transform``) get zero A and B (no update).
Refused with a message naming the file and field: DoRA, LoRA on the embeddings, ``lora_bias``,
``modules_to_save``, trainable tokens, and any tensor whose name or shape does not fit.
"""

import dataclasses
import json
import math
import os
import re
from typing import Dict, List, Optional, Tuple

import torch
from safetensors.torch import save

from lora_nlg.atomic import atomic_write
from lora_nlg.catalog import HUB_NAMES, hub_folder
from lora_nlg.jsonl import read_json
from lora_nlg.methods import MODULE_DIMS, MODULE_SLICES, TARGETS, LoRAConfig, MethodConfig, enabled_slices
from lora_nlg.methods.peft_backend import ADAPTER_CONFIG
from lora_nlg.model import GPT2_SIZES, GPT2Config
from lora_nlg.weights.adapter import (
    apply_adapter_weights,
    header_metadata,
    model_config_from_metadata,
    read_adapter,
    skeleton,
    write_adapter,
)
from lora_nlg.weights.layout import METADATA_KEY
from lora_nlg.weights.tensors import CheckpointError, read_safetensors, read_tensors

CONFIG_FILE = ADAPTER_CONFIG
WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."
SLICE_NAMES = ("q", "k", "v")
# PEFT's ``bias`` values mean what ours mean.
BIAS_MODES = ("none", "lora_only", "all")
# adapter_config.json settings we cannot carry over: (field, value that is fine, why not).
UNSUPPORTED = (
    ("use_dora", False, "DoRA adds a magnitude vector that plain LoRA does not have"),
    ("lora_bias", False, "a bias on lora_B is not part of our LoRA"),
    ("modules_to_save", None, "fully trained extra modules are not an adapter"),
    ("trainable_token_indices", None, "trainable token embeddings are not an adapter"),
    ("layer_replication", None, "replicated layers change the model's depth"),
    ("target_parameters", None, "LoRA on bare parameters is not on our modules"),
    ("use_qalora", False, "QA-LoRA pools the input"),
    ("alora_invocation_tokens", None, "activated LoRA switches on per token"),
)
PEFT_KEY = re.compile(
    r"base_model\.model\.(?:transformer\.)?h\.(\d+)\.("
    + "|".join(re.escape(p) for p in MODULE_SLICES)
    + r")\.lora_([AB])(?:\.[A-Za-z0-9_-]+)?\.weight"
)
PEFT_BIAS = re.compile(r"base_model\.model\.(?:transformer\.)?(.*?)(?:\.base_layer)?\.bias")


class NotRepresentable(CheckpointError):
    """The adapter cannot be written in the target format without changing what it computes."""


# ------------------------------------------------------------------------------------- export


def _dense_b(lora_b: torch.Tensor, enable) -> torch.Tensor:
    """Our stacked B (n * out_slice, r) -> PEFT's (len(enable) * out_slice, n * r) block matrix:
    slice j's B in its own rows and in the columns of its A; zero rows for disabled slices."""
    n, r = sum(enable), lora_b.shape[1]
    out_slice = lora_b.shape[0] // n
    full = lora_b.new_zeros(len(enable) * out_slice, n * r)
    j = 0
    for i, on in enumerate(enable):
        if on:
            full[i * out_slice : (i + 1) * out_slice, j * r : (j + 1) * r] = lora_b[j * out_slice : (j + 1) * out_slice]
            j += 1
    return full


def peft_alpha(scaling: float, rank: int, use_rslora: bool, integer_alpha: bool, where: str) -> float:
    """PEFT's ``lora_alpha`` that gives ``scaling`` at ``rank``."""
    if not math.isfinite(scaling):
        raise NotRepresentable(
            f"{where}: the LoRA scale is {scaling}; PEFT stores a finite lora_alpha "
            f"and computes lora_alpha / r from it, so no adapter config gives this scale"
        )
    alpha = scaling * (math.sqrt(rank) if use_rslora else rank)
    if integer_alpha:
        if not math.isclose(alpha, round(alpha), rel_tol=1e-9, abs_tol=1e-9):
            rule = "lora_alpha / sqrt(r)" if use_rslora else "lora_alpha / r"
            raise NotRepresentable(
                f"{where}: scale {scaling:g} at PEFT rank {rank} needs lora_alpha = {alpha!r} "
                f"({rule}), which is not an integer, and integer_alpha was asked for. Export without "
                f"--integer_alpha (PEFT itself computes the scale from a fractional lora_alpha), or "
                f"retrain with an alpha whose PEFT value is whole"
            )
        return int(round(alpha))
    return alpha


def to_peft(
    tensors: Dict[str, torch.Tensor],
    lora_config: LoRAConfig,
    model_config: GPT2Config,
    integer_alpha: bool = False,
    source: str = "adapter",
) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Our LoRA tensors -> ``(PEFT tensors, adapter_config fields)``; see the module docstring."""
    # Strict check of every key and shape against the config, on a backbone-free skeleton.
    apply_adapter_weights(skeleton(model_config, lora_config), tensors)
    use_rslora = lora_config.scaling_rule == "alpha/sqrt(r)"
    scaling = lora_config.scaling
    slices = enabled_slices(lora_config.targets)
    out, ranks, alphas = {}, {}, {}
    for path, enable in slices.items():
        rank = sum(enable) * lora_config.r
        ranks[path] = rank
        alphas[path] = peft_alpha(scaling, rank, use_rslora, integer_alpha, f"{source}: {path}")
        for i in range(model_config.n_layer):
            name = f"transformer.h.{i}.{path}"
            out[f"{PREFIX}{name}.lora_A.weight"] = tensors[f"{name}.lora_A"].contiguous()
            out[f"{PREFIX}{name}.lora_B.weight"] = _dense_b(tensors[f"{name}.lora_B"], enable).contiguous()
    out.update(_peft_biases(tensors, slices))
    # The config's r / lora_alpha: our r where some module has it (then alpha is ours under
    # alpha/r), else the one rank there is; the other modules go into the patterns.
    default = next((p for p in slices if ranks[p] == lora_config.r), next(iter(slices)))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": ranks[default],
        "lora_alpha": alphas[default],
        "use_rslora": use_rslora,
        "target_modules": sorted(slices),
        "rank_pattern": {p: ranks[p] for p in sorted(slices) if ranks[p] != ranks[default]},
        "alpha_pattern": {p: alphas[p] for p in sorted(slices) if alphas[p] != alphas[default]},
        "lora_dropout": lora_config.dropout,
        "bias": lora_config.bias,
        "fan_in_fan_out": True,  # transformers' GPT-2 layers are Conv1D
        "init_lora_weights": "gaussian" if lora_config.init == "gaussian" else True,
        "inference_mode": True,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    return out, config


def _peft_biases(tensors: Dict[str, torch.Tensor], slices) -> Dict[str, torch.Tensor]:
    """Trained biases under PEFT's names: PEFT keeps a wrapped layer's under base_layer."""
    out = {}
    for key, t in tensors.items():
        if key.endswith(".bias"):
            name = key[: -len(".bias")]
            wrapped = any(name.endswith("." + p) for p in slices) and ".h." in name
            out[f"{PREFIX}{name}{'.base_layer' if wrapped else ''}.bias"] = t.contiguous()
    return out


# What PEFT calls our tensors of each method, on a whole module (one slice: index 0 of our stacks).
PEFT_NAMES = {
    "dora": {"lora_magnitude": "lora_magnitude_vector.weight"},
    "vera": {"vera_lambda_d": "vera_lambda_d", "vera_lambda_b": "vera_lambda_b"},
    "fourierft": {"fourierft_spectrum": "fourierft_spectrum"},
}
# Why PEFT cannot take a method's adapter on slices of the fused c_attn.
NOT_ON_SLICES = {
    "dora": "PEFT's DoRA on the fused c_attn normalises all of its rows (k's too), which the adapter does not hold",
    "vera": "PEFT's VeRA on the fused c_attn has one lambda_d for q, k and v together, the adapter one per slice",
    "fourierft": "PEFT's FourierFT on the fused c_attn draws its frequencies over the whole (3C, C) matrix, the "
    "adapter over each (C, C) slice",
}


def method_to_peft(
    tensors: Dict[str, torch.Tensor], config: MethodConfig, model_config: GPT2Config, source: str
) -> Tuple[Dict[str, torch.Tensor], dict]:
    """A DoRA, VeRA or FourierFT adapter on whole modules -> ``(PEFT tensors, adapter_config fields)``."""
    apply_adapter_weights(skeleton(model_config, config), tensors)
    slices = enabled_slices(config.targets)
    partial = [p for p, enable in slices.items() if len(enable) > 1]
    if partial:
        raise NotRepresentable(
            f"{source}: {config.title} on {','.join(t for t in config.targets if t in SLICE_NAMES)}: "
            f"{NOT_ON_SLICES[config.name]}; export merged gives a plain GPT-2 instead"
        )
    names = PEFT_NAMES[config.name]
    out = {}
    for key, t in tensors.items():
        name, _, tensor = key.rpartition(".")
        if tensor in names:
            one = t[0] if tensor in ("vera_lambda_d", "fourierft_spectrum") else t  # (1, n) stacks of one module
            out[f"{PREFIX}{name}.{names[tensor]}"] = one.contiguous()
        elif tensor in ("lora_A", "lora_B"):
            out[f"{PREFIX}{name}.{tensor}.weight"] = t.contiguous()
    out.update(_peft_biases(tensors, slices))
    common = {
        "task_type": "CAUSAL_LM",
        "target_modules": sorted(slices),
        "bias": config.bias,
        "fan_in_fan_out": True,  # transformers' GPT-2 layers are Conv1D
        "inference_mode": True,
    }
    if config.name == "dora":
        lora_tensors = {k: v for k, v in tensors.items() if not k.endswith(".lora_magnitude")}
        lora_config = LoRAConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(LoRAConfig)})
        _, lora_fields = to_peft(lora_tensors, lora_config, model_config, source=source)
        return out, {**lora_fields, "use_dora": True}
    if config.name == "vera":
        fields = {
            "peft_type": "VERA",
            "r": config.r,
            "projection_prng_key": config.seed,
            "save_projection": False,  # PEFT draws A and B from the key, as we do
            "d_initial": config.d_initial,
            "vera_dropout": config.dropout,
        }
    else:
        fields = {
            "peft_type": "FOURIERFT",
            "n_frequency": config.n_frequency,
            "scaling": config.scaling,
            "random_loc_seed": config.seed,
            "init_weights": config.init == "zeros",
        }
    return out, {**fields, **common}


def export_peft(adapter_path, folder, base_model: Optional[str] = None, integer_alpha: bool = False) -> dict:
    """Write our adapter ``adapter_path`` as a PEFT folder; returns the adapter config written.

    base_model: ``base_model_name_or_path`` in the config (default: the Hub name of the model
    card, e.g. ``openai-community/gpt2-medium``; None for a shape that is no card).
    """
    tensors, metadata, lora_config, model_config = read_adapter(adapter_path)
    if type(lora_config) is LoRAConfig:
        peft_tensors, config = to_peft(tensors, lora_config, model_config, integer_alpha, str(adapter_path))
    else:
        peft_tensors, config = method_to_peft(tensors, lora_config, model_config, str(adapter_path))
    if base_model is None:  # a local path would be machine-specific: name the Hub model
        base_model = HUB_NAMES.get(model_config.model_card)
    config = {"base_model_name_or_path": base_model, **config}
    os.makedirs(folder, exist_ok=True)
    data = save(peft_tensors, metadata={"format": "pt", METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    with atomic_write(os.path.join(folder, WEIGHTS_FILES[0]), "wb") as f:
        f.write(data)
    with atomic_write(os.path.join(folder, CONFIG_FILE)) as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    return config


# ------------------------------------------------------------------------------------- import


def read_peft(folder) -> Tuple[Dict[str, torch.Tensor], dict, Optional[dict], str]:
    """``(tensors, adapter_config, our header metadata or None, weights file)`` of a PEFT folder."""
    folder = os.fspath(folder)
    config_path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{folder}: no {CONFIG_FILE}; not a PEFT adapter folder")
    config = read_json(config_path, CheckpointError)
    name = next((n for n in WEIGHTS_FILES if os.path.isfile(os.path.join(folder, n))), None)
    if name is None:
        raise CheckpointError(f"{folder}: no weights; expected one of {list(WEIGHTS_FILES)}")
    path = os.path.join(folder, name)
    header = None
    if name.endswith(".safetensors"):
        tensors, meta = read_safetensors(path)
        header = header_metadata(meta, path)
    else:
        tensors = read_tensors(path)  # torch.load(weights_only=True)
    return tensors, config, header, path


def _pattern_value(pattern: dict, name: str, default):
    """PEFT's lookup (``peft.utils.other.get_pattern_key``): the first key that matches the end
    of the module name as a regular expression, dot-separated."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _model_config(
    config: dict,
    header: Optional[dict],
    model_card: Optional[str],
    pretrained_config: Optional[dict],
    n_embd: int,
    n_layer: int,
    source: str,
) -> GPT2Config:
    """The backbone shape: our header, the backbone's config.json, the card given, the card the
    adapter's base model names, or the card whose n_embd and depth the tensors have."""
    if pretrained_config is not None:
        keys = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon")
        shape = GPT2Config(**{k: pretrained_config[k] for k in keys if k in pretrained_config})
    elif model_card is not None:
        shape = GPT2Config.from_card(model_card)
    elif header is not None and ("model_config" in header or "model_card" in header):
        shape = model_config_from_metadata(header, source)
    else:
        base = str(config.get("base_model_name_or_path") or "")
        by_hub = {hub_folder(card): card for card in HUB_NAMES}
        card = by_hub.get(base.rstrip("/").split("/")[-1])
        if card is None:
            fits = [c for c, s in GPT2_SIZES.items() if s["n_embd"] == n_embd and s["n_layer"] >= n_layer]
            if len(fits) != 1:
                raise CheckpointError(
                    f"{source}: cannot tell the GPT-2 size (base_model_name_or_path={base!r}, "
                    f"n_embd={n_embd}); pass the model card or the pretrained backbone"
                )
            card = fits[0]
        shape = GPT2Config.from_card(card)
    if shape.n_embd != n_embd or shape.n_layer < n_layer:
        raise CheckpointError(
            f"{source}: LoRA tensors have n_embd={n_embd} and {n_layer} layers; the "
            f"backbone has n_embd={shape.n_embd} and {shape.n_layer} layers"
        )
    return shape


def _check_config(config: dict, cfg_source: str) -> str:
    """Refuse what does not convert; the bias mode."""
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{cfg_source}: peft_type is {config.get('peft_type')!r}; only LORA converts")
    for field, fine, why in UNSUPPORTED:
        value = config.get(field, fine)
        if value not in (fine, None, False, [], {}):
            raise NotRepresentable(f"{cfg_source}: field {field!r} = {value!r} is not supported ({why})")
    for field in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(field)
        if pattern is not None and not isinstance(pattern, dict):
            raise CheckpointError(f"{cfg_source}: field {field!r} must be an object, got {type(pattern).__name__}")
        for key in pattern or {}:
            try:
                re.compile(key)
            except re.error as e:
                raise CheckpointError(
                    f"{cfg_source}: field {field!r}: {key!r} is not a regular expression ({e})"
                ) from None
    r = config.get("r", 8)
    if type(r) is not int or r < 1:
        raise CheckpointError(f"{cfg_source}: field 'r' = {r!r}; expected an integer >= 1")
    bias_mode = config.get("bias", "none")
    if bias_mode not in BIAS_MODES:
        raise CheckpointError(f"{cfg_source}: field 'bias' = {bias_mode!r}; expected one of {BIAS_MODES}")
    return bias_mode


def _scaled_modules(peft_tensors: Dict[str, torch.Tensor], config: dict, bias_mode: str, source: str):
    """``({(layer, module): (A (R, in), B (out, R), scale)}, biases under our names)``, every
    rank checked against the config (``r`` / ``rank_pattern``)."""
    found: Dict[Tuple[int, str], Dict[str, torch.Tensor]] = {}
    biases: Dict[str, torch.Tensor] = {}
    for key, t in peft_tensors.items():
        m = PEFT_KEY.fullmatch(key)
        if m:
            found.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t.float()
            continue
        b = PEFT_BIAS.fullmatch(key)
        if b and bias_mode != "none":
            biases[f"transformer.{b.group(1)}.bias"] = t.float()
            continue
        raise CheckpointError(
            f"{source}: tensor {key!r} is not LoRA on GPT-2's c_attn, c_proj or c_fc "
            f"(nor a bias, adapter bias={bias_mode!r})"
        )
    if not found:
        raise CheckpointError(f"{source}: no LoRA tensors")
    use_rslora = bool(config.get("use_rslora", False))
    r_default, alpha_default = config.get("r", 8), config.get("lora_alpha", 8)
    modules: Dict[Tuple[int, str], Tuple[torch.Tensor, torch.Tensor, float]] = {}
    for (i, path), ab in sorted(found.items()):
        name = f"transformer.h.{i}.{path}"
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{source}: {name} has lora_{''.join(ab)} without its partner")
        a, b = ab["A"], ab["B"]
        rank = a.shape[0]
        want_rank = _pattern_value(config.get("rank_pattern"), name, r_default)
        if b.shape[1] != rank or rank != want_rank:
            raise CheckpointError(
                f"{source}: {name}: lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)}, "
                f"but {CONFIG_FILE} says rank {want_rank} (fields r / rank_pattern)"
            )
        alpha = _pattern_value(config.get("alpha_pattern"), name, alpha_default)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise CheckpointError(
                f"{source}: {CONFIG_FILE}: lora_alpha (or alpha_pattern) for {name} is {alpha!r}, not a finite number"
            )
        alpha = float(alpha)
        modules[(i, path)] = (a, b, alpha / (math.sqrt(rank) if use_rslora else rank))
    return modules, biases


def _c_attn_layout(modules, C: int, notes: List[str]) -> Tuple[Tuple[bool, ...], bool]:
    """Which q, k, v slices of c_attn carry an update anywhere, and whether every B is
    block-structured (each slice uses only its own r columns of A)."""
    attn = {i: (a, b) for (i, p), (a, b, _) in modules.items() if p == "attn.c_attn"}
    if not attn:
        return (True, True, True), False
    live = [any(bool(b[j * C : (j + 1) * C].any()) for a, b in attn.values()) for j in range(3)]
    enable = tuple(live) if any(live) else (True, True, True)
    n = sum(enable)
    block = False
    if all(a.shape[0] % n == 0 for a, _ in attn.values()):
        block = True
        for a, b in attn.values():
            r = a.shape[0] // n
            for j, s in enumerate(k for k in range(3) if enable[k]):
                rows = b[s * C : (s + 1) * C]
                if rows[:, : j * r].any() or rows[:, (j + 1) * r :].any():
                    block = False
    if not all(enable):
        notes.append(
            f"c_attn: slices {[SLICE_NAMES[j] for j in range(3) if not enable[j]]} are zero in "
            f"every layer; LoRA kept on {[SLICE_NAMES[j] for j in range(3) if enable[j]]}"
        )
    notes.append(
        "c_attn: block-structured B, each slice has its own A (rank R / n)"
        if block and n > 1
        else "c_attn: each slice gets PEFT's whole A (rank R) and its rows of B"
        if n > 1
        else "c_attn: one slice"
    )
    return enable, block


def _our_parts(modules, enable, block: bool, C: int):
    """Per (layer, path): our A and B parts (one per enabled slice), their rank and the scale."""
    ours = {}
    on = [s for s in range(3) if enable[s]]
    for (i, path), (a, b, scale) in modules.items():
        if path != "attn.c_attn":
            ours[(i, path)] = ([a], [b], a.shape[0], scale)
        elif block:
            r = a.shape[0] // len(on)
            ours[(i, path)] = (
                [a[j * r : (j + 1) * r] for j in range(len(on))],
                [b[s * C : (s + 1) * C, j * r : (j + 1) * r] for j, s in enumerate(on)],
                r,
                scale,
            )
        else:
            ours[(i, path)] = ([a] * len(on), [b[s * C : (s + 1) * C] for s in on], a.shape[0], scale)
    return ours


def _one_rank_and_scale(ours, model_config: GPT2Config, enable, notes: List[str]):
    """Our tensors with one r and one scale for all modules: ranks padded with zeros, differing
    scales folded into B, layers PEFT left out given zero A and B; returns ``(tensors, paths, r,
    scale)``."""
    C = model_config.n_embd
    r_star = max(r for _, _, r, _ in ours.values())
    s_star = [s for _, _, r, s in ours.values() if r == r_star][0]
    if any(not math.isclose(s, s_star, rel_tol=1e-12) for _, _, _, s in ours.values()):
        notes.append(f"scales differ between modules (alpha_pattern); folded into B relative to {s_star:g}")
    if any(r != r_star for _, _, r, _ in ours.values()):
        notes.append(f"ranks differ between modules (rank_pattern); padded with zeros to r={r_star}")
    paths = sorted({p for _, p in ours}, key=list(MODULE_SLICES).index)
    missing = [(i, p) for i in range(model_config.n_layer) for p in paths if (i, p) not in ours]
    if missing:
        notes.append(
            f"{len(missing)} (layer, module) pairs have no PEFT adapter (layers_to_transform): zero LoRA there"
        )
    tensors: Dict[str, torch.Tensor] = {}
    for i in range(model_config.n_layer):
        for p in paths:
            name = f"transformer.h.{i}.{p}"
            if (i, p) in ours:
                parts_a, parts_b, r, s = ours[(i, p)]
                fold = 1.0 if math.isclose(s, s_star, rel_tol=1e-12) else s / s_star
                pa = [torch.cat([x, x.new_zeros(r_star - r, x.shape[1])]) for x in parts_a]
                pb = [torch.cat([y * fold, y.new_zeros(y.shape[0], r_star - r)], dim=1) for y in parts_b]
            else:
                n = sum(enable) if p == "attn.c_attn" else 1
                in_f = MODULE_DIMS[p][0] * C
                out_f = MODULE_DIMS[p][1] * C // MODULE_SLICES[p]
                pa = [torch.zeros(r_star, in_f)] * n
                pb = [torch.zeros(out_f, r_star)] * n
            tensors[f"{name}.lora_A"] = torch.cat(pa)
            tensors[f"{name}.lora_B"] = torch.cat(pb)
    return tensors, paths, r_star, s_star


def from_peft(
    peft_tensors: Dict[str, torch.Tensor],
    config: dict,
    header: Optional[dict] = None,
    model_card: Optional[str] = None,
    pretrained_config: Optional[dict] = None,
    source: str = "PEFT adapter",
) -> Tuple[Dict[str, torch.Tensor], LoRAConfig, GPT2Config, dict]:
    """PEFT tensors and adapter config -> ``(our tensors, LoRAConfig, GPT2Config, extra metadata)``."""
    bias_mode = _check_config(config, f"{source}: {CONFIG_FILE}")
    modules, biases = _scaled_modules(peft_tensors, config, bias_mode, source)
    (_, path0), (a0, _, _) = next(iter(modules.items()))
    n_embd = a0.shape[1] // (4 if path0 == "mlp.c_proj" else 1)  # in_features: C, or 4C for mlp.c_proj
    n_layer = max(i for i, _ in modules) + 1
    model_config = _model_config(config, header, model_card, pretrained_config, n_embd, n_layer, source)
    notes: List[str] = []
    enable, block = _c_attn_layout(modules, model_config.n_embd, notes)
    ours = _our_parts(modules, enable, block, model_config.n_embd)
    tensors, paths, r_star, s_star = _one_rank_and_scale(ours, model_config, enable, notes)
    tensors.update(biases)

    use_rslora = bool(config.get("use_rslora", False))
    targets = [t for t, (p, s) in TARGETS.items() if p in paths and (s is None or enable[s])]
    init = "gaussian" if config.get("init_lora_weights") == "gaussian" else "kaiming"
    rule = "alpha/sqrt(r)" if use_rslora else "alpha/r"
    alpha_star = s_star * (math.sqrt(r_star) if use_rslora else r_star)
    lora_config = LoRAConfig(
        r=r_star,
        alpha=alpha_star,
        dropout=float(config.get("lora_dropout", 0.0)),
        targets=tuple(targets),
        scaling_rule=rule,
        init=init,
        bias=bias_mode,
    )
    extra = {
        "imported_from": {
            "format": "peft",
            "folder": os.path.basename(os.path.dirname(os.path.abspath(source))),
            "peft_version": config.get("peft_version"),
            "base_model_name_or_path": config.get("base_model_name_or_path"),
            "notes": notes,
        }
    }
    if header is not None:  # our own export: take back the exact alpha and what else it said
        try:
            theirs = LoRAConfig.from_dict(header)
        except (TypeError, ValueError):
            theirs = None
        if (
            theirs is not None
            and (theirs.r, theirs.scaling_rule, tuple(theirs.targets), theirs.bias)
            == (lora_config.r, rule, tuple(targets), bias_mode)
            and math.isclose(theirs.scaling, lora_config.scaling, rel_tol=1e-9)
        ):
            lora_config = theirs
            reserved = set(lora_config.to_dict()) | {"model_card", "model_config", "imported_from"}
            extra.update({k: v for k, v in header.items() if k not in reserved})
    return tensors, lora_config, model_config, extra


def import_peft(folder, out_path, model_card: Optional[str] = None, pretrained: Optional[str] = None) -> LoRAConfig:
    """Convert a PEFT folder into our adapter file ``out_path``; returns its LoRA config.

    pretrained: the backbone folder (its ``config.json`` gives the model's shape; only needed when
    the shape is neither a model card nor recorded in the adapter)."""
    peft_tensors, config, header, path = read_peft(folder)
    pretrained_config = None
    if pretrained is not None:
        cfg_path = os.path.join(pretrained, "config.json")
        if not os.path.isfile(cfg_path):
            raise CheckpointError(f"{pretrained}: no config.json to read the model's shape from")
        pretrained_config = read_json(cfg_path, CheckpointError)
    tensors, lora_config, model_config, extra = from_peft(
        peft_tensors, config, header, model_card, pretrained_config, source=path
    )
    write_adapter(out_path, tensors, lora_config, model_config, extra)
    return lora_config
