"""Weights files read safely, the key patterns of GPT-2 checkpoints, and the one error they raise.

``.safetensors`` is read by safetensors; ``.bin`` / ``.pt`` / ``.pth`` by
``torch.load(weights_only=True)``, which refuses a pickle that needs anything beyond tensors and
plain containers: it is never executed.
"""

import os
import pickle
import re
from typing import Dict, Iterable

import torch
from safetensors.torch import load_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")

# Upstream / TF-converted names: ln_1.g -> ln_1.weight, c_attn.w -> c_attn.weight, *.b -> *.bias.
TF_SUFFIXES = {".g": ".weight", ".w": ".weight", ".b": ".bias"}
# Layers GPT-2 stores as Conv1D (in, out); ours are nn.Linear (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some files carry that our model computes instead: the causal mask and its fill value.
HARMLESS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
LM_HEADS = ("lm_head.weight", "lm_head.decoder.weight")  # tied to wte in GPT-2
LORA_KEY = re.compile(r"(.*)\.lora_[AB]")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def read_tensors(path) -> Dict[str, torch.Tensor]:
    """All tensors of one file, on the CPU, as stored (names and layout untouched).

    A ``{'model_state_dict': ...}`` (upstream) or ``{'state_dict': ...}`` wrapper is removed.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return load_file(path, device="cpu")
    if not path.endswith(PICKLE_SUFFIXES):
        raise CheckpointError(
            f"{path}: unknown checkpoint type; expected .safetensors or one of {', '.join(PICKLE_SUFFIXES)}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to load: this pickle needs more than tensors (arbitrary objects or "
            f"code), and unpickling it could run that code. Only plain tensor state dicts are read "
            f"(torch.load(weights_only=True)). If you trust where the file comes from, convert it "
            f"once to safetensors and load that instead:\n"
            f'  python -c "import torch; from safetensors.torch import save_file; '
            f"sd = torch.load('{path}', weights_only=False); sd = sd.get('model_state_dict', sd); "
            f"save_file({{k: v.detach().clone().contiguous() for k, v in sd.items()}}, "
            f"'{os.path.splitext(path)[0]}.safetensors')\"\n"
            f"(unpickler said: {reason})"
        ) from None
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


def fit_report(title: str, missing: Iterable[str], unexpected: Iterable[str], misshaped: Iterable[str]) -> str:
    """``title`` and one line per non-empty list: the keys a model lacks, does not know, or has
    in another shape (empty string when all three are empty)."""
    missing, unexpected, misshaped = list(missing), list(unexpected), list(misshaped)
    if not (missing or unexpected or misshaped):
        return ""
    lines = [title]
    if missing:
        lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected))
    if misshaped:
        lines.append(f"  wrong shape ({len(misshaped)}): " + "; ".join(misshaped))
    return "\n".join(lines)
