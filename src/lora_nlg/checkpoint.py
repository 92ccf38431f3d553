"""Checkpoints: GPT-2 backbones in, Hugging Face GPT-2 folders out, LoRA adapters both ways.

Backbones (``load_pretrained``) come from
- a Hugging Face GPT-2 folder: ``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``
  (or their sharded ``*.index.json`` forms), keys with or without the ``transformer.`` prefix;
- a single file of the same tensors, or the seed's ``.pt`` (``{'model_state_dict': ...}``, keys
  prefixed ``module.`` by DistributedDataParallel, TF-style ``.g`` / ``.b`` / ``.w`` names).
GPT-2's ``Conv1D`` stores weights ``(in, out)``; our ``nn.Linear`` stores ``(out, in)``: the
loader transposes (a file already in ``nn.Linear`` layout, e.g. our own ``model.state_dict()``,
is recognised by the non-square ``c_attn`` and loaded as is). Loading is strict: every missing,
unexpected or mis-shaped key is listed in one ``CheckpointError`` (the seed fills missing keys
from the random init and loads with ``strict=False``, which decodes at BLEU 0 without a word).

Order: ``load_pretrained`` builds a plain model; put LoRA on it afterwards (``apply_lora``) and
then copy adapter tensors in (``apply_lora_weights``). ``save_pretrained`` accepts a model with
LoRA and writes the merged weights (the model itself is left as it is).

Adapters (``save_lora`` / ``load_lora``) are safetensors files of the LoRA tensors only, keyed like
``lora_state_dict`` (``transformer.h.0.attn.c_attn.lora_A``), with a JSON description (r, alpha,
scaling rule, targets, model card, and whatever the caller adds: step, config, ...) in the header
metadata under ``"lora_nlg"``. The seed's LoRA-only ``.pt`` files load too, without metadata:
the seed never stored r or alpha, so the caller must supply them (``lora_config_from_tensors``).

Pickles are read with ``torch.load(weights_only=True)`` only: a pickle that needs anything beyond
tensors and plain containers is refused, never executed.
"""
import dataclasses
import json
import os
import pickle
import re
import shutil
import tempfile
from typing import Dict, Optional, Sequence, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from lora_nlg.atomic import atomic_write
from lora_nlg.lora import TARGETS, LoRAConfig, lora_modules, lora_state_dict
from lora_nlg.model import GPT2_SIZES, GPT2Config, GPT2LMModel

METADATA_KEY = "lora_nlg"  # safetensors header key holding an adapter's JSON description
ADAPTER_FILE = "adapter.safetensors"  # an adapter's name inside a checkpoint directory
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")

# A Hugging Face folder's weights, in order of preference.
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                   "pytorch_model.bin", "pytorch_model.bin.index.json")
HF_FILES_WE_WRITE = ("config.json", "model.safetensors")

# Seed / TF-converted names: ln_1.g -> ln_1.weight, c_attn.w -> c_attn.weight, *.b -> *.bias.
TF_SUFFIXES = {".g": ".weight", ".w": ".weight", ".b": ".bias"}
# Layers GPT-2 stores as Conv1D (in, out); ours are nn.Linear (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some files carry that our model computes instead: the causal mask and its fill value.
HARMLESS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
LM_HEADS = ("lm_head.weight", "lm_head.decoder.weight")  # tied to wte in GPT-2
LORA_KEY = re.compile(r"(.*)\.lora_[AB]")
# Hugging Face activations equal to GPT-2's tanh-approximated GELU (ours).
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


# ---------------------------------------------------------------------------------------- files

