"""The prepared-data and prediction files of docs/CONVENTIONS.md: one reader and one writer each,
and upstream's clean-up of generated text.

- formatted ``<split>_formatted.jsonl``: ``{"context": str, "completion": str}`` (+ ``"cate"``:
  seen, for WebNLG), one line per (input, reference) pair;
- encoded ``<split>.jsonl``: ``{"context": [ids], "completion": [ids]}``, the same pairs as token ids;
- unique ``<split>_unique.jsonl``: one line per input, ``{"id", "context", "context_ids",
  "references"}`` (+ ``"category", "seen"`` for WebNLG);
- predictions (``gpt2_beam.py``): ``{"id", "token_ids", "text"}`` per input; upstream's
  ``{"id", "predict": [ids]}`` is read too (decoded and cut as upstream did).

Readers raise ``FormatError`` naming ``file:line`` and the field.
"""

import json
import re
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from lora_nlg.atomic import atomic_write
from lora_nlg.errors import FormatError
from lora_nlg.jsonl import json_records

UNIQUE_FIELDS = ("id", "context", "context_ids", "references")


def upstream_cut(text: str) -> str:
    """Upstream's clean-up of a decoded text: cut at ``<|endoftext|>`` and at the first blank line,
    stripped."""
    return text.split("<|endoftext|>")[0].split("\n\n")[0].strip()


def upstream_tokenize(text: str) -> str:
    """Upstream's post-processing tokenizer: split off every non-word character, squeeze whitespace."""
    return " ".join(" ".join(re.split(r"(\W)", text)).split())


def _is_ids(value) -> bool:
    return isinstance(value, list) and all(type(i) is int and i >= 0 for i in value)


