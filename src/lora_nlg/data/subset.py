"""A smaller copy of a prepared jsonl file, for quick runs (``scripts/run.sh --tiny``, the demo).

    python -m lora_nlg.data.subset IN OUT --first 50              # the first 50 lines (e.g. *_unique.jsonl)
    python -m lora_nlg.data.subset IN OUT --sample 2000 --seed 0  # 2000 random lines, kept in file order

Lines are copied byte for byte (ids, references and token ids unchanged), so predictions for the
copy of a ``*_unique.jsonl`` are scored against that copy with ``eval/eval.sh``. Written
atomically.
"""

import dataclasses
import random
import sys
from typing import Optional

from lora_nlg.atomic import atomic_write
from lora_nlg.cli import parse_config, positional, run_program
from lora_nlg.errors import FormatError


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]


def take(lines, first=None, sample=None, seed=0):
    """The first ``first`` lines, or ``sample`` lines drawn with ``seed`` in their original order;
    all of them when the file is not longer."""
    if first is not None:
        return lines[:first]
    if sample >= len(lines):
        return list(lines)
    keep = sorted(random.Random(seed).sample(range(len(lines)), sample))
    return [lines[i] for i in keep]


@dataclasses.dataclass
class SubsetConfig:
    """A smaller copy of a prepared jsonl file: its first lines, or lines drawn at random."""

    input: str = positional(default="")
    """The jsonl file to take lines from."""
    output: str = positional(default="")
    """The file to write."""
    first: Optional[int] = None
    """Keep the first N lines."""
    sample: Optional[int] = None
    """Keep N lines drawn at random (in file order)."""
    seed: int = 0
    """Seed of --sample."""

    def __post_init__(self):
        if (self.first is None) == (self.sample is None):
            raise ValueError("give one of --first N and --sample N")
        n = self.first if self.first is not None else self.sample
        if n < 1:
            raise ValueError(f"--first / --sample must be at least 1, got {n}")


def main(argv=None) -> int:
    return run_program("subset", _main, argv)


def _main(argv) -> int:
    cfg = parse_config(SubsetConfig, argv, prog="python -m lora_nlg.data.subset")
    lines = read_lines(cfg.input)
    if not lines:
        raise FormatError(f"{cfg.input}: no lines")
    kept = take(lines, cfg.first, cfg.sample, cfg.seed)
    with atomic_write(cfg.output) as f:
        f.writelines(kept)
    print(f"{cfg.output}: {len(kept)} of {len(lines)} lines of {cfg.input}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