def read_tensors(path) -> Dict[str, torch.Tensor]:
    """All tensors of one file, on the CPU, as stored (names and layout untouched).

    ``.safetensors`` through safetensors; ``.bin`` / ``.pt`` / ``.pth`` through
    ``torch.load(weights_only=True)``, which refuses pickles that need arbitrary objects or code.
    A ``{'model_state_dict': ...}`` (the seed) or ``{'state_dict': ...}`` wrapper is removed.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return load_file(path, device="cpu")
    if not path.endswith(PICKLE_SUFFIXES):
        raise CheckpointError(f"{path}: unknown checkpoint type; expected .safetensors or one of "
                              f"{', '.join(PICKLE_SUFFIXES)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to load: this pickle needs more than tensors (arbitrary objects or "
            f"code), and unpickling it could run that code. Only plain tensor state dicts are read "
            f"(torch.load(weights_only=True)). If you trust where the file comes from, convert it "
            f"once to safetensors and load that instead:\n"
            f"  python -c \"import torch; from safetensors.torch import save_file; "
            f"sd = torch.load('{path}', weights_only=False); sd = sd.get('model_state_dict', sd); "
            f"save_file({{k: v.detach().clone().contiguous() for k, v in sd.items()}}, "
            f"'{os.path.splitext(path)[0]}.safetensors')\"\n"
            f"(unpickler said: {reason})") from None
    for wrapper in ("model_state_dict", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: expected a dict of tensors; these entries are not tensors: {bad}")
    return dict(obj)


def _read_folder(folder: str) -> Tuple[Dict[str, torch.Tensor], Optional[dict], str]:
    """Tensors and config.json (or None) of a Hugging Face folder, and the file(s) read."""
    name = next((f for f in HF_WEIGHT_FILES if os.path.isfile(os.path.join(folder, f))), None)
    if name is None:
        raise CheckpointError(f"{folder}: no weights; expected one of {list(HF_WEIGHT_FILES)}, "
                              f"found {sorted(os.listdir(folder))}")
    weights = os.path.join(folder, name)
    if name.endswith(".index.json"):
        with open(weights, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(read_tensors(os.path.join(folder, shard)))
    else:
        tensors = read_tensors(weights)
    config = None
    config_path = os.path.join(folder, "config.json")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    return tensors, config, weights


# ------------------------------------------------------------------------------------- backbone

def _normalize_backbone_keys(tensors: Dict[str, torch.Tensor], source: str):
    """Rename to our names relative to ``transformer`` (``h.0.ln_1.weight``, ``wte.weight``).

    Returns ``(by_name, original_key_of_name)``; ``lm_head.*`` keys keep their names.
    """
    by_name, original = {}, {}
    for key, t in tensors.items():
        name = key[len("module."):] if key.startswith("module.") else key
        for tf, ours in TF_SUFFIXES.items():
            if name.endswith(tf):
                name = name[:-len(tf)] + ours
        if name.startswith("transformer."):
            name = name[len("transformer."):]
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
                f"this file with load_lora and apply_lora_weights (r and alpha: see lora_config_from_tensors).")
        raise CheckpointError(f"{source}: no token embedding ('wte.weight' or 'transformer.wte.weight'); "
                              f"is this a GPT-2 checkpoint? First keys: {list(by_name)[:8]}")
    layers = [int(m.group(1)) for m in map(re.compile(r"h\.(\d+)\.").match, by_name) if m]
    shape = dict(vocab_size=wte.shape[0], n_embd=wte.shape[1], n_layer=max(layers, default=-1) + 1)
    hf = hf_config or {}
    if wpe is not None and wpe.dim() == 2:
        shape["n_positions"] = wpe.shape[0]
    elif "n_positions" in hf:
        shape["n_positions"] = hf["n_positions"]
    # config.json must agree with the tensors and describe GPT-2's function.
    problems = [f"config.json says {k}={hf[k]}, the weights have {k}={v}"
                for k, v in shape.items() if k in hf and hf[k] != v]
    if hf.get("model_type", "gpt2") != "gpt2":
        problems.append(f"config.json model_type is {hf['model_type']!r}, not 'gpt2'")
    if hf.get("activation_function", "gelu_new") not in TANH_GELUS:
        problems.append(f"config.json activation_function is {hf['activation_function']!r}; this model "
                        f"implements GPT-2's tanh GELU ({' / '.join(TANH_GELUS)})")
    if hf.get("n_inner") not in (None, 4 * shape["n_embd"]):
        problems.append(f"config.json n_inner={hf['n_inner']}; this model has 4 * n_embd")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights", True) is False:
        problems.append("config.json changes attention scaling (scale_attn_by_inverse_layer_idx / "
                        "scale_attn_weights); this model scales by 1/sqrt(head_dim) only")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    card_shape = GPT2_SIZES.get(model_card) if model_card else None
    if model_card and card_shape is None:
        raise CheckpointError(f"unknown model card {model_card!r}; choose from {sorted(GPT2_SIZES)}")
    if "n_head" in hf:
        shape["n_head"] = hf["n_head"]
    else:  # a single file: the card table knows n_head for each (n_layer, n_embd)
        cards = [c for c, s in GPT2_SIZES.items()
                 if (s["n_layer"], s["n_embd"]) == (shape["n_layer"], shape["n_embd"])]
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
            f"Hugging Face folder with config.json")
    eps = hf.get("layer_norm_epsilon", GPT2Config.layer_norm_epsilon)
    return GPT2Config(**shape, layer_norm_epsilon=eps)


def load_pretrained(path, model_card: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> GPT2LMModel:
    """A plain ``GPT2LMModel`` (no LoRA; eval mode; on the CPU) with the weights of ``path``.

    path: a Hugging Face GPT-2 folder or a single weights file (see the module docstring).
    model_card: if given, the checkpoint must have that card's size (else an error naming both).
    dtype: of the parameters; default float32 whatever the file stores.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        tensors, hf_config, source = _read_folder(path)
    else:
        tensors, hf_config, source = read_tensors(path), None, path
    by_name, original = _normalize_backbone_keys(tensors, source)
    config = _infer_config(by_name, hf_config, model_card, source)
    dtype = dtype or torch.float32

    with torch.device("meta"):  # shapes only: the real tensors are assigned below
        model = GPT2LMModel(config)
    expected = {k[len("transformer."):]: v.shape for k, v in model.state_dict().items()}
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
    missing = [n for n in expected if n not in by_name]
    if missing or unexpected or misshaped:
        lines = [f"{source}: does not fit GPT-2 with n_layer={config.n_layer}, n_embd={config.n_embd}, "
                 f"n_head={config.n_head}, vocab_size={config.vocab_size}, n_positions={config.n_positions}:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join("transformer." + n for n in missing))
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected))
        if misshaped:
            lines.append(f"  wrong shape ({len(misshaped)}): " + "; ".join(misshaped))
        if any(LORA_KEY.fullmatch(n) for n in by_name):
            lines.append("  The file holds LoRA tensors (a fine-tuned model, e.g. the seed's final "
                         "checkpoint): load the pretrained GPT-2 with load_pretrained and the LoRA "
                         "tensors with load_lora(path).")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


