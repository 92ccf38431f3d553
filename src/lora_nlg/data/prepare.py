"""Raw E2E / WebNLG 2017 / DART files -> the files training and decoding read (docs/CONVENTIONS.md);
and ``gpt2_encode.py``, which encodes one formatted file.

    bash scripts/create_datasets.sh [e2e|webnlg|dart|all ...] [--mirror DIR] [--force] ...
    python -m lora_nlg.data.prepare --datasets e2e webnlg [--mirror DIR] [--data_dir DIR] [--no_download]

For each dataset and split, under `data/<folder>/` (``lora_nlg.catalog``):
- `<split>_formatted.jsonl`: upstream's text form, one `{"context", "completion"}` per pair
  (WebNLG lines also carry upstream's `"cate"`: category is seen);
- `<split>.jsonl`: upstream's encoded form, `context` = BPE(context) + [50256],
  `completion` = BPE(" " + completion) + [50256];
- valid/test also `<split>_unique.jsonl`: one line per input, `{"id", "context", "context_ids",
  "references"}` (+ `"category", "seen"` for WebNLG), ids 0.. in order of first appearance.
The vocabulary goes to `data/gpt2-vocab/`. A dataset is rebuilt only when its raw files, the
vocabulary, the options or this code changed (`data/<ds>/.prepared.json` records what it was
built from). Every output is written to a temporary file and renamed.
"""

import fnmatch
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Literal, Optional

from lora_nlg.atomic import atomic_write
from lora_nlg.catalog import DATASETS, EOS_ID, SEEN_CATEGORIES
from lora_nlg.cli import parse_config, positional, run_program
from lora_nlg.data import files
from lora_nlg.data import raw as D
from lora_nlg.data.sources import SourceError, default_data_dir, default_mirror, fetch, load_sources
from lora_nlg.data.tokenizer import VOCAB_FILES, GPT2Tokenizer
from lora_nlg.errors import FormatError

VOCAB_KEYS = tuple("gpt2-vocab/" + name for name in VOCAB_FILES)
SPLITS = ("train", "valid", "test")
UNIQUE_SPLITS = ("valid", "test")

READERS = {
    "e2e_csv": lambda paths, opts: D.read_e2e_csv(paths[0], text=opts["e2e_text"]),
    "webnlg_xml": lambda paths, opts: D.read_webnlg_xml(paths),
    # The official DART test file has one empty annotation; it is dropped and reported.
    "dart_json": lambda paths, opts: D.read_dart_json(paths[0], empty_references="drop"),
}

_CODE_FILES = ("raw.py", "files.py", "prepare.py", "tokenizer.py")


def _code_hash():
    h = hashlib.sha256()
    for name in _CODE_FILES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()


def encode_pairs(tokenizer, pairs):
    """Upstream's encoding: context BPE + [BOS]; BPE(" " + completion) + [EOS]; BOS = EOS = 50256."""
    contexts = sorted({p.context for p in pairs})
    context_ids = dict(zip(contexts, (ids + [EOS_ID] for ids in tokenizer.encode_batch(contexts))))
    completions = tokenizer.encode_batch([" " + p.completion for p in pairs])
    return [(context_ids[p.context], ids + [EOS_ID]) for p, ids in zip(pairs, completions)], context_ids


def write_split(out_dir, split, pairs, tokenizer):
    """Write the split's formatted, encoded and (valid/test) unique files; return the input count."""
    encoded, context_ids = encode_pairs(tokenizer, pairs)
    files.write_formatted(
        out_dir / f"{split}_formatted.jsonl",
        ((p.context, p.completion, None if p.category is None else p.category in SEEN_CATEGORIES) for p in pairs),
    )
    files.write_encoded(out_dir / f"{split}.jsonl", encoded)
    inputs = D.unique_inputs(pairs)
    if split in UNIQUE_SPLITS:
        files.write_unique(
            out_dir / f"{split}_unique.jsonl",
            (
                {
                    "id": r["id"],
                    "context": r["context"],
                    "context_ids": context_ids[r["context"]],
                    "references": r["references"],
                    **{k: r[k] for k in ("category", "seen") if k in r},
                }
                for r in inputs
            ),
        )
    return len(inputs)


