"""Reference and hypothesis files for the E2E scorer and GenerationEval (upstream's gpt2_decode.py, same flags).

    python src/gpt2_decode.py --sample_file RUN/predict.jsonl --input_file data/e2e/test_unique.jsonl \
        --output_ref_file e2e_ref.txt --output_pred_file e2e_pred.txt
    python src/gpt2_decode.py --sample_file RUN/predict.jsonl --input_file data/webnlg_challenge_2017/test_unique.jsonl \
        --ref_type webnlg --ref_num 6 --output_ref_file refs_webnlg --output_pred_file hyp_webnlg [--protocol official]

Flags: ``python src/gpt2_decode.py --help``; formats and protocols: ``lora_nlg/decode_files.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lora_nlg.decode.scorer_files import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
