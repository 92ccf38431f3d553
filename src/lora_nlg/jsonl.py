"""Reading JSON and jsonl files whose errors name the file and the line (``file:line: ...``)."""

import json
from typing import Iterable, Iterator, Tuple

from lora_nlg.errors import FormatError


def parse_json_lines(lines: Iterable[str], name, error=FormatError) -> Iterator[Tuple[int, dict]]:
    """(line number, object) for each non-blank line; ``error`` naming ``name:line`` on bad JSON
    or on a line that holds something other than a JSON object."""
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line.rstrip("\r\n"))  # without its line end, the error's column is the line's
        except json.JSONDecodeError as e:
            what = e.msg[: -len(" at")] if e.msg.endswith(" at") else e.msg  # "... starting at" + "at column"
            raise error(f"{name}:{line_no}: malformed JSON ({what} at column {e.colno})") from None
        if not isinstance(item, dict):
            raise error(f"{name}:{line_no}: expected a JSON object, got {type(item).__name__}")
        yield line_no, item


def text_lines(path, error=FormatError) -> Iterator[str]:
    """The lines of a UTF-8 file; ``error`` naming ``path:line`` where a line is not UTF-8, or
    ``path`` when there is no such file."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    with f:
        for line_no, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{path}:{line_no}: not UTF-8 text (byte {e.start + 1} of the line): {e.reason}") from None


def read_json(path, error=FormatError, expect=dict):
    """The JSON value of a UTF-8 file, which must be a ``expect`` (an object by default)."""
    text = "".join(text_lines(path, error))
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})") from None
    if not isinstance(value, expect):
        raise error(f"{path}: expected a JSON {expect.__name__}, got {type(value).__name__}")
    return value


def json_records(path, error=FormatError) -> Iterator[Tuple[int, dict]]:
    """``parse_json_lines`` of a UTF-8 file."""
    yield from parse_json_lines(text_lines(path, error), path, error)
