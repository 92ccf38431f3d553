"""Our adapter file: an adapter's tensors as safetensors, described in the header, read back strictly.

``save_adapter`` / ``load_adapter``: a safetensors file of the adapter's tensors only, keyed like
``adapter_state_dict`` (``transformer.h.0.attn.c_attn.lora_A``), with a JSON description (the
method's config: for LoRA r, alpha, scaling rule, targets; ``"method"`` for any other method; the
model card, and whatever the caller adds: step, config, ...) in the header metadata under
``"lora_nlg"``. Upstream's LoRA-only ``.pt`` files load too, without metadata: upstream never
stored r or alpha, so the caller supplies them (``lora_nlg.weights.upstream``).

Converters (``peft``, ``upstream``) produce adapter tensors and a config without a backbone in
memory; ``write_adapter`` saves them through ``save_adapter`` (so the file is exactly what training
writes) on a model skeleton whose backbone lives on the ``meta`` device: only the adapter's tensors
are real, so converting a GPT-2 L adapter costs megabytes, not gigabytes.
"""

import dataclasses
import json
import math
import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from safetensors.torch import save

from lora_nlg.atomic import atomic_write
from lora_nlg.methods import (
    METHODS,
    LoRAConfig,
    MethodConfig,
    adapter_config_of,
    adapter_layers,
    adapter_state_dict,
    apply_adapter,
    method_of,
)
from lora_nlg.model import GPT2Config, GPT2LMModel
from lora_nlg.weights.layout import ADAPTER_FILE, METADATA_KEY
from lora_nlg.weights.tensors import LORA_KEY, CheckpointError, check_finite, fit_report, read_safetensors, read_tensors


def save_adapter(path, model: torch.nn.Module, metadata: Optional[dict] = None) -> None:
    """Write the adapter tensors of ``model`` (``adapter_state_dict``) as safetensors, atomically.

    The header metadata ``"lora_nlg"`` holds JSON: the model's adapter config (``to_dict``: for
    LoRA r, alpha, dropout, targets, scaling_rule, scaling, init, bias), ``model_card`` and
    ``model_config``, then the caller's ``metadata`` (step, epoch, config, val loss, ...), which must
    be JSON-serialisable and must not contradict the model's adapter config. ``path``: a file, or an existing directory (the
    file is then ``<dir>/adapter.safetensors``).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, ADAPTER_FILE)
    if not adapter_layers(model):
        raise CheckpointError(f"{path}: the model has no adapter layers to save (apply_adapter first)")
    cfg = adapter_config_of(model)
    info = {**cfg.to_dict(), "model_card": model.config.model_card, "model_config": dataclasses.asdict(model.config)}
    try:
        extra = json.loads(json.dumps(dict(metadata or {})))  # tuples become lists, as stored
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata must be JSON-serialisable: {e}") from None
    clash = {k: (info[k], v) for k, v in extra.items() if k in info and info[k] != v}
    if clash:
        raise CheckpointError(
            f"{path}: metadata contradicts the model's {cfg.title} config (key: model's value, given value): {clash}"
        )
    text = json.dumps({**info, **extra}, sort_keys=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter_state_dict(model, cfg.bias).items()}
    data = save(tensors, metadata={"format": "pt", METADATA_KEY: text})
    with atomic_write(path, "wb") as f:
        f.write(data)


def load_adapter(path) -> Tuple[Dict[str, torch.Tensor], Optional[dict]]:
    """``(tensors, metadata)`` of an adapter: our safetensors (metadata from the header, or None
    if it has none) or a checkpoint directory holding ``adapter.safetensors``; or upstream's
    ``.pt`` / ``.bin`` (metadata None: the caller supplies r and alpha). From an upstream file only
    the ``lora_A`` / ``lora_B`` tensors are taken (its final checkpoint also holds the frozen
    backbone), with the ``module.`` prefix removed.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, ADAPTER_FILE)):
            raise CheckpointError(f"{path}: a directory without {ADAPTER_FILE}")
        path = os.path.join(path, ADAPTER_FILE)
    if path.endswith(".safetensors"):
        tensors, header = read_safetensors(path)
        check_finite(tensors, path)
        return tensors, header_metadata(header, path)
    tensors = {}
    for key, t in read_tensors(path).items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if LORA_KEY.fullmatch(key):
            tensors[key] = t
    if not tensors:
        raise CheckpointError(f"{path}: no LoRA tensors (keys ending in lora_A / lora_B)")
    check_finite(tensors, path)
    return tensors, None