def encode_formatted(input_path, output_path, tokenizer, add_bos=True, add_eos=True):
    """Upstream's `gpt2_encode.py`: formatted jsonl -> encoded jsonl (BOS after the context, EOS
    after the completion, each only when asked)."""
    pairs = files.read_formatted(input_path)
    if not pairs:
        raise FormatError(f"{input_path}: no lines to encode")
    contexts = tokenizer.encode_batch([p.context for p in pairs])
    completions = tokenizer.encode_batch([" " + p.completion for p in pairs])
    bos = [EOS_ID] if add_bos else []
    eos = [EOS_ID] if add_eos else []
    files.write_encoded(output_path, ((c + bos, t + eos) for c, t in zip(contexts, completions)))
    return len(pairs)


def obtain_vocab(data_dir, sources, mirror, download, log):
    """Copy (or download) the checked GPT-2 vocabulary into `data_dir/gpt2-vocab/`; its shas."""
    vocab_dir = Path(data_dir) / "gpt2-vocab"
    shas = {}
    for key in VOCAB_KEYS:
        path, sha = fetch(key, sources[key], mirror, Path(data_dir) / "cache", download)
        target = Path(data_dir) / key
        if not target.is_file() or hashlib.sha256(target.read_bytes()).hexdigest() != sha:
            with atomic_write(target, "wb") as f:
                f.write(path.read_bytes())
            log(f"vocab: {key} <- {path}")
        shas[key] = sha
    ignore = vocab_dir / ".gitignore"
    if not ignore.is_file():  # the folder is a download, never committed
        ignore.write_text("*\n")
    return vocab_dir, shas


def _split_files(sources, pattern):
    return sorted(k for k in sources if fnmatch.fnmatchcase(k, pattern))


def prepare_dataset(name, data_dir, sources, mirror, download, tokenizer_dir, vocab_shas, opts, force, log):
    """Prepare one dataset. Returns the list of splits that could not be built (optional raw
    files missing), after writing every split that could."""
    spec = DATASETS[name]
    out_dir = Path(data_dir) / spec.folder
    cache_dir = Path(data_dir) / "cache"
    inputs, missing, provenance = {}, {}, {}
    for split, pattern in spec.splits.items():
        keys = _split_files(sources, pattern)
        if not keys:
            raise SourceError(f"lora_nlg/data/sources.json lists no file matching {pattern!r} ({name} {split})")
        try:
            fetched = [fetch(k, sources[k], mirror, cache_dir, download) for k in keys]
        except SourceError as e:
            if all(sources[k].get("optional") for k in keys):
                missing[split] = str(e)
                continue
            raise
        inputs[split] = [path for path, _ in fetched]
        provenance[split] = {k: sha for k, (_, sha) in zip(keys, fetched)}
    stamp = {
        "code": _code_hash(),
        "vocab": vocab_shas,
        "options": {k: v for k, v in opts.items() if name == "e2e" or k != "e2e_text"},
        "inputs": provenance,
    }
    stamp_path = out_dir / ".prepared.json"
    outputs = [out_dir / f"{s}{suffix}" for s in inputs for suffix in ("_formatted.jsonl", ".jsonl")]
    outputs += [out_dir / f"{s}_unique.jsonl" for s in inputs if s in UNIQUE_SPLITS]
    if not force and stamp_path.is_file() and all(p.is_file() for p in outputs):
        if json.loads(stamp_path.read_text()) == stamp:
            log(f"{name}: up to date ({out_dir})")
            return list(missing.items())
    tokenizer = GPT2Tokenizer.from_dir(tokenizer_dir)
    stamp_path.unlink(missing_ok=True)  # a failure below leaves the dataset marked out of date
    for split in SPLITS:
        if split not in inputs:
            continue
        t0 = time.perf_counter()
        pairs = READERS[spec.reader](inputs[split], opts)
        dropped = getattr(pairs, "dropped", [])
        if dropped:
            log(
                f"WARNING: {name} {split}: dropped {len(dropped)} reference(s) or input(s) without a usable "
                f"reference: {'; '.join(dropped[:3])}{' ...' if len(dropped) > 3 else ''}"
            )
        n_inputs = write_split(out_dir, split, pairs, tokenizer)
        log(
            f"{name} {split}: {len(pairs):,} pairs, {n_inputs:,} inputs -> {out_dir} ({time.perf_counter() - t0:.1f} s)"
        )
    with atomic_write(stamp_path) as f:
        json.dump(stamp, f, indent=1, sort_keys=True)
    return list(missing.items())


