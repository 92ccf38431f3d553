"""Encode the seed's formatted jsonl ({"context", "completion"} per line) into token ids.

    python src/gpt2_encode.py --vocab data/gpt2-vocab --input data/e2e/train_formatted.jsonl \
        --output data/e2e/train.jsonl --add_bos --add_eos

Same flags and output as the seed's script: context = BPE(context) [+ 50256 with --add_bos],
completion = BPE(" " + completion) [+ 50256 with --add_eos].
"""
import os
import sys
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lora_nlg.cli import parse_config  # noqa: E402
from lora_nlg.datasets import DataError  # noqa: E402
from lora_nlg.prepare import encode_formatted  # noqa: E402
from lora_nlg.tokenizer import GPT2Tokenizer  # noqa: E402


@dataclass
class EncodeConfig:
    """Encode a formatted jsonl file with GPT-2's BPE (the seed's gpt2_encode.py)."""

    input: str = ""
    """Formatted jsonl: one {"context": str, "completion": str} per line."""
    output: str = ""
    """Encoded jsonl to write: one {"context": [ids], "completion": [ids]} per line."""
    vocab: Optional[str] = None
    """Folder with encoder.json and vocab.bpe (default: data/gpt2-vocab, else the shared mirror's)."""
    add_bos: bool = False
    """Append 50256 to each context."""
    add_eos: bool = False
    """Append 50256 to each completion."""

    def __post_init__(self):
        if not self.input or not self.output:
            raise ValueError("--input and --output are required")


def main(argv=None):
    cfg = parse_config(EncodeConfig, argv, prog="gpt2_encode.py")
    try:
        tokenizer = GPT2Tokenizer.from_dir(cfg.vocab)
        n = encode_formatted(cfg.input, cfg.output, tokenizer, add_bos=cfg.add_bos, add_eos=cfg.add_eos)
    except (DataError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"{cfg.input}: {n} lines -> {cfg.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
