"""Encode upstream's formatted jsonl ({"context", "completion"} per line) into token ids.

    python src/gpt2_encode.py --vocab data/gpt2-vocab --input data/e2e/train_formatted.jsonl \
        --output data/e2e/train.jsonl --add_bos --add_eos

Same flags and output as upstream's script: context = BPE(context) [+ 50256 with --add_bos],
completion = BPE(" " + completion) [+ 50256 with --add_eos]. The program: ``lora_nlg/data/prepare.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lora_nlg.data.prepare import encode_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
