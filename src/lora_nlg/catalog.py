"""The datasets and the pretrained GPT-2s: one table each, which the programs and the shell scripts read.

    python -m lora_nlg.catalog e2e gpt2.md      # FOLDER=e2e and HUB_DIR=gpt2-medium, for scripts/run.sh

A dataset's entry says where its prepared files live (``data/<folder>/``), which raw files make
each split (patterns over ``lora_nlg/data/sources.json`` keys; matched files are read sorted, upstream's
WebNLG order), which reader turns them into pairs (``lora_nlg.data.prepare.READERS``), which
metrics ``eval/eval.sh`` reports, which BLEU the dev-set model selection uses (the one eval.sh's
official protocol reports), what the paper protocol does to references, and the LoRA paper's test
results on GPT-2 M and L.
"""

import dataclasses
import sys
from typing import Dict, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    folder: str
    """Its folder under data/."""
    reader: str
    """The raw reader (lora_nlg.data.prepare.READERS)."""
    splits: Dict[str, str]
    """split -> pattern over lora_nlg/data/sources.json keys."""
    metrics: Tuple[str, ...]
    """What eval/eval.sh reports, in order."""
    dev_bleu: str
    """BLEU variant of model selection on the dev set (lora_nlg.metrics.bleu.BLEU_VARIANTS)."""
    paper_max_references: Optional[int]
    """Paper protocol: references kept per segment (upstream's --ref_num 6), None for all."""
    paper_lower_tokenize: bool
    """Paper protocol: lowercase and split off non-word characters (upstream's --tokenize --lower)."""
    paper_results: Dict[str, Dict[str, Dict[str, float]]]
    """The LoRA paper's test figures: model card -> subset -> metric, on results.md's scale."""
    percent: Tuple[str, ...] = ()
    """Metrics that eval.sh reports on 0..1 and the paper (and results.md) x 100; BLEU is then 0..100
    for every dataset."""


# The 10 WebNLG 2017 categories of the training set; the test set's other 5 are "unseen".
SEEN_CATEGORIES = frozenset(
    [
        "Airport",
        "Astronaut",
        "Building",
        "City",
        "ComicsCharacter",
        "Food",
        "Monument",
        "SportsTeam",
        "University",
        "WrittenWork",
    ]
)

# The LoRA paper's figures (Hu et al. 2021, Tables 3 and 13/14): E2E BLEU/METEOR/ROUGE_L x 100,
# WebNLG/DART BLEU 0..100, METEOR/TER 0..1.
DATASETS = {
    "e2e": Dataset(
        name="e2e",
        folder="e2e",
        reader="e2e_csv",
        splits={"train": "e2e/trainset.csv", "valid": "e2e/devset.csv", "test": "e2e/testset_w_refs.csv"},
        metrics=("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"),
        dev_bleu="mteval",
        paper_max_references=None,
        paper_lower_tokenize=False,
        paper_results={
            "gpt2.md": {"all": {"BLEU": 70.4, "NIST": 8.85, "METEOR": 46.8, "ROUGE_L": 71.8, "CIDEr": 2.53}},
            "gpt2.lg": {"all": {"BLEU": 70.4, "NIST": 8.89, "METEOR": 46.8, "ROUGE_L": 72.0, "CIDEr": 2.47}},
        },
        percent=("BLEU", "METEOR", "ROUGE_L"),
    ),
    "webnlg": Dataset(
        name="webnlg",
        folder="webnlg_challenge_2017",
        reader="webnlg_xml",
        splits={
            "train": "webnlg_challenge_2017/train/*/*.xml",
            "valid": "webnlg_challenge_2017/dev/*/*.xml",
            "test": "webnlg_challenge_2017/test/testdata_with_lex.xml",
        },
        metrics=("BLEU", "METEOR", "TER"),
        dev_bleu="multi-bleu-detok",
        paper_max_references=6,
        paper_lower_tokenize=True,
        paper_results={
            "gpt2.md": {
                "all": {"BLEU": 55.3, "METEOR": 0.41, "TER": 0.39},
                "seen": {"BLEU": 62.1, "METEOR": 0.44, "TER": 0.33},
                "unseen": {"BLEU": 46.7, "METEOR": 0.38, "TER": 0.46},
            },
            "gpt2.lg": {
                "all": {"BLEU": 57.0, "METEOR": 0.42, "TER": 0.38},
                "seen": {"BLEU": 64.0, "METEOR": 0.45, "TER": 0.32},
                "unseen": {"BLEU": 48.4, "METEOR": 0.39, "TER": 0.45},
            },
        },
    ),
    "dart": Dataset(
        name="dart",
        folder="dart",
        reader="dart_json",
        splits={
            "train": "dart/dart-v1.1.1-full-train.json",
            "valid": "dart/dart-v1.1.1-full-dev.json",
            "test": "dart/dart-v1.1.1-full-test.json",
        },
        metrics=("BLEU", "METEOR", "TER"),
        dev_bleu="multi-bleu-detok",
        paper_max_references=6,
        paper_lower_tokenize=True,
        paper_results={
            "gpt2.md": {"all": {"BLEU": 47.1, "METEOR": 0.39, "TER": 0.46}},
            "gpt2.lg": {"all": {"BLEU": 47.5, "METEOR": 0.39, "TER": 0.45}},
        },
    ),
}

# <|endoftext|>, GPT-2's last token: both BOS and EOS in the prepared data, and a stop token.
EOS_ID = 50256

# Model card -> the Hugging Face Hub repository of its pretrained weights (gpt2.tiny has none).
HUB_NAMES = {
    "gpt2.sm": "openai-community/gpt2",
    "gpt2.md": "openai-community/gpt2-medium",
    "gpt2.lg": "openai-community/gpt2-large",
    "gpt2.xl": "openai-community/gpt2-xl",
}


def hub_folder(card: str) -> str:
    """The folder name of a card's pretrained weights (``pretrained_checkpoints/<this>``)."""
    return HUB_NAMES[card].split("/")[-1]


def main(argv=None) -> int:
    """``DATASET [CARD]`` -> shell assignments ``FOLDER=...`` and, for a card with a Hub model, ``HUB_DIR=...``."""
    from lora_nlg.model import GPT2_SIZES

    args = sys.argv[1:] if argv is None else list(argv)
    if not 1 <= len(args) <= 2:
        print("usage: python -m lora_nlg.catalog DATASET [MODEL_CARD]", file=sys.stderr)
        return 2
    if args[0] not in DATASETS:
        print(f"catalog: error: unknown dataset {args[0]!r}; choose from {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    print(f"FOLDER={DATASETS[args[0]].folder}")
    if len(args) == 2:
        if args[1] not in GPT2_SIZES:
            print(
                f"catalog: error: unknown model card {args[1]!r}; choose from {', '.join(GPT2_SIZES)}", file=sys.stderr
            )
            return 2
        print(f"HUB_DIR={hub_folder(args[1]) if args[1] in HUB_NAMES else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
