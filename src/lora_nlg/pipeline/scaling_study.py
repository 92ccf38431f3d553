"""The alpha/r study: can r change without retuning the learning rate?

    bash scripts/scaling_study.sh [--out_dir runs/scaling_study] [--quick] [--seeds 1 2 ...]
    python -m lora_nlg.pipeline.scaling_study --help

Upstream's rule of thumb (LoRA paper, section 4.1): scaling the update by alpha / r with alpha
fixed makes the learning rate (nearly) independent of r. rsLoRA (Kalajdzievski 2023) argues that
alpha / r shrinks the update as r grows (the learning "collapses" to small updates at large r) and
that alpha / sqrt(r) keeps it stable. This program trains the same adapter at every r in
``ranks`` under both rules, with alpha, the learning rate and everything else fixed, through the
real training loop (``gpt2_ft.py``'s ``main``), and records for each run

- ``update_norm``: sum over LoRA modules of ``||scaling * B A||_F``, the change to the weights;
- ``valid_loss``: the validation loss (token-level cross-entropy) at the last step and the best.

The setup is a toy that runs on a CPU in minutes: the ``gpt2.tiny`` shape (4 layers, n_embd 128)
with the vocabulary cut to the GPT-2 tokens that occur in the data (ids remapped, so the LM head
is small), "pretrained" here as a plain language model on E2E references of one set of MRs, then
fine-tuned with LoRA on q, v as a data-to-text model on pairs of other MRs; validation pairs come
from the E2E dev set. Everything is read from the raw E2E files (the data mirror,
``NLG_DATA_MIRROR`` or ``../shared/data``). Results: ``results.json``, ``results.md`` (a table)
and ``scaling_study.png`` in ``out_dir``; each run's own folder holds its log and checkpoints.
"""

import contextlib
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import torch

from lora_nlg.atomic import atomic_write
from lora_nlg.catalog import EOS_ID
from lora_nlg.cli import config_to_dict, parse_config, run_program
from lora_nlg.data import raw as D
from lora_nlg.data.batching import FTDataset, collate
from lora_nlg.data.files import read_encoded, write_encoded
from lora_nlg.data.prepare import encode_pairs
from lora_nlg.data.sources import default_mirror
from lora_nlg.data.tokenizer import GPT2Tokenizer, default_vocab_dir
from lora_nlg.jsonl import json_records
from lora_nlg.model import GPT2_SIZES, GPT2Config, GPT2LMModel
from lora_nlg.train.loop import main as train_main
from lora_nlg.train.loop import token_loss_sum
from lora_nlg.weights import layout
from lora_nlg.weights.adapter import read_adapter, update_norms
from lora_nlg.weights.backbone import load_pretrained, save_pretrained

RULES = ("alpha/r", "alpha/sqrt(r)")


