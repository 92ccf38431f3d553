"""``gpt2_decode.py``: predictions + references -> the files the official scorers read.

    python src/gpt2_decode.py --sample_file RUN/predict.jsonl --input_file data/e2e/test_unique.jsonl \\
        --output_ref_file e2e_ref.txt --output_pred_file e2e_pred.txt                    (E2E scorer)
    python src/gpt2_decode.py --sample_file RUN/predict.jsonl --input_file data/dart/test_unique.jsonl \\
        --ref_type dart --ref_num 6 --output_ref_file refs_dart --output_pred_file hyp_dart   (GenerationEval)

Inputs (each format recognised by its fields):
- ``--sample_file``: our predictions (``{"id", "token_ids", "text"}``: the text is used) or the
  upstream's (``{"id", "predict": [ids]}``: decoded, cut at "<|endoftext|>" and at the first blank
  line, stripped, as upstream did);
- ``--input_file``: a ``*_unique.jsonl`` (one line per input, ``references``; prediction ids are its
  ``id``s) or upstream's ``*_formatted.jsonl`` (one line per (context, completion) pair, WebNLG's with
  ``cate``; prediction ids are line numbers from 0, and ``--ref_unique_file``, one int per line, may
  group lines as in upstream).

Protocols (``--protocol``, printed with every run):
- ``paper`` (microsoft/LoRA's ``gpt2_decode.py``, what the paper's numbers used): inputs grouped by
  their context string (identical strings merge, DART test: 4,159 groups of 5,097 inputs), the
  last prediction of a group in file order is its hypothesis; GenerationEval gets exactly
  ``--ref_num`` reference files, a group's references beyond that dropped and missing ones filled
  with its first reference; ``--tokenize --lower`` are on by default for WebNLG and DART (the
  paper's commands pass them), off for E2E;
- ``official``: every input of a ``*_unique.jsonl`` once, with all its references (as many
  reference files as the input with the most references; the others are filled with their first
  reference, which changes neither BLEU's clipped counts and closest length, nor METEOR's and TER's
  best match); no tokenizing or lowercasing by default (the scorers tokenize themselves).

Files are written so that the scorers read exactly one line per input:
- E2E scorer: references one per line, inputs separated by one blank line, no blank line after
  the last input; predictions one per line;
- GenerationEval (``reference0`` .. ``reference{N-1}`` in the ``--output_ref_file`` folder, and the
  hypothesis file): lines joined by "\\n" with no newline at the end, because GenerationEval splits
  on "\\n" and a final newline is an extra empty segment.
A line break inside a reference or hypothesis would shift every later line: it becomes a space.
Every file is written atomically.
"""

import dataclasses
import errno
import os
import re
from typing import Dict, Hashable, List, Literal, Optional, Tuple

from lora_nlg.atomic import atomic_write_all
from lora_nlg.catalog import DATASETS
from lora_nlg.cli import parse_config, run_program
from lora_nlg.data.files import read_formatted, read_predictions, unique_records, upstream_cut, upstream_tokenize
from lora_nlg.errors import FormatError, InputError
from lora_nlg.jsonl import json_records, text_lines

PROTOCOLS = ("paper", "official")
_LINE_BREAK = re.compile(r"\s*[\r\n]+\s*")


@dataclasses.dataclass
class DecodeConfig:
    """Write reference and hypothesis files for the E2E scorer or GenerationEval (upstream's gpt2_decode.py flags)."""

    vocab: Optional[str] = None
    """GPT-2 vocabulary folder, to decode upstream's prediction files (default: data/gpt2-vocab or the mirror)."""
    sample_file: str = ""
    """Predictions: gpt2_beam.py's jsonl, or upstream's ({"id", "predict"})."""
    input_file: str = ""
    """References: a *_unique.jsonl, or upstream's *_formatted.jsonl."""
    output_ref_file: str = ""
    """E2E: the reference file; WebNLG / DART: a folder for reference0..reference{N-1}."""
    output_pred_file: str = ""
    """The hypothesis file (one line per scored input)."""
    ref_unique_file: Optional[str] = None
    """Upstream's: one int per line of a *_formatted.jsonl, the group of that line (default: its context)."""
    ref_type: Literal[tuple(DATASETS)] = "e2e"
    """e2e: one reference file, inputs separated by blank lines; webnlg / dart: GenerationEval's files."""
    ref_num: int = 4
    """paper protocol, WebNLG / DART: the number of reference files (the paper's commands use 6)."""
    tokenize: Optional[bool] = None
    """Split off non-word characters (' '.join(re.split(r'(\\W)', s)), whitespace squeezed).
    Default: on for the paper protocol on WebNLG / DART, else off."""
    lower: Optional[bool] = None
    """Lowercase both sides. Default: as --tokenize."""
    filter: Literal["all", "seen", "unseen"] = "all"
    """WebNLG only: inputs of the categories seen in training, unseen, or all."""
    protocol: Literal["paper", "official"] = "paper"
    """paper: microsoft/LoRA's grouping and reference cap; official: every input, all references."""

    def __post_init__(self):
        if self.ref_num < 1:
            raise ValueError(f"ref_num must be >= 1, got {self.ref_num}")
        default = self.protocol == "paper" and self.ref_type in ("webnlg", "dart")
        if self.tokenize is None:
            self.tokenize = default
        if self.lower is None:
            self.lower = default