def header_metadata(header: dict, path) -> Optional[dict]:
    """Our description in a safetensors header (a JSON object under ``"lora_nlg"``), or None."""
    if METADATA_KEY not in header:
        return None
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: header metadata {METADATA_KEY!r} is not valid JSON: {e}") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(
            f"{path}: header metadata {METADATA_KEY!r} is {type(metadata).__name__}, expected an object"
        )
    return metadata


def apply_adapter_weights(model: torch.nn.Module, tensors: Dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors into the model's adapter layers (apply_adapter first), strictly:
    missing, unexpected and mis-shaped keys are listed in one error. The adapter must not be merged."""
    modules = adapter_layers(model)
    if not modules:
        raise CheckpointError(
            "the model has no adapter layers: apply_adapter(model, config) before apply_adapter_weights"
        )
    cfg = adapter_config_of(model)
    merged = [n for n, m in modules if m.merged]
    if merged:
        raise CheckpointError(
            f"{cfg.title} is merged in {merged[:3]}...: unmerge_adapter(model) before loading new weights"
        )
    # adapter_state_dict's tensors share storage with the parameters: copying into them loads.
    targets = adapter_state_dict(model, cfg.bias)
    report = fit_report(
        f"{cfg.title} tensors do not fit the model's {cfg.title} ({shape_settings(cfg)}, targets={list(cfg.targets)}):",
        [k for k in targets if k not in tensors],
        [k for k in tensors if k not in targets],
        [
            f"{k}: {tuple(t.shape)} given, {tuple(targets[k].shape)} expected"
            for k, t in tensors.items()
            if k in targets and t.shape != targets[k].shape
        ],
    )
    if report:
        raise CheckpointError(report)
    with torch.no_grad():
        for k, t in tensors.items():
            targets[k].copy_(t)


# Claims beyond any GPT-2 are refused before they are believed (the LoRA tensors check n_layer and
# n_embd; nothing in an adapter checks these two).
MAX_VOCAB, MAX_POSITIONS = 1 << 20, 1 << 16


def model_config_from_metadata(metadata: dict, source: str) -> GPT2Config:
    """The backbone shape an adapter was trained on (``model_config``, else ``model_card``)."""
    shape = metadata.get("model_config")
    if isinstance(shape, dict):
        fields = {f.name: f.type for f in dataclasses.fields(GPT2Config)}
        values = {k: v for k, v in shape.items() if k in fields}
        for k, v in values.items():
            ok = (type(v) is int and v > 0) if fields[k] in (int, "int") else isinstance(v, (int, float)) and 0 <= v < 1
            if not ok:
                raise CheckpointError(f"{source}: metadata model_config.{k} = {v!r} is not a valid GPT-2 setting")
        config = GPT2Config(**values)
        if config.n_embd % config.n_head or config.vocab_size > MAX_VOCAB or config.n_positions > MAX_POSITIONS:
            raise CheckpointError(
                f"{source}: metadata model_config (n_embd={config.n_embd}, n_head={config.n_head}, "
                f"vocab_size={config.vocab_size}, n_positions={config.n_positions}) describes no GPT-2 "
                f"(n_embd must divide by n_head; at most {MAX_VOCAB} tokens and {MAX_POSITIONS} positions)"
            )
        return config
    card = metadata.get("model_card")
    if card:
        try:
            return GPT2Config.from_card(card)
        except ValueError as e:
            raise CheckpointError(f"{source}: metadata model_card: {e}") from None
    raise CheckpointError(f"{source}: the metadata names neither model_config nor model_card")


def shape_settings(config: MethodConfig) -> str:
    """The settings that fix an adapter's tensor shapes, for messages: ``r=4``."""
    return ", ".join(f"{k}={getattr(config, k)}" for k in config.shape_fields)


def check_adapter_shapes(
    tensors: Dict[str, torch.Tensor], config: MethodConfig, model_config: GPT2Config, source: str
) -> None:
    """The adapter tensors of a file (all but trained biases) must be exactly those its description
    implies, checked before anything is built from the description."""
    want = config.tensor_shapes(model_config.n_layer, model_config.n_embd)
    have = {k: tuple(t.shape) for k, t in tensors.items() if not k.endswith(".bias")}
    report = fit_report(
        f"{source}: the {config.title} tensors do not fit its description ({shape_settings(config)}, targets="
        f"{list(config.targets)}, n_layer={model_config.n_layer}, n_embd={model_config.n_embd}):",
        [k for k in want if k not in have],
        [k for k in have if k not in want],
        [f"{k}: {have[k]} in the file, {want[k]} described" for k in want if k in have and have[k] != want[k]],
    )
    if report:
        raise CheckpointError(report)


def adapter_config_from_metadata(metadata: Optional[dict], source: str) -> MethodConfig:
    """The method config stored in an adapter's metadata; an error if a setting is missing (for LoRA
    r, alpha, the scaling rule and targets: upstream's files store none of them, import those with
    ``lora_nlg.weights.upstream``)."""
    if metadata is None:
        raise CheckpointError(
            f"{source}: no lora_nlg metadata, so r, alpha and the scaling rule are unknown "
            f"(an upstream checkpoint? convert it first: lora_export.py import upstream FILE OUT --lora_dim R "
            f"--lora_alpha A --model_card CARD)"
        )
    method = method_of(metadata)
    if method not in METHODS:
        raise CheckpointError(f"{source}: metadata names the method {method!r}; known methods: {sorted(METHODS)}")
    config_class = METHODS[method]
    if method == LoRAConfig.name:  # the settings files have always held (others fall back to defaults)
        missing = [k for k in ("r", "alpha", "scaling_rule", "targets") if k not in metadata]
        if missing:
            raise CheckpointError(f"{source}: metadata lacks {missing}; the update's scale is unknown")
    else:  # every setting: a seed left out would silently give other weights
        missing = [f.name for f in dataclasses.fields(config_class) if f.name not in metadata]
        if missing:
            raise CheckpointError(f"{source}: metadata of a {config_class.title} adapter lacks {missing}")
    try:
        cfg = config_class.from_dict(metadata)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: metadata is not a valid {config_class.title} config: {e}") from None
    stored = metadata.get("scaling")
    if isinstance(cfg, LoRAConfig) and stored is not None and not math.isclose(stored, cfg.scaling, rel_tol=1e-9):
        raise CheckpointError(
            f"{source}: metadata says scaling={stored}, but {cfg.scaling_rule} with "
            f"alpha={cfg.alpha}, r={cfg.r} gives {cfg.scaling}"
        )
    return cfg


def skeleton(model_config: GPT2Config, config: MethodConfig) -> GPT2LMModel:
    """A ``GPT2LMModel`` with an adapter whose backbone is on the meta device (no memory) and whose
    adapter tensors are real, zero CPU tensors: enough for ``apply_adapter_weights`` and ``save_adapter``."""
    with torch.device("meta"):
        model = apply_adapter(GPT2LMModel(model_config), config)
    for _, m in adapter_layers(model):
        m.materialize()
    # Trained biases (bias lora_only / all) are part of the adapter: make those real too.
    wrapped = {id(m.base_layer) for _, m in adapter_layers(model)}
    for module in model.modules():
        bias = getattr(module, "bias", None)
        if (
            isinstance(bias, nn.Parameter)
            and bias.is_meta
            and (config.bias == "all" or (config.bias == "lora_only" and id(module) in wrapped))
        ):
            module.bias = nn.Parameter(torch.zeros(bias.shape))
    return model


def write_adapter(
    path,
    tensors: Dict[str, torch.Tensor],
    lora_config: MethodConfig,
    model_config: GPT2Config,
    metadata: Optional[dict] = None,
) -> None:
    """Save adapter ``tensors`` (keys of ``adapter_state_dict``) as our adapter file, strictly checked
    against ``lora_config`` on a ``model_config`` backbone."""
    check_adapter_shapes(tensors, lora_config, model_config, str(path))
    model = skeleton(model_config, lora_config)
    apply_adapter_weights(model, {k: v.float() for k, v in tensors.items()})
    save_adapter(path, model, metadata)


def read_adapter(path) -> Tuple[Dict[str, torch.Tensor], dict, MethodConfig, GPT2Config]:
    """``(tensors, metadata, method config, model_config)`` of one of our adapter files."""
    tensors, metadata = load_adapter(path)
    source = str(path)
    lora_config = adapter_config_from_metadata(metadata, source)
    model_config = model_config_from_metadata(metadata, source)
    check_adapter_shapes(tensors, lora_config, model_config, source)
    return tensors, metadata, lora_config, model_config


def update_norms(tensors: Dict[str, torch.Tensor], lora_config: LoRAConfig) -> Dict[str, float]:
    """``||scaling * B A||_F`` of every LoRA module (key: module name), the update it adds to the
    layer's weight; for a fused c_attn that is the whole (3C, C) block with zero rows where off."""
    norms = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A"):
            continue
        name = key[: -len(".lora_A")]
        b = tensors[name + ".lora_B"].double()
        a = a.double()
        n = a.shape[0] // lora_config.r  # enabled slices: the update is block-diagonal in them
        out_slice = b.shape[0] // n
        blocks = [
            b[j * out_slice : (j + 1) * out_slice] @ a[j * lora_config.r : (j + 1) * lora_config.r] for j in range(n)
        ]
        norms[name] = lora_config.scaling * math.sqrt(sum(float((d * d).sum()) for d in blocks))
    return norms
