"""GPT-2 backbones in (any of the usual files), Hugging Face GPT-2 folders out.

``load_pretrained`` reads
- a Hugging Face GPT-2 folder: ``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``
  (or their sharded ``*.index.json`` forms), keys with or without the ``transformer.`` prefix;
- a single file of the same tensors, or upstream's ``.pt`` (``{'model_state_dict': ...}``, keys
  prefixed ``module.`` by DistributedDataParallel, TF-style ``.g`` / ``.b`` / ``.w`` names).
GPT-2's ``Conv1D`` stores weights ``(in, out)``; our ``nn.Linear`` stores ``(out, in)``: the
loader transposes (a file already in ``nn.Linear`` layout, e.g. our own ``model.state_dict()``,
is recognised by the non-square ``c_attn`` and loaded as is). Loading is strict: every missing,
unexpected or mis-shaped key is listed in one ``CheckpointError``.

Order: ``load_pretrained`` builds a plain model; put LoRA on it afterwards (``apply_adapter``) and
then copy adapter tensors in (``lora_nlg.weights.adapter.apply_adapter_weights``).
``save_pretrained`` accepts a model with LoRA and writes the merged weights (the model itself is
left as it is).
"""

import json
import os
import re
import shutil
from typing import Dict, Optional, Tuple

import torch
from safetensors.torch import save_file

from lora_nlg.catalog import EOS_ID
from lora_nlg.jsonl import read_json
from lora_nlg.methods import adapter_layers
from lora_nlg.model import GPT2_SIZES, GPT2Config, GPT2LMModel
from lora_nlg.weights.layout import new_temp_dir, swap_in
from lora_nlg.weights.tensors import (
    CONV1D_WEIGHTS,
    HARMLESS,
    LM_HEADS,
    LORA_KEY,
    TF_SUFFIXES,
    CheckpointError,
    check_finite,
    fit_report,
    read_tensors,
)

# A Hugging Face folder's weights, in order of preference.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HF_FILES_WE_WRITE = ("config.json", "model.safetensors")
# Hugging Face activations equal to GPT-2's tanh-approximated GELU (ours).
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


# ------------------------------------------------------------------------------------- backbone


def _read_folder(folder: str) -> Tuple[Dict[str, torch.Tensor], Optional[dict], str]:
    """Tensors and config.json (or None) of a Hugging Face folder, and the file(s) read."""
    name = next((f for f in HF_WEIGHT_FILES if os.path.isfile(os.path.join(folder, f))), None)
    if name is None:
        raise CheckpointError(
            f"{folder}: no weights; expected one of {list(HF_WEIGHT_FILES)}, found {sorted(os.listdir(folder))}"
        )
    weights = os.path.join(folder, name)
    if name.endswith(".index.json"):
        weight_map = read_json(weights, CheckpointError).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{weights}: no 'weight_map' object")
        shards = sorted(set(map(str, weight_map.values())))
        tensors = {}
        for shard in shards:
            tensors.update(read_tensors(os.path.join(folder, shard)))
    else:
        tensors = read_tensors(weights)
    config = None
    config_path = os.path.join(folder, "config.json")
    if os.path.isfile(config_path):
        config = read_json(config_path, CheckpointError)
    return tensors, config, weights


def _normalize_backbone_keys(tensors: Dict[str, torch.Tensor], source: str):
    """Rename to our names relative to ``transformer`` (``h.0.ln_1.weight``, ``wte.weight``).

    Returns ``(by_name, original_key_of_name)``; ``lm_head.*`` keys keep their names.
    """
    by_name, original = {}, {}
    for key, t in tensors.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        for tf, ours in TF_SUFFIXES.items():
            if name.endswith(tf):
                name = name[: -len(tf)] + ours
        if name.startswith("transformer."):
            name = name[len("transformer.") :]
        if name in by_name:
            raise CheckpointError(f"{source}: keys {original[name]!r} and {key!r} both mean {name!r}")
        by_name[name], original[name] = t, key
    return by_name, original