@dataclasses.dataclass
class Source:
    """One line of the input file."""

    pred_id: int  # the prediction id belonging to this line
    group: Hashable  # paper protocol: the context string (or upstream's ref_unique id)
    official: Hashable  # official protocol: the input's id (a formatted file only has the group)
    references: List[str]
    seen: Optional[bool]
    where: str


@dataclasses.dataclass
class Group:
    where: str
    references: List[str]
    hypothesis: Optional[str] = None


def post_process(text: str, tokenize: bool, lower: bool) -> str:
    text = _LINE_BREAK.sub(" ", text)
    if lower:
        text = text.lower()
    if tokenize:
        text = upstream_tokenize(text)
    return text


# ------------------------------------------------------------------------------------- reading


def read_sources(path: str, ref_unique_file: Optional[str] = None) -> Tuple[List[Source], str]:
    """The input file's lines and its kind ('unique' or 'formatted')."""
    first = next(json_records(path), None)
    if first is None:
        raise ValueError(f"{path}: empty")
    if "references" in first[1]:
        if ref_unique_file:
            raise ValueError(
                f"--ref_unique_file is for upstream's *_formatted.jsonl; {path} already has one line per input"
            )
        sources = []
        for line_no, item in unique_records(path, need=("id", "context", "references")):
            where = f"{path}:{line_no}"
            refs = item["references"]
            sources.append(
                Source(
                    item["id"],
                    item["context"],
                    ("id", item["id"]),
                    [r.strip() for r in refs],
                    item.get("seen"),
                    f"{where} (id {item['id']})",
                )
            )
        return sources, "unique"
    rows = read_formatted(path)
    groups = None
    if ref_unique_file:
        groups = []
        for line_no, line in enumerate(text_lines(ref_unique_file), 1):
            if line.strip():
                try:
                    groups.append(int(line))
                except ValueError:
                    raise FormatError(
                        f"{ref_unique_file}:{line_no}: expected an integer, got {line.strip()!r}"
                    ) from None
        if len(groups) != len(rows):
            raise ValueError(f"{ref_unique_file}: {len(groups)} lines, {path} has {len(rows)}")
    sources = []
    for i, row in enumerate(rows):
        ref = upstream_cut(row.completion)
        if not ref:
            raise ValueError(f"{row.where}: empty completion")
        group = row.context if groups is None else groups[i]
        sources.append(Source(i, group, group, [ref], row.seen, row.where))
    return sources, "formatted"


def keep_source(source: Source, which: str) -> bool:
    if which == "all":
        return True
    if source.seen is None:
        raise ValueError(
            f"{source.where}: --filter {which} needs the seen/unseen flag ('seen' or 'cate'), "
            f"which this input lacks (WebNLG files have it)"
        )
    return bool(source.seen) == (which == "seen")


