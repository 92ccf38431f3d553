"""A PNG of training and validation loss from ``gpt2_ft.py`` work dirs (their ``log.jsonl``).

    python -m lora_nlg.pipeline.loss_plot --out loss.png "pretraining=demo_out/pretrain" "LoRA=demo_out/run/seed-110"

One panel per work dir, titled by the name before ``=``: the training loss of every logged interval
(label-smoothed when the run's ``label_smooth`` > 0, which the legend then says: smoothing over
GPT-2's 50,257 tokens adds about a nat) and the validation loss (plain cross-entropy), against
optimizer steps.
"""

import dataclasses
import os
import sys
from typing import Dict, List, Tuple

from lora_nlg.cli import parse_config, positional, require, run_program
from lora_nlg.jsonl import json_records
from lora_nlg.train.log import LOG_FILE


def read_log(work_dir: str) -> Dict[str, List[Tuple[int, float]]]:
    """(step, loss) of the training and validation records of ``work_dir/log.jsonl``."""
    path = os.path.join(work_dir, LOG_FILE)
    curves: Dict[str, List[Tuple[int, float]]] = {"train": [], "valid": []}
    for _, record in json_records(path):
        if record.get("kind") in curves:
            curves[record["kind"]].append((int(record["step"]), float(record["loss"])))
    if not curves["train"] and not curves["valid"]:
        raise ValueError(f"{path}: no training or validation records")
    return curves


def train_loss_label(work_dir: str) -> str:
    """'train loss', with the label smoothing that inflates it when the run's config.yaml says so."""
    path = os.path.join(work_dir, "config.yaml")
    if os.path.isfile(path):
        import yaml

        with open(path, encoding="utf-8") as f:
            smooth = (yaml.safe_load(f) or {}).get("label_smooth") or 0.0
        if smooth:
            return f"train loss (label smoothing {smooth:g})"
    return "train loss"


def plot(runs: List[Tuple[str, str]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    for ax, (title, work_dir) in zip(axes[0], runs):
        curves = read_log(work_dir)
        labels = {"train": train_loss_label(work_dir), "valid": "validation loss (cross-entropy)"}
        for kind, style in (
            ("train", dict(color="tab:blue", lw=1.2)),
            ("valid", dict(color="tab:orange", marker="o", lw=1.5)),
        ):
            if curves[kind]:
                steps, losses = zip(*curves[kind])
                ax.plot(steps, losses, label=labels[kind], **style)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats / token)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)


@dataclasses.dataclass
class PlotConfig:
    """A PNG of training and validation loss from gpt2_ft.py work dirs."""

    runs: List[str] = positional("+", default_factory=list)
    """[TITLE=]WORK_DIR: one panel per work dir, titled TITLE (default: the folder's name)."""
    out: str = ""
    """PNG file to write. Required."""

    def __post_init__(self):
        require(self, "out")


def _run(text: str) -> Tuple[str, str]:
    title, sep, path = text.partition("=")
    return (title, path) if sep else (os.path.basename(os.path.normpath(text)), text)


def main(argv=None) -> int:
    return run_program("loss_plot", _main, argv)


def _main(argv) -> int:
    cfg = parse_config(PlotConfig, argv, prog="python -m lora_nlg.pipeline.loss_plot")
    plot([_run(r) for r in cfg.runs], cfg.out)
    print(cfg.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
