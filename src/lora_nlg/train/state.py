"""Training checkpoints that resume exactly (their folder: ``lora_nlg.weights.layout``).

``trainer_state.pt`` holds the optimizer, scheduler, GradScaler, sampler and every rank's random
generators, loadable with ``torch.load(weights_only=True)``; ``write_checkpoint`` builds a whole
checkpoint folder under a temporary name and swaps it into place.
"""

import json
import os
import random
import shutil
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from lora_nlg.methods import adapter_layers
from lora_nlg.weights import layout
from lora_nlg.weights.adapter import load_adapter, save_adapter
from lora_nlg.weights.backbone import load_pretrained, save_pretrained
from lora_nlg.weights.layout import (
    ADAPTER_FILE,
    FULL_MODEL,
    PEFT_FOLDER,
    TRAINER_STATE,
    new_temp_dir,
    swap_in,
    write_description,
)
from lora_nlg.weights.tensors import CheckpointError, torch_load

# ------------------------------------------------------------------------------ random state


def capture_rng() -> Dict[str, Any]:
    """This process's random generators: Python, NumPy, torch CPU and (if present) CUDA."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# ------------------------------------------------------------------------------ checkpoints


def save_trainer_state(folder: str, state: dict) -> None:
    torch.save(state, os.path.join(folder, TRAINER_STATE))


def load_trainer_state(folder: str) -> dict:
    return torch_load(os.path.join(folder, TRAINER_STATE))


def write_checkpoint(
    final: str,
    model: torch.nn.Module,
    description: dict,
    trainer_state: Optional[dict] = None,
    full: bool = False,
    peft=None,
) -> None:
    """Write one checkpoint folder ``final`` (see the module docstring), atomically.

    model: the unwrapped model; its adapter's tensors go to ``adapter.safetensors`` with
    ``description`` in the header; ``peft`` (a ``PeftAdapter``): PEFT's folder ``peft/`` instead;
    ``full``: also the merged model as ``model/``.
    """
    tmp = new_temp_dir(final)
    try:
        files = []
        if peft is not None:
            peft.save(os.path.join(tmp, PEFT_FOLDER), description.get("init_checkpoint"))
            files.append(PEFT_FOLDER + "/")
        elif adapter_layers(model):
            save_adapter(os.path.join(tmp, ADAPTER_FILE), model, description)
            files.append(ADAPTER_FILE)
        if full:
            save_pretrained(model if peft is None else peft.merged_model(), os.path.join(tmp, FULL_MODEL))
            files.append(FULL_MODEL + "/")
        if trainer_state is not None:
            save_trainer_state(tmp, trainer_state)
            files.append(TRAINER_STATE)
        write_description(tmp, {**description, "files": files})
        swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_resumable(folder: str, kind: str, model_card: Optional[str]) -> Tuple[dict, Any]:
    """(trainer state, weights) of one checkpoint folder: the adapter's tensors (``kind`` adapter),
    the state dict of its model/ (full) or the PEFT tensors kept in the trainer state (peft); a
    CheckpointError naming the missing or damaged file."""
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such folder")
    state_file = os.path.join(folder, TRAINER_STATE)
    if not os.path.isfile(state_file):
        raise CheckpointError(f"{state_file}: missing")
    state = torch_load(state_file)
    if not isinstance(state, dict) or not {"step", "optimizer", "sampler", "rng", "config"} <= set(state):
        raise CheckpointError(f"{state_file}: not a trainer state (step, optimizer, sampler, rng, config)")
    if kind == "full":
        weights = load_pretrained(os.path.join(folder, FULL_MODEL), model_card).state_dict()
    elif kind == "peft":
        if "adapter_tensors" not in state:
            raise CheckpointError(f"{state_file}: holds no PEFT tensors (not a --method peft run)")
        weights = state["adapter_tensors"]
    else:
        weights, _ = load_adapter(os.path.join(folder, ADAPTER_FILE))
    return state, weights


def resume_point(
    work_dir: str, kind: str, model_card: Optional[str], fallback: bool, warn: Callable[[str], None]
) -> Optional[Tuple[str, dict, Any]]:
    """``(folder, trainer state, weights)`` to resume from: the folder ``last`` names or, when it
    is missing or damaged and ``fallback``, the newest complete one (``warn`` says what was
    skipped and why); None for a work dir without checkpoints."""
    root = layout.checkpoints_dir(work_dir)
    named = layout.last_name(work_dir)
    steps = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if name.startswith(".") or name == layout.BEST or not os.path.isfile(os.path.join(root, name, TRAINER_STATE)):
            continue
        try:
            with open(os.path.join(root, name, layout.DESCRIPTION), encoding="utf-8") as f:
                steps[name] = int(json.load(f)["step"])
        except (OSError, ValueError, KeyError, TypeError):
            steps[name] = -1  # tried last: its description is damaged
    order = ([named] if named else []) + sorted((n for n in steps if n != named), key=lambda n: -steps[n])
    skipped = []
    for name in order:
        folder = os.path.join(root, name)
        try:
            state, weights = _load_resumable(folder, kind, model_card)
        except CheckpointError as e:
            if not fallback:
                raise CheckpointError(f"cannot resume from {folder}: {e} (resume_fallback is off)") from None
            skipped.append(str(e))
            continue
        if skipped:
            warn(f"resuming from {folder}, not from the newer checkpoint(s) that are damaged: " + "; ".join(skipped))
        return folder, state, weights
    if skipped:
        raise CheckpointError(f"cannot resume {work_dir}: no complete checkpoint: " + "; ".join(skipped))
    return None