def build_groups(sources: List[Source], predictions: Dict[int, str], protocol: str, which: str = "all") -> List[Group]:
    """The scored inputs in order of first appearance, their references and hypothesis."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    known = {s.pred_id for s in sources}
    unknown = [i for i in predictions if i not in known]
    if unknown:
        raise ValueError(
            f"predictions for ids the input file does not have: {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''} (is --input_file the file that was decoded?)"
        )
    groups: Dict[Hashable, Group] = {}
    source_of: Dict[int, Hashable] = {}
    for s in sources:
        if not keep_source(s, which):
            continue
        key = s.group if protocol == "paper" else s.official
        g = groups.setdefault(key, Group(s.where, []))
        g.references.extend(s.references)
        source_of[s.pred_id] = key
    for pred_id, text in predictions.items():  # file order: the last one of a group wins (upstream)
        if pred_id in source_of:
            groups[source_of[pred_id]].hypothesis = text
    missing = [g.where for g in groups.values() if g.hypothesis is None]
    if missing:
        raise ValueError(f"{len(missing)} input(s) have no prediction, e.g. {missing[0]}")
    return list(groups.values())


# ------------------------------------------------------------------------------------- writing


def write_e2e(groups: List[Group], ref_path: str, pred_path: str, tokenize: bool, lower: bool) -> None:
    """The E2E scorer's files: references grouped by blank lines (none after the last group)."""
    blocks, hyps = [], []
    for g in groups:
        refs = [post_process(r, tokenize, lower) for r in g.references]
        if not all(refs):
            raise ValueError(f"{g.where}: a reference is empty after processing")
        blocks.append("".join(r + "\n" for r in refs))
        hyps.append(post_process(g.hypothesis, tokenize, lower) + "\n")
    atomic_write_all({ref_path: "\n".join(blocks), pred_path: "".join(hyps)})


def write_generation_eval(
    groups: List[Group], ref_dir: str, pred_path: str, n_refs: int, tokenize: bool, lower: bool
) -> int:
    """GenerationEval's files; returns how many references did not fit in ``n_refs`` files."""
    columns = [[] for _ in range(n_refs)]
    dropped = 0
    for g in groups:
        refs = [post_process(r, tokenize, lower) for r in g.references]
        dropped += max(len(refs) - n_refs, 0)
        for j in range(n_refs):
            columns[j].append(refs[j] if j < len(refs) else refs[0])
    if os.path.exists(ref_dir) and not os.path.isdir(ref_dir):
        raise NotADirectoryError(errno.ENOTDIR, "a file, where the folder of reference files is to go", ref_dir)
    files = {os.path.join(ref_dir, f"reference{j}"): "\n".join(lines) for j, lines in enumerate(columns)}
    files[pred_path] = "\n".join(post_process(g.hypothesis, tokenize, lower) for g in groups)
    atomic_write_all(files)
    return dropped


def run(cfg: DecodeConfig) -> dict:
    for name in ("sample_file", "input_file", "output_ref_file", "output_pred_file"):
        if not getattr(cfg, name):
            raise ValueError(f"--{name} is required")
    if cfg.filter != "all" and cfg.ref_type != "webnlg":
        raise ValueError("--filter seen/unseen applies to WebNLG only")
    if cfg.vocab and not os.path.isdir(cfg.vocab):
        raise InputError(f"--vocab {cfg.vocab}: no such folder (it holds encoder.json and vocab.bpe)")
    sources, kind = read_sources(cfg.input_file, cfg.ref_unique_file)
    predictions = dict(read_predictions(cfg.sample_file, cfg.vocab))
    if not predictions:
        raise FormatError(f"{cfg.sample_file}: no predictions")
    groups = build_groups(sources, predictions, cfg.protocol, cfg.filter)
    n_sources = sum(keep_source(s, cfg.filter) for s in sources)
    summary = {
        "protocol": cfg.protocol,
        "input_kind": kind,
        "inputs": len(groups),
        "input_lines": n_sources,
        "references": sum(len(g.references) for g in groups),
        "tokenize": cfg.tokenize,
        "lower": cfg.lower,
        "filter": cfg.filter,
    }
    if cfg.ref_type == "e2e":
        write_e2e(groups, cfg.output_ref_file, cfg.output_pred_file, cfg.tokenize, cfg.lower)
    else:
        n_refs = cfg.ref_num if cfg.protocol == "paper" else max(len(g.references) for g in groups)
        summary["reference_files"] = n_refs
        summary["references_dropped"] = write_generation_eval(
            groups, cfg.output_ref_file, cfg.output_pred_file, n_refs, cfg.tokenize, cfg.lower
        )
    return summary


def main(argv=None) -> int:
    return run_program("gpt2_decode.py", _main, argv)


def _main(argv) -> int:
    cfg = parse_config(DecodeConfig, argv, prog="gpt2_decode.py")
    summary = run(cfg)
    note = ""
    if cfg.protocol == "official" and summary["input_kind"] == "formatted":
        note = " (a *_formatted.jsonl only knows context strings: inputs are grouped by them)"
    print(f"protocol {cfg.protocol}{note}: " + ", ".join(f"{k} {v}" for k, v in summary.items() if k != "protocol"))
    return 0
