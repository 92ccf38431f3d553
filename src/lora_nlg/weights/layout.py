"""The checkpoint folder: its names, what a path holds, and the atomic folder swap.

Layout of ``<work_dir>/checkpoints/``::

    step-<N>/      every --save_interval optimizer steps, and at the end of training
    epoch-<E>/     at the end of each epoch (model selection decodes each of these)
    best/          the lowest validation loss so far (weights and description only)
    last           a text file: the name of the newest resumable folder

A folder holds ``adapter.safetensors`` (the adapter; its header describes it), ``model/`` (the
full merged model as a Hugging Face folder, for full fine-tuning or ``--save_full``),
``checkpoint.json`` (the same description, readable), and, except ``best/``,
``trainer_state.pt`` (``lora_nlg.train.state``).

Each folder is built under a temporary name beside its final one and renamed into place; ``last``
is rewritten (atomically) only after that. A run killed at any moment leaves ``last`` naming a
complete folder.

    python -m lora_nlg.weights.layout candidates WORK_DIR   # epoch-1 epoch-2 ... (+ last if no epoch)
    python -m lora_nlg.weights.layout decodable CKPT [--full]   # what gpt2_beam.py should load
"""

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from typing import List, Optional, Tuple

from lora_nlg.atomic import atomic_write
from lora_nlg.jsonl import read_json
from lora_nlg.methods.peft_backend import ADAPTER_CONFIG as PEFT_CONFIG
from lora_nlg.weights.tensors import LORA_KEY, CheckpointError, read_safetensors, read_tensors

CHECKPOINTS = "checkpoints"
LAST = "last"
BEST = "best"
ADAPTER_FILE = "adapter.safetensors"
TRAINER_STATE = "trainer_state.pt"
DESCRIPTION = "checkpoint.json"
FULL_MODEL = "model"
PEFT_FOLDER = "peft"  # --method peft: PEFT's own adapter folder instead of adapter.safetensors
METADATA_KEY = "lora_nlg"  # the safetensors header key holding an adapter's JSON description


# ------------------------------------------------------------------------------ folders


def checkpoints_dir(work_dir: str) -> str:
    return os.path.join(work_dir, CHECKPOINTS)


def new_temp_dir(final: str) -> str:
    """An empty folder beside ``final`` (``.<name>.*.tmp``) to build it in."""
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(final)}.", suffix=".tmp")


def swap_in(tmp: str, final: str) -> None:
    """Rename the finished folder ``tmp`` to ``final``, replacing an older ``final``."""
    if os.path.isdir(final):
        trash = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=f".{os.path.basename(final)}.", suffix=".old")
        os.rename(final, os.path.join(trash, "old"))
        os.rename(tmp, final)
        shutil.rmtree(trash)
    else:
        os.rename(tmp, final)


def remove_stale_temp_dirs(root: str) -> None:
    """Half-written folders and files a killed run left behind (``.<name>.*.tmp`` / ``.old``:
    checkpoint folders, the ``last`` pointer)."""
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old")):
                path = os.path.join(root, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)


def write_last(root: str, name: str) -> None:
    with atomic_write(os.path.join(root, LAST)) as f:
        f.write(name + "\n")


def last_name(work_dir: str) -> Optional[str]:
    """The folder name ``last`` holds, or None."""
    pointer = os.path.join(checkpoints_dir(work_dir), LAST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as f:
        return f.read().strip()


def last_checkpoint(work_dir: str) -> Optional[str]:
    """The newest resumable folder of ``work_dir``, or None."""
    name = last_name(work_dir)
    if name is None:
        return None
    folder = os.path.join(checkpoints_dir(work_dir), name)
    if not os.path.isfile(os.path.join(folder, TRAINER_STATE)):
        pointer = os.path.join(checkpoints_dir(work_dir), LAST)
        raise FileNotFoundError(f"{pointer} names {name!r}, but {folder} has no {TRAINER_STATE}")
    return folder


def write_description(folder: str, description: dict) -> None:
    with open(os.path.join(folder, DESCRIPTION), "w", encoding="utf-8") as f:
        json.dump(description, f, indent=2, sort_keys=True)
        f.write("\n")


def read_description(folder: str) -> dict:
    """A checkpoint folder's ``checkpoint.json``, or {} when it has none."""
    path = os.path.join(folder, DESCRIPTION)
    return read_json(path) if os.path.isfile(path) else {}


def epoch_candidates(work_dir: str) -> List[str]:
    """The ``epoch-<E>`` folders in epoch order, and the ``last`` one when training stopped inside
    an epoch (model selection's candidates)."""
    root = checkpoints_dir(work_dir)
    names = os.listdir(root) if os.path.isdir(root) else []
    epochs = sorted((n for n in names if re.fullmatch(r"epoch-\d+", n)), key=lambda n: int(n.split("-")[1]))
    last = last_name(work_dir)
    return epochs + ([last] if last and last not in epochs else [])


# ------------------------------------------------------------------------- what a path holds


def checkpoint_kind(path: str) -> Tuple[str, str]:
    """``('adapter' | 'peft' | 'upstream_lora' | 'full', the path to load)`` for a checkpoint folder,
    an adapter file, a PEFT folder, upstream's ``.pt`` or a full model (Hugging Face folder or weights file)."""
    if not os.path.exists(path):
        raise CheckpointError(f"--init_checkpoint {path}: no such file or folder")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, ADAPTER_FILE)):
            return "adapter", os.path.join(path, ADAPTER_FILE)
        if os.path.isfile(os.path.join(path, PEFT_FOLDER, PEFT_CONFIG)):
            return "peft", os.path.join(path, PEFT_FOLDER)
        if os.path.isfile(os.path.join(path, PEFT_CONFIG)):
            return "peft", path
        if os.path.isdir(os.path.join(path, FULL_MODEL)):
            return "full", os.path.join(path, FULL_MODEL)
        return "full", path
    if path.endswith(".safetensors"):
        keys, header = read_safetensors(path, keys_only=True)
        is_adapter = METADATA_KEY in header or all(LORA_KEY.fullmatch(k) for k in keys)
        return ("adapter" if is_adapter else "full"), path
    if any(LORA_KEY.fullmatch(k[len("module.") :] if k.startswith("module.") else k) for k in read_tensors(path)):
        return "upstream_lora", path
    return "full", path


def decodable(checkpoint: str, full: bool = False) -> str:
    """What ``gpt2_beam.py --init_checkpoint`` should get for a checkpoint folder: the folder (its
    adapter) or, with ``full`` or when it holds no adapter, its ``model/``."""
    if not full and (
        os.path.isfile(os.path.join(checkpoint, ADAPTER_FILE)) or os.path.isdir(os.path.join(checkpoint, PEFT_FOLDER))
    ):
        return checkpoint
    model = os.path.join(checkpoint, FULL_MODEL)
    if not os.path.isdir(model):
        raise CheckpointError(f"{checkpoint}: no {FULL_MODEL}/ to decode" + ("" if full else f" and no {ADAPTER_FILE}"))
    return model


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if len(args) == 2 and args[0] == "candidates":
            print("\n".join(epoch_candidates(args[1])))
        elif args[:1] == ["decodable"] and len(args) in (2, 3) and args[2:] in ([], ["--full"]):
            print(decodable(args[1], full=args[2:] == ["--full"]))
        else:
            print(
                "usage: python -m lora_nlg.weights.layout candidates WORK_DIR | decodable CKPT [--full]",
                file=sys.stderr,
            )
            return 2
    except (CheckpointError, OSError) as e:
        print(f"layout: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
