"""Adapters as data: write one from tensors alone, read its LoRA config back, measure its update.

Converters (``peft_adapter``, ``seed_import``) produce LoRA tensors and a ``LoRAConfig`` without a
backbone in memory; ``write_adapter`` saves them through ``checkpoint.save_lora`` (so the file is
exactly what training writes) on a model skeleton whose backbone lives on the ``meta`` device:
only the LoRA tensors are real, so converting a GPT-2 L adapter costs megabytes, not gigabytes.
"""
import dataclasses
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from lora_nlg.checkpoint import CheckpointError, apply_lora_weights, load_lora, save_lora
from lora_nlg.lora import TARGETS, LoRAConfig, apply_lora, lora_modules
from lora_nlg.model import GPT2Config, GPT2LMModel

# LoRA modules inside a GPT-2 block, and how many output slices each has (q, k, v for c_attn).
MODULE_SLICES = {"attn.c_attn": 3, "attn.c_proj": 1, "mlp.c_fc": 1, "mlp.c_proj": 1}


def enabled_slices(targets) -> Dict[str, Tuple[bool, ...]]:
    """Per module path, which output slices carry LoRA: ``("q", "v")`` -> c_attn (True, False, True)."""
    out: Dict[str, list] = {}
    for t in targets:
        path, slice_ = TARGETS[t]
        if slice_ is None:
            out[path] = [True]
        else:
            out.setdefault(path, [False] * MODULE_SLICES[path])[slice_] = True
    return {path: tuple(e) for path, e in out.items()}


def model_config_from_metadata(metadata: dict, source: str) -> GPT2Config:
    """The backbone shape an adapter was trained on (``model_config``, else ``model_card``)."""
    shape = metadata.get("model_config")
    if isinstance(shape, dict):
        fields = {f.name for f in dataclasses.fields(GPT2Config)}
        return GPT2Config(**{k: v for k, v in shape.items() if k in fields})
    card = metadata.get("model_card")
    if card:
        return GPT2Config.from_card(card)
    raise CheckpointError(f"{source}: the metadata names neither model_config nor model_card")


def lora_config_from_metadata(metadata: Optional[dict], source: str) -> LoRAConfig:
    """The ``LoRAConfig`` stored in an adapter's metadata; an error if r, alpha or the scaling rule
    are missing (the seed's files store none of them: import those with ``seed_import``)."""
    if metadata is None:
        raise CheckpointError(
            f"{source}: no lora_nlg metadata, so r, alpha and the scaling rule are unknown "
            f"(a seed checkpoint? convert it first: lora_export.py import seed FILE OUT --lora_dim R "
            f"--lora_alpha A --model_card CARD)")
    missing = [k for k in ("r", "alpha", "scaling_rule", "targets") if k not in metadata]
    if missing:
        raise CheckpointError(f"{source}: metadata lacks {missing}; the update's scale is unknown")
    try:
        cfg = LoRAConfig.from_dict(metadata)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: metadata is not a valid LoRA config: {e}") from None
    stored = metadata.get("scaling")
    if stored is not None and not math.isclose(stored, cfg.scaling, rel_tol=1e-9, abs_tol=0.0):
        raise CheckpointError(f"{source}: metadata says scaling={stored}, but {cfg.scaling_rule} with "
                              f"alpha={cfg.alpha}, r={cfg.r} gives {cfg.scaling}")
    return cfg


def skeleton(model_config: GPT2Config, lora_config: LoRAConfig) -> GPT2LMModel:
    """A ``GPT2LMModel`` with LoRA whose backbone is on the meta device (no memory) and whose
    LoRA tensors are real, zero CPU tensors: enough for ``apply_lora_weights`` and ``save_lora``."""
    with torch.device("meta"):
        model = apply_lora(GPT2LMModel(model_config), lora_config)
    for _, m in lora_modules(model):
        m.lora_A = nn.Parameter(torch.zeros(m.lora_A.shape))
        m.lora_B = nn.Parameter(torch.zeros(m.lora_B.shape))
    # Trained biases (bias lora_only / all) are part of the adapter: make those real too.
    wrapped = {id(m.base_layer) for _, m in lora_modules(model)}
    for module in model.modules():
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter) and bias.is_meta and (
                lora_config.bias == "all" or (lora_config.bias == "lora_only" and id(module) in wrapped)):
            module.bias = nn.Parameter(torch.zeros(bias.shape))
    return model


def write_adapter(path, tensors: Dict[str, torch.Tensor], lora_config: LoRAConfig,
                  model_config: GPT2Config, metadata: Optional[dict] = None) -> None:
    """Save LoRA ``tensors`` (keys of ``lora_state_dict``) as our adapter file, strictly checked
    against ``lora_config`` on a ``model_config`` backbone."""
    model = skeleton(model_config, lora_config)
    apply_lora_weights(model, {k: v.float() for k, v in tensors.items()})
    save_lora(path, model, metadata)


def read_adapter(path) -> Tuple[Dict[str, torch.Tensor], dict, LoRAConfig, GPT2Config]:
    """``(tensors, metadata, lora_config, model_config)`` of one of our adapter files."""
    tensors, metadata = load_lora(path)
    source = str(path)
    return tensors, metadata, lora_config_from_metadata(metadata, source), \
        model_config_from_metadata(metadata, source)


def update_norms(tensors: Dict[str, torch.Tensor], lora_config: LoRAConfig) -> Dict[str, float]:
    """``||scaling * B A||_F`` of every LoRA module (key: module name), the update it adds to the
    layer's weight; for a fused c_attn that is the whole (3C, C) block with zero rows where off."""
    norms = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A"):
            continue
        name = key[:-len(".lora_A")]
        b = tensors[name + ".lora_B"].double()
        a = a.double()
        n = a.shape[0] // lora_config.r  # enabled slices: the update is block-diagonal in them
        out_slice = b.shape[0] // n
        blocks = [b[j * out_slice:(j + 1) * out_slice] @ a[j * lora_config.r:(j + 1) * lora_config.r]
                  for j in range(n)]
        norms[name] = lora_config.scaling * math.sqrt(sum(float((d * d).sum()) for d in blocks))
    return norms
