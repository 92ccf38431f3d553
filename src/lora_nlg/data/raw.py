"""Readers of the official E2E, WebNLG 2017 and DART files -> `Pair`s.

A `Pair` is one (input, reference) pair: the context string exactly as upstream builds it, the
reference text, and `input_key`, which tells which pairs share one input (E2E: the raw MR string;
WebNLG and DART: the entry's position in the file). `unique_inputs` groups pairs into the
one-line-per-input records used for decoding and scoring.

Context strings (microsoft/LoRA examples/NLG, see docs REFERENCE.md):
- E2E: `name : Blue Spice | Type : coffee shop | area : city centre`, keys renamed (`eatType` ->
  `Type`, `priceRange` -> `price`, `familyFriendly` -> `family friendly`), values Moses-tokenized
  (`£20-25` -> `£ 20 - 25`), as in upstream's `e2e/*.txt`;
- WebNLG: `subject : property : object | ...` from the modified triples, only `good` lexicalisations;
- DART: `subject : property : object | ...` with the property lower-cased, every annotation.

Every reader fails on bad input with a `FormatError` naming the file, the line or entry, and what
was expected.
"""

import csv
import functools
import io
import json
import lzma
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lora_nlg.catalog import SEEN_CATEGORIES
from lora_nlg.errors import FormatError

# E2E MR attribute -> upstream's context key.
E2E_KEYS = {
    "name": "name",
    "eatType": "Type",
    "food": "food",
    "priceRange": "price",
    "customer rating": "customer rating",
    "area": "area",
    "familyFriendly": "family friendly",
    "near": "near",
}

_MR_ATTRIBUTE = re.compile(r"\s*([^\[\],]+?)\[([^\]]*)\]")


@dataclass(frozen=True)
class Pair:
    context: str
    completion: str
    input_key: object  # pairs with equal keys share one input
    where: str  # "file:line" or "file entry N", for messages
    category: Optional[str] = None  # WebNLG only


def read_text(path):
    """The text of `path` (UTF-8), decompressing `.xz` on the fly; line ends kept as they are."""
    path = Path(path)
    data = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 text (byte {e.start}): {e.reason}") from None