@dataclasses.dataclass
class StudyConfig:
    """Sweep LoRA's rank r under alpha/r and alpha/sqrt(r) at a fixed alpha and learning rate."""

    out_dir: str = "runs/scaling_study"
    """Where the data, the backbone, every run and the results go."""
    ranks: List[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    """LoRA ranks r to train."""
    rules: List[str] = dataclasses.field(default_factory=lambda: list(RULES))
    """Scaling rules: alpha/r (the LoRA paper) and alpha/sqrt(r) (rsLoRA)."""
    seeds: List[int] = dataclasses.field(default_factory=lambda: [1])
    """Random seeds of the LoRA runs (LoRA init and data order); results are averaged over them."""
    lora_alpha: float = 32.0
    """alpha, fixed for every run (the paper's recipes use 32)."""
    lrs: List[float] = dataclasses.field(default_factory=lambda: [0.002])
    """Learning rates: the whole sweep runs at each, fixed across r and rules (see docs/scaling_study.md for how they were chosen)."""
    steps: int = 300
    """Optimizer steps of each LoRA run."""
    batch_size: int = 8
    """Training examples per step."""
    train_pairs: int = 800
    """E2E training pairs for the LoRA runs (MRs disjoint from the backbone's)."""
    valid_pairs: int = 400
    """E2E dev pairs for the validation loss."""
    pretrain_texts: int = 6000
    """E2E references (of other MRs) the tiny backbone is pretrained on, as a plain language model."""
    pretrain_steps: int = 600
    """Optimizer steps of backbone pretraining (full fine-tuning of a random gpt2.tiny)."""
    pretrain_lr: float = 0.002
    """Learning rate of backbone pretraining."""
    quick: bool = False
    """A reduced run for tests: ranks 1 and 8, few examples and steps (the numbers mean nothing)."""
    mirror: Optional[str] = None
    """Raw data folder holding e2e/trainset.csv.xz and e2e/devset.csv (default: NLG_DATA_MIRROR, else ../shared/data)."""
    workers: int = 2
    """LoRA runs trained at once, each in its own process (the tiny model does not use 2 cores well)."""
    threads: int = 1
    """torch CPU threads per process (1: on a busy 2-core machine 2 threads were 8x slower per step)."""

    def __post_init__(self):
        bad = [r for r in self.rules if r not in RULES]
        if bad:
            raise ValueError(f"unknown scaling rule(s) {bad}; choose from {list(RULES)}")
        if any(r < 1 for r in self.ranks):
            raise ValueError(f"ranks must be >= 1, got {self.ranks}")
        if self.quick:
            self.ranks, self.seeds = [1, 8], self.seeds[:1]
            self.steps, self.train_pairs, self.valid_pairs = 12, 48, 24
            self.pretrain_texts, self.pretrain_steps = 64, 8


# ------------------------------------------------------------------------------------------ data


def _e2e_file(mirror: Path, names) -> Path:
    for name in names:
        if (mirror / "e2e" / name).is_file():
            return mirror / "e2e" / name
    raise FileNotFoundError(f"{mirror / 'e2e'}: none of {list(names)}; set --mirror or NLG_DATA_MIRROR")


def prepare_data(cfg: StudyConfig, data_dir: Path) -> int:
    """Write ``pretrain.jsonl``, ``train.jsonl``, ``valid.jsonl`` (encoded, compact ids) and
    ``vocab.json`` (compact id -> GPT-2 id) into ``data_dir``; return the compact vocabulary size.

    E2E training MRs are shuffled (seed 0) and split: the first ones give the backbone's plain
    texts (context = [EOS] only, so the loss is a language model's), the others the LoRA pairs.
    """
    mirror = Path(cfg.mirror) if cfg.mirror else default_mirror()
    if mirror is None:
        raise FileNotFoundError("no data mirror: pass --mirror DIR or set NLG_DATA_MIRROR")
    train = D.read_e2e_csv(_e2e_file(mirror, ("trainset.csv.xz", "trainset.csv")))
    dev = D.read_e2e_csv(_e2e_file(mirror, ("devset.csv", "devset.csv.xz")))
    by_mr: Dict[object, list] = {}
    for p in train:
        by_mr.setdefault(p.input_key, []).append(p)
    mrs = sorted(by_mr)
    random.Random(0).shuffle(mrs)
    pretrain, lora = [], []
    for mr in mrs:
        if len(pretrain) < cfg.pretrain_texts:
            pretrain.extend(by_mr[mr])
        elif len(lora) < cfg.train_pairs:
            lora.extend(by_mr[mr])
    pretrain, lora = pretrain[: cfg.pretrain_texts], lora[: cfg.train_pairs]
    dev_mrs = sorted({p.input_key for p in dev})
    random.Random(0).shuffle(dev_mrs)
    keep = set(dev_mrs[: max(1, cfg.valid_pairs // 8)])
    valid = [p for p in dev if p.input_key in keep][: cfg.valid_pairs]

    tokenizer = GPT2Tokenizer.from_dir(default_vocab_dir())
    texts = tokenizer.encode_batch([" " + p.completion for p in pretrain])
    files = {
        "pretrain": [([EOS_ID], ids + [EOS_ID]) for ids in texts],
        "train": encode_pairs(tokenizer, lora)[0],
        "valid": encode_pairs(tokenizer, valid)[0],
    }
    # The tiny model's vocabulary: the GPT-2 ids that occur, renumbered (EOS included).
    used = sorted({i for examples in files.values() for c, x in examples for i in c + x} | {EOS_ID})
    compact = {g: k for k, g in enumerate(used)}
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, examples in files.items():
        write_encoded(
            data_dir / f"{name}.jsonl", (([compact[i] for i in c], [compact[i] for i in x]) for c, x in examples)
        )
    with atomic_write(data_dir / "vocab.json") as f:
        json.dump(used, f)
    return len(used)


# ------------------------------------------------------------------------------------- training


def _train(argv: List[str], threads: int) -> None:
    torch.set_num_threads(threads)
    status = train_main(argv)
    if status != 0:
        raise RuntimeError(f"gpt2_ft.py {' '.join(argv)} exited with status {status}")


def _common(cfg: StudyConfig) -> List[str]:
    return [
        "--model_card",
        "gpt2.tiny",
        "--train_batch_size",
        str(cfg.batch_size),
        "--valid_batch_size",
        "16",
        "--seq_len",
        "128",
        "--correct_bias",
        "--adam_beta2",
        "0.999",
        "--weight_decay",
        "0.01",
        "--scheduler",
        "linear",
        "--tensorboard",
        "false",
        "--device",
        "cpu",
        "--overwrite",
    ]


def pretrain_backbone(cfg: StudyConfig, out: Path, vocab_size: int) -> Path:
    """A random ``gpt2.tiny`` with the compact vocabulary, trained as a language model on the
    pretraining texts (full fine-tuning through ``gpt2_ft.py --lora_dim 0``); its folder."""
    torch.manual_seed(0)
    init = out / "backbone_init"
    save_pretrained(GPT2LMModel(GPT2Config(**GPT2_SIZES["gpt2.tiny"], vocab_size=vocab_size, n_positions=128)), init)
    work = out / "backbone"
    _train(
        [
            "--train_data",
            str(out / "data" / "pretrain.jsonl"),
            "--init_checkpoint",
            str(init),
            "--lora_dim",
            "0",
            "--lr",
            str(cfg.pretrain_lr),
            "--max_step",
            str(cfg.pretrain_steps),
            "--warmup_step",
            str(max(1, cfg.pretrain_steps // 10)),
            "--log_interval",
            str(cfg.pretrain_steps),
            "--eval_interval",
            str(cfg.pretrain_steps),
            "--save_interval",
            str(cfg.pretrain_steps),
            "--random_seed",
            "0",
            "--work_dir",
            str(work),
            *_common(cfg),
        ],
        cfg.threads,
    )
    return Path(layout.last_checkpoint(str(work))) / layout.FULL_MODEL


def lora_run(
    cfg: StudyConfig, out: Path, backbone: Path, backbone_stamp: dict, lr: float, r: int, rule: str, seed: int
) -> dict:
    """One LoRA fine-tuning run's numbers (reused if the same run on the same backbone is done)."""
    rule_name = rule.replace("/", "_over_").replace("(", "").replace(")", "")
    work = out / "runs" / f"lr{lr:g}_{rule_name}_r{r}_seed{seed}"
    stamp = {
        "backbone": backbone_stamp,
        "lr": lr,
        "r": r,
        "rule": rule,
        "seed": seed,
        **{k: getattr(cfg, k) for k in ("lora_alpha", "steps", "batch_size")},
    }
    return _reuse(work, stamp, lambda: _lora_train(cfg, out, work, backbone, lr, r, rule, seed))


def _lora_train(
    cfg: StudyConfig, out: Path, work: Path, backbone: Path, lr: float, r: int, rule: str, seed: int
) -> dict:
    start = time.time()
    _train(
        [
            "--train_data",
            str(out / "data" / "train.jsonl"),
            "--valid_data",
            str(out / "data" / "valid.jsonl"),
            "--init_checkpoint",
            str(backbone),
            "--lora_dim",
            str(r),
            "--lora_alpha",
            str(cfg.lora_alpha),
            "--lora_scaling_rule",
            rule,
            "--lora_targets",
            "q",
            "v",
            "--lr",
            str(lr),
            "--max_step",
            str(cfg.steps),
            "--warmup_step",
            str(max(1, cfg.steps // 10)),
            "--log_interval",
            str(cfg.steps),
            "--eval_interval",
            str(cfg.steps),
            "--save_interval",
            str(cfg.steps),
            "--random_seed",
            str(seed),
            "--work_dir",
            str(work),
            *_common(cfg),
        ],
        cfg.threads,
    )
    seconds = time.time() - start
    records = [record for _, record in json_records(work / "log.jsonl")]
    valid = [x for x in records if x["kind"] == "valid"]
    tensors, _, lora_config, _ = read_adapter(Path(layout.last_checkpoint(str(work))) / layout.ADAPTER_FILE)
    norms = update_norms(tensors, lora_config)
    return {
        "lr": lr,
        "r": r,
        "rule": rule,
        "seed": seed,
        "scaling": lora_config.scaling,
        "update_norm": sum(norms.values()),
        "valid_loss": valid[-1]["loss"],
        "best_valid_loss": min(x["loss"] for x in valid),
        "seconds": round(seconds, 1),
    }


@torch.no_grad()
def backbone_valid_loss(backbone: Path, valid_path: Path) -> float:
    """The validation loss of the backbone alone (no LoRA): where every run starts."""
    model = load_pretrained(backbone)
    data = FTDataset(read_encoded(valid_path), 128)
    total = count = 0.0
    for start in range(0, len(data), 16):
        batch = collate([data[i] for i in range(start, min(start + 16, len(data)))])
        total += token_loss_sum(model, batch, 0.0, contextlib.nullcontext).item()
        count += batch["loss_mask"].sum().item()
    return total / count


# -------------------------------------------------------------------------------------- results


def summarize(runs: List[dict], cfg: StudyConfig) -> List[dict]:
    """Mean (and standard deviation, with several seeds) per (lr, rule, r)."""
    rows = []
    for lr, rule, r in itertools.product(cfg.lrs, cfg.rules, cfg.ranks):
        group = [x for x in runs if (x["lr"], x["rule"], x["r"]) == (lr, rule, r)]
        if group:
            row = {"lr": lr, "rule": rule, "r": r, "scaling": group[0]["scaling"], "seeds": len(group)}
            for key in ("update_norm", "valid_loss", "best_valid_loss"):
                values = [x[key] for x in group]
                mean = sum(values) / len(values)
                row[key] = mean
                row[key + "_std"] = (
                    math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
                )
            rows.append(row)
    return rows


def table(rows: List[dict]) -> str:
    pm = lambda v, s, f: f"{v:{f}}" + (f" ± {s:{f}}" if s is not None else "")  # noqa: E731
    lines = [
        "| lr | rule | r | scaling | update norm sum ‖s·BA‖_F | valid loss (last) | valid loss (best) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for x in rows:
        lines.append(
            f"| {x['lr']:g} | {x['rule']} | {x['r']} | {x['scaling']:.3g} | {pm(x['update_norm'], x['update_norm_std'], '.3f')} "
            f"| {pm(x['valid_loss'], x['valid_loss_std'], '.4f')} "
            f"| {pm(x['best_valid_loss'], x['best_valid_loss_std'], '.4f')} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: List[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    lrs = list(dict.fromkeys(x["lr"] for x in rows))
    for lr, rule in itertools.product(lrs, dict.fromkeys(x["rule"] for x in rows)):
        rs = [x for x in rows if (x["lr"], x["rule"]) == (lr, rule)]
        label = rule if len(lrs) == 1 else f"{rule}, lr {lr:g}"
        style = "-" if rule == RULES[0] else "--"
        ranks = [x["r"] for x in rs]
        ax1.errorbar(
            ranks,
            [x["update_norm"] for x in rs],
            yerr=[x["update_norm_std"] or 0 for x in rs],
            marker="o",
            linestyle=style,
            capsize=3,
            label=label,
        )
        ax2.errorbar(
            ranks,
            [x["valid_loss"] for x in rs],
            yerr=[x["valid_loss_std"] or 0 for x in rs],
            marker="o",
            linestyle=style,
            capsize=3,
            label=label,
        )
    for ax, ylabel in ((ax1, "sum over modules of ||scaling · B A||_F"), (ax2, "validation loss (last step)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("LoRA rank r")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax1.set_yscale("log")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


STAMP = "study_stamp.json"


def _reuse(folder: Path, stamp: dict, build):
    """``build()``'s result, recorded with ``stamp`` in ``folder``; reused while the stamp is equal."""
    path = folder / STAMP
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved["stamp"] == json.loads(json.dumps(stamp)):
            return saved["result"]
    result = build()
    with atomic_write(path) as f:
        json.dump({"stamp": stamp, "result": result}, f)
    return result


def run_study(cfg: StudyConfig) -> List[dict]:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    # Data and backbone are reused by a later study with the same settings (a stamp says which).
    data_stamp = {k: getattr(cfg, k) for k in ("train_pairs", "valid_pairs", "pretrain_texts", "mirror")}
    vocab_size = _reuse(out / "data", data_stamp, lambda: prepare_data(cfg, out / "data"))
    backbone_stamp = {
        "data": data_stamp,
        "vocab_size": vocab_size,
        **{k: getattr(cfg, k) for k in ("pretrain_steps", "pretrain_lr", "batch_size")},
    }
    backbone = out / _reuse(
        out / "backbone", backbone_stamp, lambda: str(pretrain_backbone(cfg, out, vocab_size).relative_to(out))
    )
    jobs = [
        (cfg, out, backbone, backbone_stamp, *job)
        for job in itertools.product(cfg.lrs, cfg.ranks, cfg.rules, cfg.seeds)
    ]
    if cfg.workers > 1:
        # spawn: a fresh interpreter per worker (forking a process that has run torch is unsafe).
        with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(lora_run, *zip(*jobs)))
    else:
        runs = [lora_run(*job) for job in jobs]
    rows = summarize(runs, cfg)
    baseline = backbone_valid_loss(backbone, out / "data" / "valid.jsonl")
    minutes = (time.time() - start) / 60
    title = (
        f"gpt2.tiny (vocab {vocab_size}), LoRA on q,v, alpha={cfg.lora_alpha:g}, "
        f"lr={' / '.join(f'{lr:g}' for lr in cfg.lrs)}, "
        f"{cfg.steps} steps x {cfg.batch_size}, {len(cfg.seeds)} seed(s)"
    )
    with atomic_write(out / "results.json") as f:
        json.dump(
            {
                "config": config_to_dict(cfg),
                "vocab_size": vocab_size,
                "minutes": round(minutes, 2),
                "backbone_valid_loss": baseline,
                "torch_threads": cfg.threads,
                "workers": cfg.workers,
                "runs": runs,
                "summary": rows,
            },
            f,
            indent=2,
        )
    with atomic_write(out / "results.md") as f:
        f.write(
            f"{title}; {minutes:.1f} min. Validation loss of the backbone without LoRA: "
            f"{baseline:.4f}.\n\n{table(rows)}"
        )
    plot(rows, out / "scaling_study.png", title)
    return rows


def main(argv=None) -> int:
    return run_program("scaling_study", _main, argv)


def _main(argv) -> int:
    cfg = parse_config(StudyConfig, argv, prog="scaling_study")
    rows = run_study(cfg)
    print(table(rows))
    print(f"results: {Path(cfg.out_dir) / 'results.md'}, {Path(cfg.out_dir) / 'scaling_study.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
