"""Readers of upstream's (microsoft/LoRA examples/NLG) own data files: test oracles only.

The tests check that our readers of the official raw files give the pairs upstream's
``data/e2e/*.txt`` and WebNLG JSON give. Not a test module.
"""

import json

from lora_nlg.data.raw import Pair, _nonempty, _triples_context, read_text
from lora_nlg.errors import FormatError


def read_e2e_upstream_txt(path):
    """Upstream's E2E lines `context||text` (microsoft/LoRA `data/e2e/*.txt`), split as upstream's
    `format_converting_e2e.py` does (line stripped, then split on `||`). Pairs with the same
    context share an input, as in upstream's decoder."""
    name = str(path)
    pairs = []
    for line_no, line in enumerate(read_text(path).splitlines(), 1):
        where = f"{name}:{line_no}"
        items = line.strip().split("||")
        if len(items) != 2:
            raise FormatError(f"{where}: expected 'context||text', found {len(items) - 1} '||' separators")
        context, completion = items
        _nonempty(context, where, "context")
        _nonempty(completion, where, "reference")
        pairs.append(Pair(context, completion, context, where))
    return pairs


def read_webnlg_upstream_json(path):
    """Upstream's WebNLG JSON (microsoft/LoRA `webnlg_challenge_2017/{train,dev,test}.json`), read
    as its `format_converting_webnlg.py` does. Gives the same pairs as `read_webnlg_xml`."""
    name = str(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise FormatError(f"{name}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise FormatError(f"{name}: expected an object with a list 'entries'")
    pairs = []
    for i, item in enumerate(data["entries"], 1):
        where = f"{name} entry {i}"
        entry = item.get(str(i)) if isinstance(item, dict) else None
        if not isinstance(entry, dict):
            raise FormatError(f'{where}: expected {{"{i}": ENTRY}}')
        for field in ("category", "modifiedtripleset", "lexicalisations"):
            if field not in entry:
                raise FormatError(f"{where}: missing field {field!r}")
        triples = []
        for t in entry["modifiedtripleset"]:
            missing = [k for k in ("subject", "property", "object") if k not in t]
            if missing:
                raise FormatError(f"{where}: modifiedtripleset item missing {', '.join(missing)}")
            triples.append((t["subject"], t["property"], t["object"]))
        if not triples:
            raise FormatError(f"{where}: empty 'modifiedtripleset'")
        context = _triples_context(triples)
        for j, lex in enumerate(entry["lexicalisations"]):
            if "comment" not in lex or "lex" not in lex:
                raise FormatError(f"{where} lexicalisation {j}: missing field 'comment' or 'lex'")
            if lex["comment"] == "good":
                text = _nonempty(lex["lex"], f"{where} lexicalisation {j}", "reference (lex)")
                pairs.append(Pair(context, text, i, where, entry["category"]))
    return pairs