def _nonempty(text, where, what):
    if text is None:  # an empty XML element
        raise FormatError(f"{where}: empty {what}")
    if not isinstance(text, str):
        raise FormatError(f"{where}: {what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise FormatError(f"{where}: empty {what}")
    return text


# ----------------------------------------------------------------------------------------------
# E2E


@functools.lru_cache(maxsize=1)
def _moses():
    from sacremoses import MosesTokenizer  # imported late: only E2E needs it

    return MosesTokenizer(lang="en")


@functools.lru_cache(maxsize=None)
def moses_tokenize(text):
    """Moses English tokenization as in upstream's E2E files (aggressive dashes, no escaping)."""
    return _moses().tokenize(text, aggressive_dash_splits=True, escape=False, return_str=True).replace("@-@", "-")


_SENTENCE_END = re.compile(r"[.!?]+(?=\s)")
_NUMBER = re.compile(r"\d+")


def split_sentences(text):
    """Split after `[.!?]+` followed by whitespace, except after a number when the next word is
    lower-case (`... 5. out of ...`); upstream's E2E files were tokenized sentence by sentence."""
    sentences, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        before = text[: m.start()].split()
        after = text[m.end() :].split()
        if before and after and _NUMBER.fullmatch(before[-1]) and after[0][:1].islower():
            continue
        sentences.append(text[start : m.end()].strip())
        start = m.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def e2e_upstream_text(text):
    """A reference tokenized the way upstream's `e2e/valid.txt` is (reproduces it line for line)."""
    return " ".join(moses_tokenize(s) for s in split_sentences(text))


def e2e_context(mr, where):
    """`name[The Vaults], eatType[pub]` -> `name : The Vaults | Type : pub` (values Moses-tokenized)."""
    attributes = _MR_ATTRIBUTE.findall(mr)
    rebuilt = ", ".join(f"{k}[{v}]" for k, v in attributes)
    if not attributes or rebuilt != mr.strip():
        raise FormatError(f"{where}: mr {mr!r} is not a list of 'attribute[value]' separated by ', '")
    parts = []
    for key, value in attributes:
        key = key.strip()
        if key not in E2E_KEYS:
            raise FormatError(f"{where}: unknown MR attribute {key!r}; expected one of {', '.join(E2E_KEYS)}")
        parts.append(f"{E2E_KEYS[key]} : {moses_tokenize(value)}")
    return " | ".join(parts)


def read_e2e_csv(path, text="raw"):
    """Official E2E CSV (`mr`, `ref` columns), one pair per row, in file order.

    text="raw": completions are the CSV references as written (what we train on);
    text="moses": tokenized as upstream's `e2e/*.txt` files (upstream trained on these).
    """
    if text not in ("raw", "moses"):
        raise ValueError(f"text must be 'raw' or 'moses', got {text!r}")
    name = str(path)
    # strict: a quote left open at the end of the file is an error, not a field running to the end
    reader = csv.reader(io.StringIO(read_text(path), newline=""), strict=True)
    pairs = []
    try:
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["mr", "ref"]:
            raise FormatError(f"{name}:1: expected the header 'mr,ref', got {header!r}")
        for row in reader:
            where = f"{name}:{reader.line_num}"
            if len(row) != 2:
                raise FormatError(f"{where}: expected 2 fields (mr, ref), got {len(row)}: {row!r}")
            mr, ref = row
            _nonempty(mr, where, "mr")
            _nonempty(ref, where, "reference (ref)")
            completion = ref if text == "raw" else e2e_upstream_text(ref)
            pairs.append(Pair(e2e_context(mr, where), completion, mr, where))
    except csv.Error as e:
        raise FormatError(f"{name}:{reader.line_num}: malformed CSV ({e}: an unterminated quoted field?)") from None
    return pairs


class PairList(list):
    """A list of pairs that also remembers what the reader dropped (`.dropped`: where, for messages)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.dropped = []


# ----------------------------------------------------------------------------------------------
# WebNLG 2017


def _triples_context(triples):
    return " | ".join(f"{s} : {p} : {o}" for s, p, o in triples)


def read_webnlg_xml(paths):
    """WebNLG 2017 challenge XML files, in the given order (upstream's order: sorted paths).
    One pair per `good` lexicalisation; `input_key` = running entry number over all files. An entry
    without one gives no pair: it is listed in `.dropped`."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    pairs, n_entry = PairList(), 0
    for path in paths:
        name = str(path)
        try:
            root = ET.fromstring(read_text(path))
        except ET.ParseError as e:
            line, column = e.position
            raise FormatError(f"{name}:{line}:{column}: malformed XML ({e})") from None
        entries = root.findall("./entries/entry")
        if not entries:
            raise FormatError(f"{name}: no <benchmark><entries><entry> elements")
        for entry in entries:
            n_entry += 1
            where = f"{name} entry {entry.get('eid', '?')}"
            category = entry.get("category")
            if not category:
                raise FormatError(f"{where}: missing attribute 'category'")
            mtriples = entry.findall("./modifiedtripleset/mtriple")
            if not mtriples:
                raise FormatError(f"{where}: no <modifiedtripleset><mtriple>")
            triples = []
            for mtriple in mtriples:
                parts = (mtriple.text or "").split(" | ")
                if len(parts) != 3:
                    raise FormatError(f"{where}: mtriple {mtriple.text!r}: expected 'subject | property | object'")
                triples.append(parts)
            context = _triples_context(triples)
            good = [lex for lex in entry.findall("./lex") if lex.get("comment") == "good"]
            if not good:  # an input without a reference: no pair to train on or score against
                pairs.dropped.append(f"{where} (no lexicalisation with comment 'good')")
            for lex in good:
                text = _nonempty(lex.text, f"{where} lex {lex.get('lid', '?')}", "reference (lex)")
                pairs.append(Pair(context, text, n_entry, where, category))
    return pairs


# ----------------------------------------------------------------------------------------------
# DART


def read_dart_json(path, empty_references="error"):
    """DART v1.1.1 JSON (a list of {tripleset, annotations}); one pair per annotation.

    empty_references: "error" (default) or "drop". The official test file has one empty
    annotation (entry 115); `prepare` drops it and says so. Dropped ones are in `.dropped`.
    """
    if empty_references not in ("error", "drop"):
        raise ValueError(f"empty_references must be 'error' or 'drop', got {empty_references!r}")
    name = str(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise FormatError(f"{name}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise FormatError(f"{name}: expected a JSON list of entries")
    pairs = PairList()
    for i, entry in enumerate(data):
        where = f"{name} entry {i}"
        if not isinstance(entry, dict):
            raise FormatError(f"{where}: expected an object with 'tripleset' and 'annotations'")
        for field in ("tripleset", "annotations"):
            if field not in entry:
                raise FormatError(f"{where}: missing field {field!r}")
        triples = []
        for j, triple in enumerate(entry["tripleset"]):
            if not isinstance(triple, list) or len(triple) != 3:
                raise FormatError(f"{where} triple {j}: expected [subject, property, object], got {triple!r}")
            s, p, o = triple
            triples.append((s, p.lower(), o))
        if not triples:
            raise FormatError(f"{where}: empty 'tripleset'")
        context = _triples_context(triples)
        for j, annotation in enumerate(entry["annotations"]):
            at = f"{where} annotation {j}"
            if not isinstance(annotation, dict) or "text" not in annotation:
                raise FormatError(f"{at}: missing field 'text'")
            text = annotation["text"]
            if empty_references == "drop" and isinstance(text, str) and not text.strip():
                pairs.dropped.append(at)
                continue
            pairs.append(Pair(context, _nonempty(text, at, "reference (text)"), i, where))
    return pairs


# ----------------------------------------------------------------------------------------------


def unique_inputs(pairs):
    """One record per input, in order of first appearance (`id` = 0, 1, ...), references in order.

    Records: {"id", "context", "references"} plus "category" and "seen" where pairs have a category.
    """
    records, by_key = [], {}
    for pair in pairs:
        record = by_key.get(pair.input_key)
        if record is None:
            record = {"id": len(records), "context": pair.context, "references": []}
            if pair.category is not None:
                record["category"] = pair.category
                record["seen"] = pair.category in SEEN_CATEGORIES
            by_key[pair.input_key] = record
            records.append(record)
        elif record["context"] != pair.context:
            raise FormatError(f"{pair.where}: context {pair.context!r} differs from its input's {record['context']!r}")
        record["references"].append(pair.completion)
    return records
