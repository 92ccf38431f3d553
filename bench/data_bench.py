"""Figures for the data pipeline (not a test):

1. wall time of `bash scripts/create_datasets.sh all` from scratch into a temporary folder, and of
   the re-run that finds everything up to date;
2. fraction of padding tokens on E2E train with batch 8: our length-bucketed batches padded to
   their own longest sequence, random batches padded to their own longest, and upstream's
   padding of every sequence to 512.

    python bench/data_bench.py [--mirror DIR] [--batch_size 8] [--seq_len 512] [--seed 0]
"""

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

from lora_nlg.cli import parse_config  # noqa: E402
from lora_nlg.data.batching import BucketBatchSampler, FTDataset  # noqa: E402
from lora_nlg.data.files import read_encoded  # noqa: E402


@dataclass
class BenchConfig:
    """Data pipeline figures: create_datasets wall time and padding fractions."""

    mirror: Optional[str] = None
    """Raw-file mirror (default: $NLG_DATA_MIRROR, else ../shared/data)."""
    batch_size: int = 8
    """Batch size for the padding figures."""
    seq_len: int = 512
    """Upstream's fixed sequence length."""
    seed: int = 0
    """Sampler seed."""


def timed_create_datasets(data_dir, mirror):
    cmd = ["bash", str(REPO / "scripts" / "create_datasets.sh"), "all", "--data_dir", str(data_dir)]
    if mirror:
        cmd += ["--mirror", mirror]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"create_datasets.sh failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    return elapsed, run.stdout + run.stderr


def padding_fraction(batches, lengths):
    """Padding tokens / all token positions when each batch is padded to its own longest."""
    real = padded = 0
    for batch in batches:
        lens = lengths[np.asarray(batch)]
        real += int(lens.sum())
        padded += int(lens.max()) * len(batch)
    return 1 - real / padded


def main(argv=None):
    cfg = parse_config(BenchConfig, argv, prog="data_bench.py")
    with tempfile.TemporaryDirectory() as tmp:
        first, log = timed_create_datasets(tmp, cfg.mirror)
        again, _ = timed_create_datasets(tmp, cfg.mirror)
        ds = FTDataset(read_encoded(Path(tmp) / "e2e" / "train.jsonl"), cfg.seq_len)
    lengths = np.asarray(ds.lengths())
    bucketed = list(BucketBatchSampler(lengths, cfg.batch_size, seed=cfg.seed))
    rng = np.random.default_rng(cfg.seed)
    random_batches = [
        b.tolist() for b in np.array_split(rng.permutation(len(lengths)), -(-len(lengths) // cfg.batch_size))
    ]
    seed_512 = 1 - lengths.sum() / (cfg.seq_len * len(lengths))
    print(log.rstrip())
    print()
    print(f"machine: {os.cpu_count()} CPUs")
    print(f"create_datasets.sh all, from scratch: {first:.1f} s; re-run (up to date): {again:.1f} s")
    print(
        f"E2E train: {len(lengths):,} sequences, mean length {lengths.mean():.1f} tokens, "
        f"max {lengths.max()}, truncated at {cfg.seq_len}: {ds.n_truncated}"
    )
    print(f"padding fraction, batch {cfg.batch_size}:")
    print(f"  bucketed (ours), padded to each batch's longest: {padding_fraction(bucketed, lengths):.2%}")
    print(f"  random batches, padded to each batch's longest:  {padding_fraction(random_batches, lengths):.2%}")
    print(f"  seed: every sequence padded to {cfg.seq_len}:            {seed_512:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