def _infer_config(by_name, hf_config: Optional[dict], model_card: Optional[str], source: str) -> GPT2Config:
    """The model's size from the tensors' shapes; n_head from config.json or the card table."""
    wte, wpe = by_name.get("wte.weight"), by_name.get("wpe.weight")
    if wte is None or wte.dim() != 2:
        lora = [k for k in by_name if LORA_KEY.fullmatch(k)]
        if lora and len(lora) == len(by_name):
            raise CheckpointError(
                f"{source}: holds only LoRA tensors ({len(lora)}, e.g. {lora[0]!r}), not a GPT-2 "
                f"backbone. Load the pretrained GPT-2 with load_pretrained, put LoRA on it, then load "
                f"this file with load_adapter and apply_adapter_weights (r and alpha: see lora_config_from_tensors)."
            )
        raise CheckpointError(
            f"{source}: no token embedding ('wte.weight' or 'transformer.wte.weight'); "
            f"is this a GPT-2 checkpoint? First keys: {list(by_name)[:8]}"
        )
    layers = [int(m.group(1)) for m in map(re.compile(r"h\.(\d+)\.").match, by_name) if m]
    shape = dict(vocab_size=wte.shape[0], n_embd=wte.shape[1], n_layer=max(layers, default=-1) + 1)
    hf = hf_config or {}
    if wpe is not None and wpe.dim() == 2:
        shape["n_positions"] = wpe.shape[0]
    elif "n_positions" in hf:
        shape["n_positions"] = hf["n_positions"]
    # config.json must agree with the tensors and describe GPT-2's function.
    problems = [
        f"config.json says {k}={hf[k]}, the weights have {k}={v}" for k, v in shape.items() if k in hf and hf[k] != v
    ]
    if hf.get("model_type", "gpt2") != "gpt2":
        problems.append(f"config.json model_type is {hf['model_type']!r}, not 'gpt2'")
    if hf.get("activation_function", "gelu_new") not in TANH_GELUS:
        problems.append(
            f"config.json activation_function is {hf['activation_function']!r}; this model "
            f"implements GPT-2's tanh GELU ({' / '.join(TANH_GELUS)})"
        )
    if hf.get("n_inner") not in (None, 4 * shape["n_embd"]):
        problems.append(f"config.json n_inner={hf['n_inner']}; this model has 4 * n_embd")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights", True) is False:
        problems.append(
            "config.json changes attention scaling (scale_attn_by_inverse_layer_idx / "
            "scale_attn_weights); this model scales by 1/sqrt(head_dim) only"
        )
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    card_shape = GPT2_SIZES.get(model_card) if model_card else None
    if model_card and card_shape is None:
        raise CheckpointError(f"unknown model card {model_card!r}; choose from {sorted(GPT2_SIZES)}")
    if "n_head" in hf:
        shape["n_head"] = hf["n_head"]
    else:  # a single file: the card table knows n_head for each (n_layer, n_embd)
        cards = [c for c, s in GPT2_SIZES.items() if (s["n_layer"], s["n_embd"]) == (shape["n_layer"], shape["n_embd"])]
        card = model_card if model_card in cards else (cards[0] if cards else None)
        shape["n_head"] = GPT2_SIZES[card]["n_head"] if card else None
    if card_shape and any(shape[k] != v for k, v in card_shape.items()):
        have = ", ".join(f"{k}={shape[k] if shape[k] is not None else '?'}" for k in card_shape)
        want = ", ".join(f"{k}={v}" for k, v in card_shape.items())
        raise CheckpointError(f"{source}: the checkpoint is {have}, but model_card {model_card!r} is {want}")
    if shape["n_head"] is None:
        raise CheckpointError(
            f"{source}: n_layer={shape['n_layer']}, n_embd={shape['n_embd']} match no model card "
            f"({sorted(GPT2_SIZES)}) and there is no config.json to give n_head; load it from a "
            f"Hugging Face folder with config.json"
        )
    eps = hf.get("layer_norm_epsilon", GPT2Config.layer_norm_epsilon)
    return GPT2Config(**shape, layer_norm_epsilon=eps)