@dataclass
class PrepareConfig:
    """Prepare E2E, WebNLG 2017 and DART from their raw files (see docs/CONVENTIONS.md)."""

    datasets: List[str] = positional("*", aliases=("--datasets",), default_factory=lambda: ["all"])
    """Datasets to prepare: any of e2e, webnlg, dart, or all (default: all)."""
    mirror: Optional[str] = None
    """Folder holding the raw files (default: $NLG_DATA_MIRROR, else ../shared/data when it exists)."""
    data_dir: Optional[str] = None
    """Output folder (default: the repository's data/, or ./data for an installed package)."""
    no_download: bool = False
    """Never download: use the mirror and data/cache only."""
    force: bool = False
    """Rebuild even when the outputs are up to date."""
    e2e_text: Literal["raw", "moses"] = "raw"
    """E2E completions: the official CSV text, or Moses-tokenized like upstream's e2e/*.txt."""
    sources: Optional[str] = None
    """Sources file: official URL and sha256 of each raw file (default: lora_nlg/data/sources.json)."""

    def __post_init__(self):
        unknown = [d for d in self.datasets if d not in (*DATASETS, "all")]
        if unknown or not self.datasets:
            raise ValueError(f"datasets: {unknown or 'none given'}; choose from {', '.join([*DATASETS, 'all'])}")


def main(argv=None):
    return run_program("create_datasets", _main, argv, code=1)


def _main(argv):
    args = parse_config(PrepareConfig, argv, prog="create_datasets")
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    names = list(DATASETS) if "all" in args.datasets else list(dict.fromkeys(args.datasets))
    mirror = Path(args.mirror) if args.mirror else default_mirror()
    sources = load_sources(args.sources) if args.sources else load_sources()
    download = not args.no_download
    opts = {"e2e_text": args.e2e_text}

    def log(message):
        print(message, flush=True)

    t0 = time.perf_counter()
    vocab_dir, vocab_shas = obtain_vocab(data_dir, sources, mirror, download, log)
    unavailable = []
    for name in names:
        for split, reason in prepare_dataset(
            name, data_dir, sources, mirror, download, vocab_dir, vocab_shas, opts, args.force, log
        ):
            unavailable.append((name, split, reason))
    for name, split, reason in unavailable:
        # DART's train file is not in the shared mirror: the other splits are written; asked for
        # alone, that is an error; as part of `all`, a warning.
        level = "WARNING" if "all" in args.datasets else "ERROR"
        print(
            f"{level}: {name} {split} unavailable, the other splits were written. {reason}", file=sys.stderr, flush=True
        )
    log(f"done in {time.perf_counter() - t0:.1f} s")
    return 1 if unavailable and "all" not in args.datasets else 0


@dataclass
class EncodeConfig:
    """Encode a formatted jsonl file with GPT-2's BPE (upstream's gpt2_encode.py)."""

    input: str = ""
    """Formatted jsonl: one {"context": str, "completion": str} per line."""
    output: str = ""
    """Encoded jsonl to write: one {"context": [ids], "completion": [ids]} per line."""
    vocab: Optional[str] = None
    """Folder with encoder.json and vocab.bpe (default: data/gpt2-vocab, else the shared mirror's)."""
    add_bos: bool = False
    """Append 50256 to each context."""
    add_eos: bool = False
    """Append 50256 to each completion."""

    def __post_init__(self):
        if not self.input or not self.output:
            raise ValueError("--input and --output are required")


def encode_main(argv=None):
    """``gpt2_encode.py``."""
    return run_program("gpt2_encode.py", _encode_main, argv, code=1)


def _encode_main(argv):
    cfg = parse_config(EncodeConfig, argv, prog="gpt2_encode.py")
    tokenizer = GPT2Tokenizer.from_dir(cfg.vocab)
    n = encode_formatted(cfg.input, cfg.output, tokenizer, add_bos=cfg.add_bos, add_eos=cfg.add_eos)
    print(f"{cfg.input}: {n} lines -> {cfg.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
