"""Training checkpoints that resume exactly (their folder: ``lora_nlg.weights.layout``).

``trainer_state.pt`` holds the optimizer, scheduler, GradScaler, sampler and every rank's random
generators, loadable with ``torch.load(weights_only=True)``; ``write_checkpoint`` builds a whole
checkpoint folder under a temporary name and swaps it into place.
"""

import os
import random
import shutil
from typing import Any, Dict, Optional

import numpy as np
import torch

from lora_nlg.lora import lora_modules
from lora_nlg.weights.adapter import save_lora
from lora_nlg.weights.backbone import save_pretrained
from lora_nlg.weights.layout import ADAPTER_FILE, FULL_MODEL, TRAINER_STATE, new_temp_dir, swap_in, write_description

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
    return torch.load(os.path.join(folder, TRAINER_STATE), map_location="cpu", weights_only=True)


def write_checkpoint(
    final: str, model: torch.nn.Module, description: dict, trainer_state: Optional[dict] = None, full: bool = False
) -> None:
    """Write one checkpoint folder ``final`` (see the module docstring), atomically.

    model: the unwrapped model; its LoRA tensors go to ``adapter.safetensors`` with
    ``description`` in the header; ``full``: also the merged model as ``model/``.
    """
    tmp = new_temp_dir(final)
    try:
        files = []
        if lora_modules(model):
            save_lora(os.path.join(tmp, ADAPTER_FILE), model, description)
            files.append(ADAPTER_FILE)
        if full:
            save_pretrained(model, os.path.join(tmp, FULL_MODEL))
            files.append(FULL_MODEL + "/")
        if trainer_state is not None:
            save_trainer_state(tmp, trainer_state)
            files.append(TRAINER_STATE)
        write_description(tmp, {**description, "files": files})
        swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
