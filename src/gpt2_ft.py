"""Fine-tune GPT-2 with LoRA on encoded data-to-text data (upstream's gpt2_ft.py, same flags).

    python src/gpt2_ft.py --train_data data/e2e/train.jsonl --valid_data data/e2e/valid.jsonl ...
    torchrun --nproc_per_node=N src/gpt2_ft.py ...        (DistributedDataParallel)

Flags: ``python src/gpt2_ft.py --help``; the loop: ``lora_nlg/train.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lora_nlg.train.loop import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
