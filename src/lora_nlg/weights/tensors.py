"""Weights files read safely, the key patterns of GPT-2 checkpoints, and the one error they raise.

``.safetensors`` is read by safetensors; ``.bin`` / ``.pt`` / ``.pth`` by
``torch.load(weights_only=True)``, which refuses a pickle that needs anything beyond tensors and
plain containers: it is never executed.
"""

import os
import pickle
import re
import zipfile
from typing import Dict, Iterable, Tuple

import torch
from safetensors import SafetensorError, safe_open

from lora_nlg.errors import InputError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")

# Upstream / TF-converted names: ln_1.g -> ln_1.weight, c_attn.w -> c_attn.weight, *.b -> *.bias.
TF_SUFFIXES = {".g": ".weight", ".w": ".weight", ".b": ".bias"}
# Layers GPT-2 stores as Conv1D (in, out); ours are nn.Linear (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some files carry that our model computes instead: the causal mask and its fill value.
HARMLESS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
LM_HEADS = ("lm_head.weight", "lm_head.decoder.weight")  # tied to wte in GPT-2
LORA_KEY = re.compile(r"(.*)\.lora_[AB]")


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def read_safetensors(path, keys_only: bool = False) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(tensors, header metadata)`` of a safetensors file (with ``keys_only``, the tensors' values
    are None: nothing is read but the header); a CheckpointError naming the file when it is not one."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: a folder, not a .safetensors file")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            return {k: None if keys_only else f.get_tensor(k) for k in f.keys()}, metadata
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None


def torch_load(path):
    """``torch.load(weights_only=True)`` of one file: a CheckpointError naming it when the pickle
    needs more than tensors (never executed) or the file is damaged."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: a folder, not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to load: this pickle needs more than tensors (arbitrary objects or "
            f"code), and unpickling it could run that code. Only plain tensor state dicts are read "
            f"(torch.load(weights_only=True)). If you trust where the file comes from, convert it "
            f"once to safetensors and load that instead: "
            f'python -c "import torch; from safetensors.torch import save_file; '
            f"sd = torch.load('{path}', weights_only=False); sd = sd.get('model_state_dict', sd); "
            f"save_file({{k: v.detach().clone().contiguous() for k, v in sd.items()}}, "
            f"'{os.path.splitext(path)[0]}.safetensors')\" (unpickler said: {reason})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: truncated or damaged, not a readable PyTorch file ({reason})") from None


def read_tensors(path) -> Dict[str, torch.Tensor]:
    """All tensors of one file, on the CPU, as stored (names and layout untouched).

    A ``{'model_state_dict': ...}`` (upstream) or ``{'state_dict': ...}`` wrapper is removed.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or folder")
    if path.endswith(".safetensors"):
        return read_safetensors(path)[0]
    if not path.endswith(PICKLE_SUFFIXES):
        raise CheckpointError(
            f"{path}: unknown checkpoint type; expected .safetensors or one of {', '.join(PICKLE_SUFFIXES)}"
        )
    obj = torch_load(path)
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


def check_finite(tensors: Dict[str, torch.Tensor], source: str) -> None:
    """A CheckpointError naming the first tensor of ``source`` that holds NaN or inf."""
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{source}: tensor {key} holds non-finite values (NaN or inf)")


def fit_report(title: str, missing: Iterable[str], unexpected: Iterable[str], misshaped: Iterable[str]) -> str:
    """One line: ``title`` and, for each non-empty list, the keys a model lacks, does not know, or
    has in another shape (the first ten of each); empty when all three are empty."""
    parts = []
    for what, keys, sep in (
        ("missing", missing, ", "),
        ("unexpected", unexpected, ", "),
        ("wrong shape", misshaped, "; "),
    ):
        keys = list(keys)
        if keys:
            more = f"{sep}... ({len(keys)} in all)" if len(keys) > 10 else ""
            parts.append(f"{what} ({len(keys)}): " + sep.join(keys[:10]) + more)
    return f"{title} " + " | ".join(parts) if parts else ""
