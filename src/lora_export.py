"""Move LoRA adapters between this project, Hugging Face PEFT, plain transformers and upstream.

    python src/lora_export.py export peft|merged CKPT OUT_DIR ...
    python src/lora_export.py import peft|upstream SOURCE OUT ...

Flags: ``python src/lora_export.py --help``; the program: ``lora_nlg/weights/convert.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lora_nlg.weights.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
