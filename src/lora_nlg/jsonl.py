"""Reading jsonl files whose errors name the file and the line."""
import json
from typing import Iterator, Tuple


def json_records(path) -> Iterator[Tuple[int, dict]]:
    """(line number, object) for each non-blank line; ValueError naming file:line on bad JSON."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(item, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(item).__name__}")
            yield line_no, item
