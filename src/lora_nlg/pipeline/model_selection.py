"""Pick the checkpoint (epoch) whose dev-set decoding has the highest BLEU (``scripts/run.sh``).

    python -m lora_nlg.pipeline.model_selection --dataset e2e --references data/e2e/valid_unique.jsonl \\
        --out RUN/seed-110/selection.json epoch-1=RUN/seed-110/dev/epoch-1.jsonl epoch-2=...

The choice is made on the dev set (the paper reports each run's best epoch; docs/UPSTREAM.md).

BLEU is computed exactly as ``eval/eval.sh DATASET --protocol official`` computes it (the same
readers, pairing and ``lora_nlg.metrics.bleu``: mteval-v13a on E2E, multi-bleu-detok on WebNLG and
DART), without the Java tokenizer and METEOR runs the other metrics need: one candidate costs
seconds. Ties go to the earlier candidate (the order given).
"""

import dataclasses
import json
import sys
from typing import Dict, List, Literal, Optional, Tuple

from lora_nlg.atomic import atomic_write
from lora_nlg.catalog import DATASETS
from lora_nlg.cli import parse_config, positional, require, run_program
from lora_nlg.data.files import degenerate
from lora_nlg.metrics import protocol
from lora_nlg.metrics.bleu import bleu
from lora_nlg.metrics.references import pair, read_predictions, read_references


def dev_bleu(dataset: str, predictions: str, refs, references: str) -> Tuple[float, Optional[str]]:
    """Corpus BLEU of ``predictions`` (every input once, all its references; subset ``all``) against
    ``refs``, read from the file ``references``, on the scorer's scale; and a warning when the
    predictions say nothing (all empty, or all the same)."""
    found, keyed_by = read_predictions(predictions)
    pairs = pair(found, keyed_by, refs, predictions, references)
    prepared = protocol.prepare(pairs, dataset, "official")
    rows = prepared.subsets["all"]
    score = bleu([prepared.hyps[i] for i in rows], [prepared.refs[i] for i in rows], DATASETS[dataset].dev_bleu)
    return score, degenerate([text for _, text in found])


def bleu_0_100(dataset: str, score: float) -> float:
    """A dev BLEU on 0..100, the scale the papers print (E2E's scorer gives 0..1)."""
    return score * (100.0 if "BLEU" in DATASETS[dataset].percent else 1.0)


def select(dataset: str, references: str, candidates: List[Tuple[str, str]]) -> Dict:
    """Score every (name, predictions) pair; the report names the best."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    refs = read_references(references)
    results = {name: dev_bleu(dataset, path, refs, references) for name, path in candidates}
    scores = {name: score for name, (score, _) in results.items()}
    best = max(scores, key=scores.get)  # the first of equal scores
    scale = "0-1" if "BLEU" in DATASETS[dataset].percent else "0-100"
    return {
        "dataset": dataset,
        "metric": f"BLEU ({DATASETS[dataset].dev_bleu}, official protocol, dev set, {scale})",
        "references": references,
        "predictions": dict(candidates),
        "scores": scores,
        "chosen": best,
        "warnings": {name: warning for name, (_, warning) in results.items() if warning},
    }


@dataclasses.dataclass
class SelectionConfig:
    """Pick the checkpoint (epoch) whose dev-set decoding has the highest BLEU."""

    candidates: List[str] = positional("+", default_factory=list)
    """NAME=PREDICTIONS: a checkpoint's name and its dev predictions (gpt2_beam.py jsonl)."""
    dataset: Optional[Literal[tuple(DATASETS)]] = None
    """The dataset (its BLEU: lora_nlg.catalog). Required."""
    references: str = ""
    """The dev *_unique.jsonl the predictions answer. Required."""
    out: str = ""
    """JSON report: every candidate's BLEU and the chosen one. Required."""

    def __post_init__(self):
        require(self, "dataset", "references", "out")
        for text in self.candidates:
            name, sep, path = text.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"expected NAME=PREDICTIONS, got {text!r}")


def main(argv=None) -> int:
    return run_program("model_selection", _main, argv)


def _main(argv) -> int:
    cfg = parse_config(SelectionConfig, argv, prog="python -m lora_nlg.pipeline.model_selection")
    report = select(cfg.dataset, cfg.references, [tuple(c.split("=", 1)) for c in cfg.candidates])
    with atomic_write(cfg.out) as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    for name, value in report["scores"].items():
        mark = "  <- chosen" if name == report["chosen"] else ""
        print(f"dev BLEU (0-100) {name:<12} {bleu_0_100(cfg.dataset, value):6.2f}{mark}")
    for name, warning in report["warnings"].items():
        chosen = " (the chosen one: its BLEU means nothing)" if name == report["chosen"] else ""
        print(f"WARNING: {name}{chosen}: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
