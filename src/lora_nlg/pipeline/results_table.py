"""The results of ``scripts/run.sh``: test scores per seed, their mean and standard deviation.

    python -m lora_nlg.pipeline.results_table --dataset e2e --model_card gpt2.md --out_dir RUN RUN/seed-110 RUN/seed-111 ...

Each seed folder holds ``selection.json`` (``lora_nlg.pipeline.model_selection``: the checkpoint chosen on
the dev set) and ``test/eval.<protocol>.json`` (``eval/eval.sh --json``). Written into
``--out_dir``: ``results.json`` (every seed's scores as eval.sh reports them, and per protocol,
subset and metric the mean, the sample standard deviation (n - 1; null for one seed), n and the
values) and ``results.md`` (the same as tables; E2E's BLEU, METEOR and ROUGE_L times 100 as the
paper prints them, with the paper's figures for GPT-2 M and L when the model card is one of them).
"""

import dataclasses
import glob
import json
import os
import re
import statistics
import sys
from typing import Dict, List, Literal, Optional

from lora_nlg.atomic import atomic_write
from lora_nlg.catalog import DATASETS
from lora_nlg.cli import parse_config, positional, require, run_program
from lora_nlg.data.files import degenerate, read_predictions
from lora_nlg.errors import FormatError
from lora_nlg.jsonl import read_json
from lora_nlg.metrics.report import scale_of

DIGITS = {"BLEU": 2, "NIST": 2, "METEOR": 3, "ROUGE_L": 2, "CIDEr": 3, "TER": 3}  # on the printed scale
PAPER_PROTOCOL = "paper"  # the paper's figures came from microsoft's pipeline


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        raise FormatError(f"{path}: missing (did the step that writes it run?)")
    return read_json(path)


def _seed_of(folder: str) -> str:
    m = re.search(r"seed-(\d+)$", os.path.normpath(folder))
    return m.group(1) if m else os.path.basename(os.path.normpath(folder))


def read_seed(folder: str) -> Dict:
    """One seed's chosen checkpoint, dev BLEU and test reports."""
    try:
        return _read_seed(folder)
    except (KeyError, TypeError) as e:
        raise FormatError(f"{folder}: a report lacks a field or has one of the wrong kind ({e!r})") from None


def _read_seed(folder: str) -> Dict:
    selection = _read_json(os.path.join(folder, "selection.json"))
    reports = {}
    for path in sorted(glob.glob(os.path.join(folder, "test", "eval.*.json"))):
        report = _read_json(path)
        reports[report["protocol"]] = {
            "metrics": report["metrics"],
            "scores": report["scores"],
            "counts": report["counts"],
            "not_computed": report.get("not_computed", {}),
            "file": path,
        }
    if not reports:
        raise FileNotFoundError(f"{folder}/test: no eval.<protocol>.json (the evaluation step writes them)")
    warnings = [
        f"{name}{' (chosen)' if name == selection['chosen'] else ''}: {text}"
        for name, text in selection.get("warnings", {}).items()
    ]
    test_predictions = os.path.join(folder, "test", "predictions.jsonl")
    if os.path.isfile(test_predictions):
        text = degenerate([t for _, t in read_predictions(test_predictions)])
        if text:
            warnings.append(f"test predictions: {text}")
    return {
        "seed": _seed_of(folder),
        "folder": folder,
        "chosen": selection["chosen"],
        "warnings": warnings,
        "dev_bleu": selection["scores"][selection["chosen"]],
        "dev_scores": selection["scores"],
        "test": reports,
    }


def summarize(values: List[Optional[float]]) -> Dict:
    present = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.stdev(present) if len(present) > 1 else None,
        "n": len(present),
        "values": values,
    }


def aggregate(runs: List[Dict]) -> Dict:
    """protocol -> subset -> metric -> summary over the runs."""
    out: Dict = {}
    for run in runs:
        for proto, report in run["test"].items():
            for subset in report["scores"]:
                for metric in report["metrics"]:  # eval.sh's order: E2E BLEU NIST METEOR ROUGE_L CIDEr
                    out.setdefault(proto, {}).setdefault(subset, {}).setdefault(metric, None)
    for proto, subsets in out.items():
        for subset, metrics in subsets.items():
            for metric in metrics:
                metrics[metric] = summarize(
                    [run["test"].get(proto, {}).get("scores", {}).get(subset, {}).get(metric) for run in runs]
                )
    return out


