"""Training checkpoints that resume exactly: one folder per save, written whole or not at all.

Layout of ``<work_dir>/checkpoints/``::

    step-<N>/      every --save_interval optimizer steps, and at the end of training
    epoch-<E>/     at the end of each epoch (model selection decodes each of these)
    best/          the lowest validation loss so far (weights and description only)
    last           a text file: the name of the newest resumable folder

A folder holds ``adapter.safetensors`` (LoRA tensors; the header describes them: r, alpha,
scaling rule, targets, model card, step, epoch, validation loss, the resolved configuration),
``model/`` (the full merged model as a Hugging Face folder, for full fine-tuning or
``--save_full``), ``checkpoint.json`` (the same description, readable), and, except ``best/``,
``trainer_state.pt``: optimizer, scheduler, GradScaler, sampler and every rank's random
generators, loadable with ``torch.load(weights_only=True)``.

Each folder is built under a temporary name beside its final one and renamed into place; ``last``
is rewritten (atomically) only after that. A run killed at any moment leaves ``last`` naming a
complete folder.
"""
import json
import os
import random
import shutil
import tempfile
from typing import Any, Dict, Optional

import numpy as np
import torch

from lora_nlg.atomic import atomic_write
from lora_nlg.checkpoint import ADAPTER_FILE, save_lora, save_pretrained
from lora_nlg.lora import lora_modules

CHECKPOINTS = "checkpoints"
LAST = "last"
BEST = "best"
TRAINER_STATE = "trainer_state.pt"
DESCRIPTION = "checkpoint.json"
FULL_MODEL = "model"


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


# ----------------------------------------------------------------------------------- folders

def checkpoints_dir(work_dir: str) -> str:
    return os.path.join(work_dir, CHECKPOINTS)


def replace_dir(tmp: str, final: str) -> None:
    """Rename the finished folder ``tmp`` to ``final``, replacing an older ``final``."""
    if os.path.isdir(final):
        trash = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=f".{os.path.basename(final)}.", suffix=".old")
        os.rename(final, os.path.join(trash, "old"))
        os.rename(tmp, final)
        shutil.rmtree(trash)
    else:
        os.rename(tmp, final)


def new_temp_dir(final: str) -> str:
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(final)}.", suffix=".tmp")


def remove_stale_temp_dirs(root: str) -> None:
    """Half-written folders a killed run left behind (``.<name>.*.tmp`` / ``.old``)."""
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old")):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def write_last(root: str, name: str) -> None:
    with atomic_write(os.path.join(root, LAST)) as f:
        f.write(name + "\n")


def last_checkpoint(work_dir: str) -> Optional[str]:
    """The newest resumable folder of ``work_dir``, or None."""
    root = checkpoints_dir(work_dir)
    pointer = os.path.join(root, LAST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as f:
        name = f.read().strip()
    folder = os.path.join(root, name)
    if not os.path.isfile(os.path.join(folder, TRAINER_STATE)):
        raise FileNotFoundError(f"{pointer} names {name!r}, but {folder} has no {TRAINER_STATE}")
    return folder


def write_description(folder: str, description: dict) -> None:
    with open(os.path.join(folder, DESCRIPTION), "w", encoding="utf-8") as f:
        json.dump(description, f, indent=2, sort_keys=True)
        f.write("\n")


def save_trainer_state(folder: str, state: dict) -> None:
    torch.save(state, os.path.join(folder, TRAINER_STATE))


def load_trainer_state(folder: str) -> dict:
    return torch.load(os.path.join(folder, TRAINER_STATE), map_location="cpu", weights_only=True)


def write_checkpoint(final: str, model: torch.nn.Module, description: dict,
                     trainer_state: Optional[dict] = None, full: bool = False) -> None:
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
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