# ------------------------------------------------------------------------------- saving backbone

def _plain_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Our keys without LoRA: a wrapped layer's weight is its base weight plus, if not merged,
    scaling * B A (so the saved model computes what ``model`` computes)."""
    wrapped = dict(lora_modules(model))
    out = {}
    for key, t in model.state_dict().items():
        if LORA_KEY.fullmatch(key):
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
    eos = 50256 if config.vocab_size > 50256 else None
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
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(folder)}.", suffix=".tmp")
    try:
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(_hf_config(model.config, dtype), f, indent=2)
            f.write("\n")
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        if os.path.exists(folder):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(folder)}.", suffix=".old")
            os.rename(folder, os.path.join(old, "previous"))
            os.rename(tmp, folder)
            shutil.rmtree(old)
        else:
            os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------- LoRA

def save_lora(path, model: torch.nn.Module, metadata: Optional[dict] = None) -> None:
    """Write the LoRA tensors of ``model`` (``lora_state_dict``) as safetensors, atomically.

    The header metadata ``"lora_nlg"`` holds JSON: the model's LoRA config (r, alpha, dropout,
    targets, scaling_rule, scaling, init, bias), ``model_card`` and ``model_config``, then the
    caller's ``metadata`` (step, epoch, config, val loss, ...), which must be JSON-serialisable and
    must not contradict the model's LoRA config. ``path``: a file, or an existing directory (the
    file is then ``<dir>/adapter.safetensors``).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, ADAPTER_FILE)
    cfg = getattr(model, "lora_config", None)
    if cfg is None or not lora_modules(model):
        raise CheckpointError(f"{path}: the model has no LoRA layers to save (apply_lora first)")
    info = {**cfg.to_dict(), "model_card": model.config.model_card,
            "model_config": dataclasses.asdict(model.config)}
    try:
        extra = json.loads(json.dumps(dict(metadata or {})))  # tuples become lists, as stored
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata must be JSON-serialisable: {e}") from None
    clash = {k: (info[k], v) for k, v in extra.items() if k in info and info[k] != v}
    if clash:
        raise CheckpointError(f"{path}: metadata contradicts the model's LoRA config "
                              f"(key: model's value, given value): {clash}")
    text = json.dumps({**info, **extra}, sort_keys=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in lora_state_dict(model, cfg.bias).items()}
    data = save(tensors, metadata={"format": "pt", METADATA_KEY: text})
    with atomic_write(path, "wb") as f:
        f.write(data)