def _cell(summary: Dict, scale: float, digits: int) -> str:
    if summary["mean"] is None:
        return "not computed"
    mean = summary["mean"] * scale
    if summary["std"] is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {summary['std'] * scale:.{digits}f}"


def _header(metric: str, percent, dataset: str) -> str:
    """A column title that names the scale."""
    if metric in percent:
        return f"{metric} (x100)"
    scale = scale_of(dataset, metric)
    return f"{metric} ({scale})" if scale else metric


def markdown(result: Dict) -> str:
    ds, card = result["dataset"], result["model_card"]
    percent = set(DATASETS[ds].percent)
    seeds = ", ".join(r["seed"] for r in result["runs"])
    lines = [f"# {ds}, {card}: test results over {len(result['runs'])} seed(s) ({seeds})", ""]
    lines.append(
        "Each seed's checkpoint was chosen by dev BLEU; mean ± sample standard deviation over seeds."
        + (" BLEU, METEOR and ROUGE_L x 100, as in the paper." if percent else "")
    )
    lines.append("")
    for proto, subsets in result["summary"].items():
        metrics = list(next(iter(subsets.values())))
        lines.append(f"## protocol `{proto}`")
        lines.append("")
        lines.append("| subset | " + " | ".join(_header(m, percent, ds) for m in metrics) + " |")
        lines.append("|---" * (len(metrics) + 1) + "|")
        for subset, summaries in subsets.items():
            cells = [
                _cell(summaries[m], 100.0 if m in percent else 1.0, 2 if m in percent else DIGITS.get(m, 4))
                for m in metrics
            ]
            lines.append(f"| {subset} | " + " | ".join(cells) + " |")
        paper = DATASETS[ds].paper_results.get(card) if proto == PAPER_PROTOCOL else None
        if paper:
            for subset, scores in paper.items():
                lines.append(
                    f"| paper ({subset}) | "
                    + " | ".join(f"{scores[m]:g}" if m in scores else "" for m in metrics)
                    + " |"
                )
        lines.append("")
    lines.append("## per seed")
    lines.append("")
    bleu = _header("BLEU", percent, ds)
    lines.append(f"| seed | chosen checkpoint | dev {bleu} | test {bleu}: " + ", ".join(result["summary"]) + " |")
    lines.append("|---|---|---|---|")
    for run in result["runs"]:
        scale = 100.0 if "BLEU" in percent else 1.0
        test = ", ".join(
            f"{run['test'][p]['scores']['all']['BLEU'] * scale:.2f}" for p in result["summary"] if p in run["test"]
        )
        lines.append(f"| {run['seed']} | {run['chosen']} | {run['dev_bleu'] * scale:.2f} | {test} |")
    not_computed = {
        m: why for run in result["runs"] for rep in run["test"].values() for m, why in rep["not_computed"].items()
    }
    for metric, why in not_computed.items():
        lines.append("")
        lines.append(f"{metric} not computed: {why}")
    for run in result["runs"]:
        for warning in run["warnings"]:
            lines.append("")
            lines.append(f"**WARNING** seed {run['seed']}: {warning}")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class ResultsConfig:
    """Test scores of scripts/run.sh's seeds: per seed, and their mean and standard deviation."""

    seed_dirs: List[str] = positional("+", default_factory=list)
    """One folder per seed (selection.json, test/eval.*.json)."""
    dataset: Optional[Literal[tuple(DATASETS)]] = None
    """The dataset. Required."""
    model_card: str = ""
    """The model card trained (the paper's figures are shown for gpt2.md and gpt2.lg). Required."""
    out_dir: str = ""
    """Where results.md and results.json go. Required."""

    def __post_init__(self):
        require(self, "dataset", "model_card", "out_dir")


def main(argv=None) -> int:
    return run_program("results_table", _main, argv)


def _main(argv) -> int:
    cfg = parse_config(ResultsConfig, argv, prog="python -m lora_nlg.pipeline.results_table")
    runs = [read_seed(d) for d in cfg.seed_dirs]
    result = {
        "dataset": cfg.dataset,
        "model_card": cfg.model_card,
        "seeds": [r["seed"] for r in runs],
        "summary": aggregate(runs),
        "runs": runs,
    }
    result["paper"] = DATASETS[cfg.dataset].paper_results.get(cfg.model_card)
    os.makedirs(cfg.out_dir, exist_ok=True)
    with atomic_write(os.path.join(cfg.out_dir, "results.json")) as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    text = markdown(result)
    with atomic_write(os.path.join(cfg.out_dir, "results.md")) as f:
        f.write(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
