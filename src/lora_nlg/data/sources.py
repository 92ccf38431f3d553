"""Raw files: find them in a mirror folder or download them, and check their sha256 either way.

`sources.json` (beside this module) lists every raw file the data pipeline reads, keyed by its path relative to
the mirror (e.g. `e2e/devset.csv`), with the official upstream URL and the sha256 of the file as
served there. A mirror may store a large file compressed as `KEY.xz`; its decompressed content
must then have the recorded sha256. Downloads go to `<data dir>/cache/KEY`.
"""

import hashlib
import lzma
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from lora_nlg.atomic import atomic_write
from lora_nlg.errors import FormatError, InputError
from lora_nlg.jsonl import read_json

SOURCES_JSON = Path(__file__).resolve().with_name("sources.json")
# The repository when running from a checkout (src/lora_nlg/data/ is 3 below), else None (installed).
REPO = Path(__file__).resolve().parents[3]
REPO = REPO if (REPO / "src" / "lora_nlg").is_dir() else None
MIRROR_ENV = "NLG_DATA_MIRROR"


class SourceError(InputError, RuntimeError):
    """A raw file could not be obtained, or its content is not the recorded one."""


def load_sources(path=SOURCES_JSON):
    files = read_json(path).get("files")
    if not isinstance(files, dict):
        raise FormatError(f"{path}: expected an object with a 'files' object")
    for key, spec in files.items():
        if not isinstance(spec, dict) or "url" not in spec or not (spec.get("sha256") or spec.get("git_blob_prefix")):
            raise ValueError(f"{path}: file {key!r} needs 'url' and 'sha256' (or 'git_blob_prefix')")
    return files


def default_mirror():
    """env NLG_DATA_MIRROR, else `<repo>/../shared/data` when it exists, else None."""
    env = os.environ.get(MIRROR_ENV)
    if env:
        return Path(env)
    shared = REPO.parent / "shared" / "data" if REPO else None
    return shared if shared and shared.is_dir() else None


def default_data_dir():
    """Where prepared data lives by default: the checkout's `data/`, else `./data`."""
    return REPO / "data" if REPO else Path("data")


def content_bytes(path):
    path = Path(path)
    data = path.read_bytes()
    return lzma.decompress(data) if path.suffix == ".xz" else data


def _check(key, spec, path):
    """The content's sha256, after checking it against the record (SourceError if it differs)."""
    data = content_bytes(path)
    sha256 = hashlib.sha256(data).hexdigest()
    if spec.get("sha256"):
        if sha256 != spec["sha256"]:
            raise SourceError(
                f"{path}: sha256 {sha256} but lora_nlg/data/sources.json records {spec['sha256']} for {key} "
                f"(official copy: {spec['url']}); the file is corrupt or a different version"
            )
    else:
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if not blob.startswith(spec["git_blob_prefix"]):
            raise SourceError(
                f"{path}: git blob id {blob} does not start with {spec['git_blob_prefix']}, the id upstream "
                f"records for {key} ({spec['url']})"
            )
    return sha256


def fetch(key, spec, mirror=None, cache_dir=None, download=True):
    """A local path holding `key`'s content (possibly `.xz`), checked; and its content sha256.

    Looks in `mirror/KEY`, `mirror/KEY.xz`, `cache_dir/KEY`; else downloads `spec["url"]` into
    `cache_dir/KEY` (when `download`). Raises SourceError naming the file, the URL and the mirror
    variable when none of that works.
    """
    candidates = []
    if mirror is not None:
        candidates += [Path(mirror) / key, Path(mirror) / (key + ".xz")]
    if cache_dir is not None:
        candidates.append(Path(cache_dir) / key)
    for path in candidates:
        if path.is_file():
            return path, _check(key, spec, path)
    where = f"mirror {mirror}" if mirror is not None else "no mirror folder"
    hint = (
        f"put the file at MIRROR/{key} (or {key}.xz) and pass --mirror MIRROR or set {MIRROR_ENV}, "
        f"or download {spec['url']} to {Path(cache_dir or 'data/cache') / key}"
    )
    if not download or cache_dir is None:
        raise SourceError(f"{key}: not found ({where}; downloads off). Official URL: {spec['url']}. To fix: {hint}")
    target = Path(cache_dir) / key
    try:
        with urllib.request.urlopen(spec["url"], timeout=60) as response, atomic_write(target, "wb") as f:
            shutil.copyfileobj(response, f)
    except (urllib.error.URLError, OSError) as e:
        raise SourceError(
            f"{key}: not found ({where}) and the download of {spec['url']} failed ({e}). To fix: {hint}"
        ) from None
    try:
        return target, _check(key, spec, target)
    except SourceError:
        target.unlink()
        raise