def load_pretrained(path, model_card: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> GPT2LMModel:
    """A plain ``GPT2LMModel`` (no LoRA; eval mode; on the CPU) with the weights of ``path``.

    path: a Hugging Face GPT-2 folder or a single weights file (see the module docstring).
    model_card: if given, the checkpoint must have that card's size (else an error naming both).
    dtype: of the parameters; default float32 whatever the file stores.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(
            f"{path}: no such file or folder (the backbone: a Hugging Face GPT-2 folder or weights file)"
        )
    if os.path.isdir(path):
        tensors, hf_config, source = _read_folder(path)
    else:
        tensors, hf_config, source = read_tensors(path), None, path
    check_finite(tensors, source)
    by_name, original = _normalize_backbone_keys(tensors, source)
    config = _infer_config(by_name, hf_config, model_card, source)
    dtype = dtype or torch.float32

    with torch.device("meta"):  # shapes only: the real tensors are assigned below
        model = GPT2LMModel(config)
    expected = {k[len("transformer.") :]: v.shape for k, v in model.state_dict().items()}
    wte = by_name["wte.weight"]
    # Which layout the file uses, read off c_attn: (C, 3C) is Conv1D, (3C, C) is nn.Linear.
    c_attn = [t.shape for k, t in by_name.items() if k.endswith("attn.c_attn.weight") and t.dim() == 2]
    conv1d = not c_attn or c_attn[0][1] == 3 * config.n_embd
    state, unexpected, misshaped = {}, [], []
    for name, t in by_name.items():
        key = original[name]
        if name in expected:
            want = tuple(expected[name])
            transpose = conv1d and name.endswith(CONV1D_WEIGHTS)
            if tuple(t.shape) != (want[::-1] if transpose else want):
                misshaped.append(f"{key}: {tuple(t.shape)} in the file, {want[::-1] if transpose else want} expected")
                continue
            t = t.t() if transpose else t
            state["transformer." + name] = t.to(dtype).contiguous()
        elif HARMLESS.fullmatch(name):
            continue
        elif name in LM_HEADS and t.shape == wte.shape and torch.equal(t, wte):
            continue
        elif name in LM_HEADS:
            unexpected.append(f"{key} (differs from wte.weight: only a tied LM head is supported)")
        else:
            unexpected.append(key)
    missing = ["transformer." + n for n in expected if n not in by_name]
    report = fit_report(
        f"{source}: does not fit GPT-2 with n_layer={config.n_layer}, n_embd={config.n_embd}, "
        f"n_head={config.n_head}, vocab_size={config.vocab_size}, n_positions={config.n_positions}:",
        missing,
        unexpected,
        misshaped,
    )
    if report:
        if any(LORA_KEY.fullmatch(n) for n in by_name):
            report += (
                " | The file holds LoRA tensors (a fine-tuned model, e.g. upstream's final "
                "checkpoint): load the pretrained GPT-2 with load_pretrained and the LoRA "
                "tensors with load_adapter(path)."
            )
        raise CheckpointError(report)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


# ------------------------------------------------------------------------------- saving backbone


def _plain_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Our keys without the adapter: a wrapped layer's weight is its base weight plus, if not merged,
    its ``delta_weight()`` (so the saved model computes what ``model`` computes)."""
    wrapped = dict(adapter_layers(model))
    out = {}
    for key, t in model.state_dict().items():
        owner = key.rpartition(".")[0]
        if owner in wrapped:  # the adapter's own tensors
            continue
        if ".base_layer." in key:
            module_name, _, param = key.rpartition(".base_layer.")
            m = wrapped[module_name]
            if param == "weight" and not m.merged:
                t = t + m.delta_weight().detach().to(t.dtype)
            key = f"{module_name}.{param}"
        out[key] = t
    return out


def _hf_config(config: GPT2Config, dtype: torch.dtype) -> dict:
    eos = EOS_ID if config.vocab_size > EOS_ID else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "resid_pdrop": config.resid_pdrop,
        "embd_pdrop": config.embd_pdrop,
        "attn_pdrop": config.attn_pdrop,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": str(dtype).replace("torch.", ""),
    }


def save_pretrained(model: GPT2LMModel, folder) -> None:
    """Write ``model`` as a Hugging Face GPT-2 folder: ``config.json`` + ``model.safetensors``
    (Conv1D layout, ``transformer.`` prefix, LM head tied so not stored).

    LoRA, if present, is merged into the written weights; ``model`` is not changed. Atomic: the
    files are written to a temporary folder beside ``folder`` and renamed into place. An existing
    ``folder`` is replaced only if it holds nothing but these files (an earlier save).
    """
    folder = os.path.abspath(os.fspath(folder))
    if os.path.exists(folder):
        if not os.path.isdir(folder):
            raise CheckpointError(f"{folder}: exists and is not a folder")
        others = sorted(set(os.listdir(folder)) - set(HF_FILES_WE_WRITE))
        if others:
            raise CheckpointError(f"{folder}: exists and holds other files {others}; refusing to replace it")
    tensors = {}
    for key, t in _plain_state_dict(model).items():
        if key.endswith(CONV1D_WEIGHTS):
            t = t.t()
        tensors[key] = t.detach().cpu().contiguous()
    dtype = model.transformer.wte.weight.dtype
    tmp = new_temp_dir(folder)
    try:
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(_hf_config(model.config, dtype), f, indent=2)
            f.write("\n")
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