def _nonempty_string(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


# ------------------------------------------------------------------------------------- formatted


class Formatted(NamedTuple):
    where: str  # file:line
    context: str
    completion: str
    seen: Optional[bool]  # WebNLG's "cate"


def read_formatted(path) -> List[Formatted]:
    """A ``*_formatted.jsonl``, in file order."""
    rows = []
    for line_no, item in json_records(path):
        where = f"{path}:{line_no}"
        for field in ("context", "completion"):
            if field not in item:
                raise FormatError(f"{where}: missing field {field!r}")
            value = item[field]
            if not isinstance(value, str):
                raise FormatError(f"{where}: {field} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise FormatError(f"{where}: empty {field}")
        rows.append(Formatted(where, item["context"], item["completion"], item.get("cate")))
    return rows


def write_formatted(path, rows: Iterable[Tuple[str, str, Optional[bool]]]) -> None:
    """(context, completion, seen or None) per line."""
    write_jsonl(
        path, ({"context": c, "completion": t, **({} if seen is None else {"cate": seen})} for c, t, seen in rows)
    )


# --------------------------------------------------------------------------------------- encoded


def read_encoded(path) -> List[Tuple[List[int], List[int]]]:
    """(context ids, completion ids) per line, in file order."""
    examples = []
    for line_no, item in json_records(path):
        pair = []
        for field in ("context", "completion"):
            if field not in item:
                raise FormatError(f"{path}:{line_no}: missing field '{field}' (expected 'context' and 'completion')")
            if not _is_ids(item[field]) or not item[field]:
                raise FormatError(
                    f"{path}:{line_no}: field '{field}' must be a non-empty list of token ids (ints >= 0)"
                )
            pair.append(item[field])
        examples.append(tuple(pair))
    return examples


def locate(path, index: int) -> int:
    """The line number of the ``index``-th record (0-based; blank lines skipped) of a jsonl file."""
    for i, (line_no, _) in enumerate(json_records(path)):
        if i == index:
            return line_no
    raise IndexError(f"{path}: no record {index}")


def write_encoded(path, examples: Iterable[Tuple[Sequence[int], Sequence[int]]]) -> None:
    write_jsonl(path, ({"context": list(c), "completion": list(t)} for c, t in examples))


# ---------------------------------------------------------------------------------------- unique

_UNIQUE_CHECKS = {
    "id": (lambda v: type(v) is int, "an int"),
    "context": (lambda v: isinstance(v, str), "a string"),
    "context_ids": (lambda v: _is_ids(v) and bool(v), "a non-empty list of token ids"),
    "references": (
        lambda v: isinstance(v, list) and bool(v) and all(isinstance(r, str) and r.strip() for r in v),
        "a non-empty list of strings, none of them empty",
    ),
}


def unique_records(path, need: Sequence[str] = UNIQUE_FIELDS) -> Iterator[Tuple[int, dict]]:
    """(line number, record) of a ``*_unique.jsonl``: the fields ``need`` are required and
    checked, ``seen`` must be a boolean where present, ids are unique."""
    lines: Dict[int, int] = {}
    for line_no, item in json_records(path):
        for field in need:
            if field not in item:
                raise FormatError(f"{path}:{line_no}: missing field '{field}'")
            ok, what = _UNIQUE_CHECKS[field]
            if not ok(item[field]):
                raise FormatError(f"{path}:{line_no}: field '{field}' must be {what}")
        if "seen" in item and item["seen"] is not None and not isinstance(item["seen"], bool):
            raise FormatError(f"{path}:{line_no}: field 'seen' must be true or false")
        if "id" in item:
            if item["id"] in lines:
                raise FormatError(f"{path}:{line_no}: id {item['id']} already on line {lines[item['id']]}")
            lines[item["id"]] = line_no
        yield line_no, item


def read_unique(path, need: Sequence[str] = UNIQUE_FIELDS) -> List[dict]:
    """The records of a ``*_unique.jsonl`` (see ``unique_records``), in file order."""
    return [item for _, item in unique_records(path, need)]


def write_unique(path, records: Iterable[dict]) -> None:
    write_jsonl(path, records)


# ----------------------------------------------------------------------------------- predictions


def read_predictions(path, vocab: Optional[str] = None) -> List[Tuple[int, str]]:
    """(id, text stripped) per line, in file order; upstream's ``"predict"`` ids are decoded with
    the GPT-2 vocabulary ``vocab`` (default: ``default_vocab_dir()``) and cut as upstream did."""
    tokenizer = None
    out, lines = [], {}
    for line_no, item in json_records(path):
        where = f"{path}:{line_no}"
        if "id" not in item:
            raise FormatError(f"{where}: missing field 'id'")
        if type(item["id"]) is not int:
            raise FormatError(f"{where}: field 'id' must be an integer, got {type(item['id']).__name__}")
        if item["id"] in lines:
            raise FormatError(f"{where}: id {item['id']} already on line {lines[item['id']]}")
        lines[item["id"]] = line_no
        if "text" in item:
            if not isinstance(item["text"], str):
                raise FormatError(f"{where}: field 'text' must be a string, got {type(item['text']).__name__}")
            text = item["text"]
        elif "predict" in item:
            if not _is_ids(item["predict"]):
                raise FormatError(f"{where}: field 'predict' must be a list of token ids")
            if tokenizer is None:
                from lora_nlg.data.tokenizer import GPT2Tokenizer

                tokenizer = GPT2Tokenizer.from_dir(vocab)
            text = upstream_cut(tokenizer.decode(item["predict"]))
        else:
            raise FormatError(
                f"{where}: field 'text' is missing (expected gpt2_beam.py's 'text' or upstream's 'predict')"
            )
        out.append((item["id"], text.strip()))
    return out


def degenerate(texts: Sequence[str]) -> Optional[str]:
    """A warning when predictions say nothing: all empty, or all one string (None otherwise)."""
    texts = list(texts)
    if not texts:
        return None
    if not any(t.strip() for t in texts):
        return f"all {len(texts)} predictions are empty: the model emits the stop token first"
    if len(texts) > 1 and len(set(texts)) == 1:
        return f"all {len(texts)} predictions are the same string: {texts[0][:60]!r}"
    return None


def write_predictions(path, rows: Iterable[Tuple[int, List[int], str]]) -> None:
    """(id, token ids, text) per line, in the order given."""
    write_jsonl(path, ({"id": i, "token_ids": ids, "text": text} for i, ids, text in rows), ensure_ascii=False)


# ----------------------------------------------------------------------------------------- write


def write_jsonl(path, records: Iterable[dict], ensure_ascii: bool = True) -> None:
    """One ``json.dumps(record)`` per line (upstream's separators; ASCII escapes unless
    ``ensure_ascii=False``), atomically."""
    with atomic_write(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=ensure_ascii) + "\n")
