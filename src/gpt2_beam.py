"""Beam-search decoding with GPT-2 + LoRA (upstream's gpt2_beam.py, same flags).

    python src/gpt2_beam.py --data data/e2e/test_unique.jsonl --init_checkpoint RUN/checkpoints/epoch-5 \
        --beam 10 --length_penalty 0.9 --no_repeat_ngram_size 4 --eval_len 64 --eos_token_id 628
    torchrun --nproc_per_node=N src/gpt2_beam.py ...      (each rank decodes a disjoint share)

Flags: ``python src/gpt2_beam.py --help``; the program: ``lora_nlg/predict.py``; the search:
``lora_nlg/beam.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lora_nlg.decode.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
