"""Fetch the pretrained GPT-2 checkpoints from the Hugging Face Hub, sha256-checked.

    python -m lora_nlg.weights.hub gpt2.md [gpt2.sm ...] [--out pretrained_checkpoints]

Each card becomes a Hugging Face GPT-2 folder ``<out>/<hub name>/`` (``config.json``,
``model.safetensors``) that ``lora_nlg.weights.backbone.load_pretrained`` reads. The expected sha256 of
``model.safetensors`` is the one the Hub publishes for the file (its LFS object id, from the
``/api/models/<repo>/tree/<revision>`` listing), or a pinned value from ``--sha256``; the
download is written to a temporary file, hashed, and renamed only if the hash matches. A mirror
folder (``--mirror DIR`` or ``NLG_MODEL_MIRROR``) holding ``<hub name>/model.safetensors`` and
``config.json`` is used instead of the network when present (same hash check when a hash is known).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from typing import List, Literal, Optional

from lora_nlg.catalog import HUB_NAMES, hub_folder
from lora_nlg.cli import parse_config, positional, run_program
from lora_nlg.errors import InputError
from lora_nlg.weights.layout import new_temp_dir, swap_in

HUB = "https://huggingface.co"
FILES = ("config.json", "model.safetensors")


class FetchError(InputError, RuntimeError):
    """A checkpoint that cannot be fetched, or whose hash is not the expected one."""


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hub_sha256(repo: str, filename: str, revision: str = "main") -> str:
    """The sha256 the Hub publishes for an LFS file (its ``lfs.oid``)."""
    url = f"{HUB}/api/models/{repo}/tree/{revision}"
    with urllib.request.urlopen(url, timeout=60) as r:
        listing = json.load(r)
    for entry in listing:
        if entry.get("path") == filename and entry.get("lfs"):
            return entry["lfs"]["oid"]
    raise FetchError(f"{url}: no LFS entry for {filename}")


def _download(url: str, dest: str) -> None:
    folder = os.path.dirname(dest)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as r:
            shutil.copyfileobj(r, out, 1 << 20)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fetch(card: str, out_dir: str, mirror: str = None, sha256: str = None, revision: str = "main") -> str:
    """Make ``<out_dir>/<hub name>/`` complete and verified; return the folder. The folder is built
    under a temporary name and renamed only when every file is there and the hash matches: a failed
    download leaves nothing behind."""
    repo = HUB_NAMES[card]
    folder = os.path.join(out_dir, hub_folder(card))
    if all(os.path.isfile(os.path.join(folder, name)) for name in FILES) and not sha256:
        print(f"{folder}: already there (checked when it was fetched; --sha256 checks it again)", file=sys.stderr)
        return folder
    tmp = new_temp_dir(os.path.abspath(folder))
    try:
        weights = os.path.join(tmp, "model.safetensors")
        source = os.path.join(mirror, hub_folder(card)) if mirror else None
        if source and os.path.isdir(source):
            for name in FILES:
                if not os.path.exists(os.path.join(source, name)):
                    raise FetchError(f"mirror {source} lacks {name} (set by --mirror or NLG_MODEL_MIRROR)")
            for name in FILES:
                shutil.copyfile(os.path.join(source, name), os.path.join(tmp, name))
        else:
            try:
                expected = sha256 or hub_sha256(repo, "model.safetensors", revision)
                for name in FILES:
                    url = f"{HUB}/{repo}/resolve/{revision}/{name}"
                    print(f"downloading {url}", file=sys.stderr)
                    _download(url, os.path.join(tmp, name))
            except (urllib.error.URLError, OSError) as e:
                raise FetchError(
                    f"cannot download {repo} from {HUB} ({e}); put {hub_folder(card)}/config.json and "
                    f"model.safetensors in a folder and pass it with --mirror or NLG_MODEL_MIRROR"
                ) from e
            sha256 = expected
        if sha256:
            got = sha256_of(weights)
            if got != sha256:
                raise FetchError(
                    f"{repo} model.safetensors: sha256 {got} does not match the expected {sha256}; removed it"
                )
            print(f"{folder}/model.safetensors: sha256 ok ({got})", file=sys.stderr)
        swap_in(tmp, os.path.abspath(folder))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


@dataclasses.dataclass
class FetchConfig:
    """Fetch pretrained GPT-2 checkpoints from the Hugging Face Hub (or a mirror), sha256-checked."""

    cards: List[Literal[tuple(HUB_NAMES)]] = positional("+", default_factory=list)
    """Model cards to fetch."""
    out: str = "pretrained_checkpoints"
    """Destination folder."""
    mirror: Optional[str] = None
    """Offline mirror folder holding <hub name>/config.json and model.safetensors (default: $NLG_MODEL_MIRROR)."""
    revision: str = "main"
    """Hub revision (branch, tag or commit)."""
    sha256: Optional[str] = None
    """Pinned sha256 of model.safetensors (one card only)."""

    def __post_init__(self):
        if self.sha256 and len(self.cards) > 1:
            raise ValueError("--sha256 pins one file: give one card")


def main(argv=None) -> int:
    return run_program("download_pretrained_checkpoints", _main, argv, code=1)


def _main(argv) -> int:
    cfg = parse_config(
        FetchConfig,
        argv,
        prog="python -m lora_nlg.weights.hub",
        defaults={"mirror": os.environ.get("NLG_MODEL_MIRROR")},
    )
    for card in cfg.cards:
        print(fetch(card, cfg.out, cfg.mirror, cfg.sha256, cfg.revision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
