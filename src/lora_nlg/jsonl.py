"""Reading jsonl files whose errors name the file and the line (``file:line: ...``)."""
import json
from typing import Iterable, Iterator, Tuple


def parse_json_lines(lines: Iterable[str], name, error=ValueError) -> Iterator[Tuple[int, dict]]:
    """(line number, object) for each non-blank line; ``error`` naming ``name:line`` on bad JSON
    or on a line that holds something other than a JSON object."""
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{name}:{line_no}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(item, dict):
            raise error(f"{name}:{line_no}: expected a JSON object, got {type(item).__name__}")
        yield line_no, item


def json_records(path) -> Iterator[Tuple[int, dict]]:
    """``parse_json_lines`` of a UTF-8 file."""
    with open(path, encoding="utf-8") as f:
        yield from parse_json_lines(f, path)
