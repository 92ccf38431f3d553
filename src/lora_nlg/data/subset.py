"""A smaller copy of a prepared jsonl file, for quick runs (``scripts/run.sh --tiny``, the demo).

    python -m lora_nlg.data.subset IN OUT --first 50              # the first 50 lines (e.g. *_unique.jsonl)
    python -m lora_nlg.data.subset IN OUT --sample 2000 --seed 0  # 2000 random lines, kept in file order

Lines are copied byte for byte (ids, references and token ids unchanged), so predictions for the
copy of a ``*_unique.jsonl`` are scored against that copy with ``eval/eval.sh``. Written
atomically.
"""
import argparse
import random
import sys

from lora_nlg.atomic import atomic_write


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lora_nlg.data.subset", description=__doc__.split("\n\n")[0])
    p.add_argument("input")
    p.add_argument("output")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--first", type=int, help="keep the first N lines")
    how.add_argument("--sample", type=int, help="keep N lines drawn at random (in file order)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    args = p.parse_args(argv)
    n = args.first if args.first is not None else args.sample
    if n < 1:
        p.error(f"--first / --sample must be at least 1, got {n}")
    try:
        lines = read_lines(args.input)
    except OSError as e:
        print(f"subset: error: {args.input}: {e.strerror}", file=sys.stderr)
        return 2
    if not lines:
        print(f"subset: error: {args.input}: no lines", file=sys.stderr)
        return 2
    kept = take(lines, args.first, args.sample, args.seed)
    with atomic_write(args.output) as f:
        f.writelines(kept)
    print(f"{args.output}: {len(kept)} of {len(lines)} lines of {args.input}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