def load_lora(path) -> Tuple[Dict[str, torch.Tensor], Optional[dict]]:
    """``(tensors, metadata)`` of an adapter: our safetensors (metadata from the header, or None
    if it has none) or a checkpoint directory holding ``adapter.safetensors``; or the seed's
    ``.pt`` / ``.bin`` (metadata None: the caller supplies r and alpha). From a seed file only the
    ``lora_A`` / ``lora_B`` tensors are taken (its final checkpoint also holds the frozen
    backbone), with the ``module.`` prefix removed.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, ADAPTER_FILE)):
            raise CheckpointError(f"{path}: a directory without {ADAPTER_FILE}")
        path = os.path.join(path, ADAPTER_FILE)
    if path.endswith(".safetensors"):
        with safe_open(path, framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = None
        if METADATA_KEY in header:
            try:
                metadata = json.loads(header[METADATA_KEY])
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path}: header metadata {METADATA_KEY!r} is not valid JSON: {e}") from None
        return tensors, metadata
    tensors = {}
    for key, t in read_tensors(path).items():
        key = key[len("module."):] if key.startswith("module.") else key
        if LORA_KEY.fullmatch(key):
            tensors[key] = t
    if not tensors:
        raise CheckpointError(f"{path}: no LoRA tensors (keys ending in lora_A / lora_B)")
    return tensors, None


def apply_lora_weights(model: torch.nn.Module, tensors: Dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors into the model's ``LoRALinear`` layers (apply_lora first), strictly:
    missing, unexpected and mis-shaped keys are listed in one error. The LoRA must not be merged."""
    cfg = getattr(model, "lora_config", None)
    modules = lora_modules(model)
    if cfg is None or not modules:
        raise CheckpointError("the model has no LoRA layers: apply_lora(model, config) before apply_lora_weights")
    merged = [n for n, m in modules if m.merged]
    if merged:
        raise CheckpointError(f"LoRA is merged in {merged[:3]}...: unmerge_lora(model) before loading new LoRA weights")
    # lora_state_dict's tensors share storage with the parameters: copying into them loads.
    targets = lora_state_dict(model, cfg.bias)
    missing = [k for k in targets if k not in tensors]
    unexpected = [k for k in tensors if k not in targets]
    misshaped = [f"{k}: {tuple(t.shape)} given, {tuple(targets[k].shape)} expected"
                 for k, t in tensors.items() if k in targets and t.shape != targets[k].shape]
    if missing or unexpected or misshaped:
        lines = [f"LoRA tensors do not fit the model's LoRA (r={cfg.r}, targets={list(cfg.targets)}):"]
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected))
        if misshaped:
            lines.append(f"  wrong shape ({len(misshaped)}): " + "; ".join(misshaped))
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        for k, t in tensors.items():
            targets[k].copy_(t)


