"""Reading system outputs and references, and pairing them; errors name file, line and field.

Predictions (one output per input):
- `*.jsonl`: what `gpt2_beam.py` writes, `{"id": int, "text": str, ...}` per line
  (`lora_nlg.data.files.read_predictions`; upstream's `{"id", "predict"}` too);
- `*.tsv` / `*.csv` with a header: the E2E challenge format, an MR column and an output column
  (paired with the references by MR, as the official scorer does);
- any other file: plain text, one output per line, in reference order (a final newline ends the
  last line; it does not add an empty output).

References:
- `test_unique.jsonl` (the prepared test file, `lora_nlg.data.files.read_unique`): `{"id",
  "context", "references": [...]}` plus `"category"`, `"seen"` for WebNLG;
- E2E `testset_w_refs.csv` (columns mr, ref): references grouped by MR, MRs in order of first
  appearance (with the official scorer's fixes of mis-encoded `£`/`é` in CSV/TSV files);
- a folder of GenerationEval files `reference0`, `reference1`, ... (or `<prefix>reference<k>
  [.ext]`, e.g. `gold-all-cat-reference0.lex`): line i of each file is a reference of input i;
  empty lines are padding, not references;
- any other file: references of one input on consecutive lines, inputs separated by a blank
  line (E2E `devel-conc.txt`, microsoft/LoRA's `e2e_ref.txt`).
Inputs read from text formats get ids 0, 1, 2, ... in file order.
"""

import collections
import csv
import dataclasses
import io
import os
import re

from lora_nlg.data import files
from lora_nlg.errors import FormatError


@dataclasses.dataclass
class Reference:
    """One input to describe and its human references."""

    id: int
    references: list
    context: str = None
    category: str = None
    seen: bool = None
    mr: str = None  # E2E CSV only: the MR string, to pair with TSV outputs


# The official E2E scorer's repairs of mis-encoded characters in CSV/TSV input (read_tsv).
E2E_CSV_FIXES = (("\ufeff", ""), ("Ł", "£"), ("Â£", "£"), ("Ã©", "é"), ("ã©", "é"))
# Its header patterns (measure_scores.py HEADER_SRC / HEADER_SYS / HEADER_REF).
HEADER_SRC = r"(mr|src|source|meaning(?:[_ .-]rep(?:resentation)?)?|da|dial(?:ogue)?[_ .-]act)s?$"
HEADER_SYS = r"(out(?:put)?|ref(?:erence)?|sys(?:tem)?(?:[_ .-](?:out(?:put)?|ref(?:erence)?))?)s?$"
HEADER_REF = r"(trg|tgt|target|ref(?:erence)?|human(?:[_ .-](?:ref(?:erence)?))?)s?$"
_REFERENCE_FILE = re.compile(r"^(.*)reference(\d+)((?:\.[A-Za-z0-9]+)?)$")


def _read_text(path):
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 ({e})") from None


def _lines(path):
    """Lines without their line ends (\\n, \\r\\n); a final line end adds no empty line."""
    text = _read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _is_csv(path):
    return os.path.splitext(path)[1].lower() in (".csv", ".tsv")


def _csv_rows(path, column_patterns):
    """Rows of an E2E CSV/TSV as dicts of the columns matching `column_patterns` (name -> regex)."""
    text = _read_text(path)
    for bad, good in E2E_CSV_FIXES:
        text = text.replace(bad, good)
    first = text.split("\n", 1)[0]
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t" if "\t" in first else ","))
    if not rows:
        raise FormatError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    columns = {}
    for name, pattern in column_patterns.items():
        found = [i for i, h in enumerate(header) if re.match(pattern, h, re.I)]
        if len(found) != 1:
            raise FormatError(f"{path}:1: expected one {name} column in the header, got {header}")
        columns[name] = found[0]
    out = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise FormatError(f"{path}:{number}: {len(row)} fields, the header has {len(header)}")
        out.append({name: row[i].strip() for name, i in columns.items()})
    return out


def read_predictions(path):
    """Returns (items, keyed_by): items is a list of (key, text); keyed_by is "id" (jsonl),
    "mr" (E2E TSV/CSV) or "order" (plain text: key = line index)."""
    if path.endswith(".jsonl"):
        return files.read_predictions(path), "id"
    if _is_csv(path):
        rows = _csv_rows(path, {"MR": HEADER_SRC, "output": HEADER_SYS})
        return [(r["MR"], r["output"]) for r in rows], "mr"
    return [(i, line.strip()) for i, line in enumerate(_lines(path))], "order"


