"""Where the metrics keep what they build or fetch once (paraphrase-table index, Punkt model)."""

import os


def default_cache_dir():
    """$LORA_NLG_CACHE, else ~/.cache/lora-nlg."""
    return os.environ.get("LORA_NLG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lora-nlg")