def lora_config_from_tensors(tensors: Dict[str, torch.Tensor], alpha: float, dropout: float = 0.0,
                             scaling_rule: str = "alpha/r",
                             c_attn_targets: Optional[Sequence[str]] = None) -> LoRAConfig:
    """The ``LoRAConfig`` (r and targets) that LoRA tensors without metadata (the seed's) imply.

    alpha cannot be read off the tensors: pass the value used in training (the paper's recipes use
    32, the seed's model default is 128). On the fused ``c_attn``, ``lora_A`` is (n * r, n_embd)
    for n enabled slices of q, k, v: n = 3 is q, k, v; n = 2 is taken as q, v (the seed's
    ``enable_lora=[True, False, True]``); n = 1 is ambiguous. ``c_attn_targets`` overrides.
    """
    key_re = re.compile(r"(?:.*\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.lora_([AB])")
    by_layer: Dict[int, Dict[str, Dict[str, torch.Tensor]]] = {}
    odd = []
    for key, t in tensors.items():
        m = key_re.fullmatch(key)
        if m is None:
            odd.append(key)
            continue
        by_layer.setdefault(int(m.group(1)), {}).setdefault(m.group(2), {})[m.group(3)] = t
    if odd or not by_layer:
        raise CheckpointError(f"not GPT-2 LoRA tensors (h.<i>.<module>.lora_A/B): {odd or 'none given'}")
    layouts = {i: sorted(mods) for i, mods in by_layer.items()}
    if len({tuple(v) for v in layouts.values()}) > 1:
        raise CheckpointError(f"LoRA covers different modules in different layers: {layouts}")
    ranks, slices = set(), {}
    for i, mods in by_layer.items():
        for module, ab in mods.items():
            if set(ab) != {"A", "B"}:
                raise CheckpointError(f"h.{i}.{module}: lora_A and lora_B must come together, found only lora_{''.join(ab)}")
            r = ab["B"].shape[1]
            if r < 1 or ab["A"].shape[0] % r:
                raise CheckpointError(f"h.{i}.{module}: lora_A {tuple(ab['A'].shape)} and lora_B "
                                      f"{tuple(ab['B'].shape)} do not share a rank r")
            ranks.add(r)
            slices.setdefault(module, set()).add(ab["A"].shape[0] // r)
    if len(ranks) > 1:
        raise CheckpointError(f"LoRA tensors of different ranks {sorted(ranks)}")
    targets = []
    for module, ns in slices.items():
        if len(ns) > 1:
            raise CheckpointError(f"{module}: different numbers of LoRA slices across layers {sorted(ns)}")
        n = ns.pop()
        if module != "attn.c_attn":
            if n != 1:
                raise CheckpointError(f"{module}: lora_A holds {n} * r rows; a plain layer has r")
            targets.append(module)
        elif c_attn_targets is not None:
            if len(c_attn_targets) != n or not set(c_attn_targets) <= {"q", "k", "v"}:
                raise CheckpointError(f"c_attn_targets {list(c_attn_targets)} do not fit {n} LoRA slices on c_attn")
            targets.extend(c_attn_targets)
        elif n == 1:
            raise CheckpointError("LoRA on one slice of c_attn: q, k or v cannot be told from the "
                                  "shapes; pass c_attn_targets=('q',) (or k, v)")
        else:
            targets.extend(("q", "v") if n == 2 else ("q", "k", "v"))
    order = list(TARGETS)
    return LoRAConfig(r=ranks.pop(), alpha=alpha, dropout=dropout, scaling_rule=scaling_rule,
                      targets=tuple(sorted(targets, key=order.index)))