def read_references(path):
    """List of Reference, in input order, from any of the formats in the module docstring."""
    if os.path.isdir(path):
        return _reference_folder(path)
    if path.endswith(".jsonl"):
        return _reference_jsonl(path)
    if _is_csv(path):
        return _reference_csv(path)
    return _reference_blocks(path)


def _reference_jsonl(path):
    return [
        Reference(
            id=r["id"],
            references=[x.strip() for x in r["references"]],
            context=r.get("context"),
            category=r.get("category"),
            seen=r.get("seen"),
        )
        for r in files.read_unique(path, need=("id", "references"))
    ]


def _reference_csv(path):
    groups = collections.OrderedDict()
    for row in _csv_rows(path, {"MR": HEADER_SRC, "ref": HEADER_REF}):
        groups.setdefault(row["MR"], []).append(row["ref"])
    return [Reference(id=i, references=refs, context=mr, mr=mr) for i, (mr, refs) in enumerate(groups.items())]


def _reference_folder(path):
    groups = collections.defaultdict(dict)
    for name in os.listdir(path):
        m = _REFERENCE_FILE.match(name)
        if m:
            groups[(m.group(1), m.group(3))][int(m.group(2))] = os.path.join(path, name)
    if len(groups) != 1:
        raise FormatError(
            f"{path}: expected one set of files <prefix>reference0, reference1, ..., found "
            f"{sorted(p + 'reference*' + e for p, e in groups) or 'none'}"
        )
    numbered = next(iter(groups.values()))
    if sorted(numbered) != list(range(len(numbered))):
        raise FormatError(f"{path}: reference files must be numbered 0..{len(numbered) - 1}, found {sorted(numbered)}")
    columns = [_lines(numbered[k]) for k in range(len(numbered))]
    n = len(columns[0])
    for k, col in enumerate(columns):
        if len(col) != n:
            raise FormatError(f"{numbered[k]}: {len(col)} lines, {numbered[0]} has {n}")
    out = []
    for i in range(n):
        refs = [col[i].strip() for col in columns if col[i].strip()]
        if not refs:
            raise FormatError(f"{path}: input on line {i + 1} has no reference in any file")
        out.append(Reference(id=i, references=refs))
    return out


def _reference_blocks(path):
    blocks, current = [], []
    for line in _lines(path):
        if line.strip():
            current.append(line.strip())
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    if not blocks:
        raise FormatError(f"{path}: no references")
    return [Reference(id=i, references=refs) for i, refs in enumerate(blocks)]


def _describe(keys, limit=10):
    keys = sorted(keys, key=str)
    shown = ", ".join(repr(k) if isinstance(k, str) else str(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def pair(predictions, keyed_by, references, predictions_path="predictions", references_path="references"):
    """List of (Reference, prediction text) in reference order; an error names what is missing
    or extra when the two do not correspond one to one, or an input whose reference is empty."""
    for ref in references:
        empty = [k for k, r in enumerate(ref.references) if not r.strip()]
        if empty or not ref.references:
            raise FormatError(f"{references_path}: input {ref.id}: reference {empty[0] if empty else 0} is empty")
    if keyed_by == "order":
        if len(predictions) != len(references):
            raise FormatError(
                f"{predictions_path}: {len(predictions)} outputs (one per line) but "
                f"{references_path} has {len(references)} inputs"
            )
        return [(ref, text) for ref, (_, text) in zip(references, predictions)]
    if keyed_by == "mr":
        if any(ref.mr is None for ref in references):
            raise FormatError(
                f"{predictions_path}: outputs keyed by MR need references keyed by MR "
                f"(the E2E testset_w_refs.csv), not {references_path}"
            )
        ref_key = {ref.mr: ref for ref in references}
        predicted = dict(predictions)
        if len(predicted) != len(predictions):
            dup = [k for k, c in collections.Counter(k for k, _ in predictions).items() if c > 1]
            raise FormatError(f"{predictions_path}: MRs given more than once: {_describe(dup)}")
    else:
        ref_key = {ref.id: ref for ref in references}
        predicted = dict(predictions)
    missing = set(ref_key) - set(predicted)
    extra = set(predicted) - set(ref_key)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no output for {len(missing)} {keyed_by}(s) of {references_path}: {_describe(missing)}")
        if extra:
            parts.append(f"{len(extra)} output {keyed_by}(s) not in {references_path}: {_describe(extra)}")
        raise FormatError(f"{predictions_path}: " + "; ".join(parts))
    key = (lambda r: r.mr) if keyed_by == "mr" else (lambda r: r.id)
    return [(ref, predicted[key(ref)]) for ref in references]
