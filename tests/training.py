"""Helpers of the training tests (test_train.py, test_hardening.py): a small LoRA run's flags,
subprocesses with the repository's src/ on the path, the log's records. Not a test module.
"""

import json
import os
import subprocess
from pathlib import Path

import torch

from lora_nlg.weights.adapter import load_adapter

REPO = Path(__file__).resolve().parents[1]
GPT2_FT = str(REPO / "src" / "gpt2_ft.py")


def tiny_args(data, work_dir, *extra):
    """A small LoRA run on gpt2.tiny (random backbone) on the CPU."""
    return [
        "--train_data",
        str(data / "train.jsonl"),
        "--valid_data",
        str(data / "valid.jsonl"),
        "--model_card",
        "gpt2.tiny",
        "--device",
        "cpu",
        "--seq_len",
        "128",
        "--train_batch_size",
        "8",
        "--valid_batch_size",
        "16",
        "--lr",
        "0.002",
        "--correct_bias",
        "--log_interval",
        "1",
        "--eval_interval",
        "1000",
        "--save_interval",
        "1000",
        "--tensorboard",
        "false",
        "--work_dir",
        str(work_dir),
        *extra,
    ]


def adapter(path):
    tensors, metadata = load_adapter(path)
    return tensors, metadata


def records(work_dir, kind):
    with open(Path(work_dir) / "log.jsonl", encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def assert_same_tensors(a, b, atol=0.0):
    assert sorted(a) == sorted(b)
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), f"{k}: max diff {(a[k] - b[k]).abs().max()}"
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


def subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    env.pop("PT_OUTPUT_DIR", None)
    return env


def run(cmd, timeout=240, **kw):
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout, **kw)
