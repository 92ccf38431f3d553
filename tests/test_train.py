"""Training (`src/gpt2_ft.py`, `lora_nlg.train.loop`): tiny GPT-2 on the CPU, real E2E examples.

The data are the first pairs of the official E2E dev set (the mirror's `e2e/devset.csv`), encoded
as upstream encodes them, written to a temporary folder: nothing depends on a prepared `data/`.
Runs go through `main(argv)` in-process where possible, and through real subprocesses
(`python -m torch.distributed.run`, `kill -9`, SIGTERM) where the process boundary is the point.
"""

import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors import safe_open
from training import GPT2_FT, REPO, adapter, assert_same_tensors, records, run, subprocess_env, tiny_args

from lora_nlg.model import GPT2Config, GPT2LMModel
from lora_nlg.train.loop import main
from lora_nlg.weights.backbone import load_pretrained, save_pretrained

# ------------------------------------------------------------------------------- a short run


@pytest.fixture(scope="module")
def short_run(e2e_data, tmp_path_factory):
    """30 steps with validation every 10 and checkpoints every 15 (shared by several tests)."""
    work = tmp_path_factory.mktemp("short") / "run"
    code = main(
        tiny_args(
            e2e_data,
            work,
            "--max_step",
            "30",
            "--lr",
            "0.005",
            "--eval_interval",
            "10",
            "--save_interval",
            "15",
            "--warmup_step",
            "4",
            "--lora_alpha",
            "32",
            "--lora_dropout",
            "0.1",
            "--tensorboard",
            "true",
        )
    )
    assert code == 0
    return work


def test_loss_falls(short_run):
    train = records(short_run, "train")
    assert [r["step"] for r in train] == list(range(1, 31))
    first, last = train[0]["loss"], sum(r["loss"] for r in train[-5:]) / 5
    assert last < first - 0.3, (first, last)
    valid = records(short_run, "valid")
    assert [r["step"] for r in valid] == [10, 20, 30]
    assert valid[-1]["loss"] < valid[0]["loss"]
    assert train[0]["lr"] == 0 and all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in train[1:])  # warmup from 0


def test_checkpoint_holds_only_lora_tensors_and_metadata(short_run):
    root = short_run / "checkpoints"
    assert (root / "last").read_text().strip() == "step-30"
    assert sorted(p.name for p in root.iterdir()) == ["best", "last", "step-15", "step-30"]
    path = root / "step-30" / "adapter.safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys = sorted(f.keys())
    assert keys == sorted(f"transformer.h.{i}.attn.c_attn.lora_{ab}" for i in range(4) for ab in "AB")
    tensors, meta = adapter(path)
    assert tensors["transformer.h.0.attn.c_attn.lora_A"].shape == (2 * 4, 128)  # A_q on A_v, r=4
    assert tensors["transformer.h.0.attn.c_attn.lora_B"].shape == (2 * 128, 4)
    assert meta["r"] == 4 and meta["alpha"] == 32 and meta["scaling"] == 8 and meta["scaling_rule"] == "alpha/r"
    assert meta["targets"] == ["q", "v"] and meta["dropout"] == 0.1 and meta["model_card"] == "gpt2.tiny"
    assert meta["step"] == 30 and meta["epoch"] == 1 and meta["max_step"] == 30
    valid = records(short_run, "valid")
    assert meta["val_loss"] == pytest.approx(valid[-1]["loss"])
    assert meta["best_val_loss"] == pytest.approx(min(r["loss"] for r in valid))
    assert meta["init_checkpoint"] is None and meta["backbone"] == "random init (seed 10)"
    assert meta["config"]["lora_alpha"] == 32 and meta["config"]["max_step"] == 30
    best_tensors, best_meta = adapter(root / "best")
    assert best_meta["val_loss"] == pytest.approx(min(r["loss"] for r in valid))
    # The trainer state loads without unpickling code, and holds what resuming needs.
    state = torch.load(root / "step-30" / "trainer_state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "sampler", "rng", "step", "epoch"} <= set(state)
    assert state["step"] == 30 and state["scheduler"]["last_epoch"] == 30 and len(state["rng"]) == 1
    # The resolved configuration is in the work dir and reads back with --config.
    saved = yaml.safe_load((short_run / "config.yaml").read_text())
    assert saved["lora_alpha"] == 32 and saved["precision"] == "fp32"
    assert list((short_run / "tensorboard").glob("events.out.tfevents.*"))


def test_max_epoch_validates_and_saves_at_each_epoch_end(e2e_data, tmp_path):
    """64 examples / batch 16 = 4 steps per epoch: 2 epochs write epoch-1 and epoch-2; the end
    of training is the end of epoch 2, so no extra step-8."""
    work = tmp_path / "run"
    args = tiny_args(e2e_data, work, "--max_epoch", "2", "--train_batch_size", "16")
    args[args.index("--train_data") + 1] = str(e2e_data / "train64.jsonl")
    assert main(args) == 0
    names = sorted(p.name for p in (work / "checkpoints").iterdir())
    assert names == ["best", "epoch-1", "epoch-2", "last"]
    assert (work / "checkpoints" / "last").read_text().strip() == "epoch-2"
    assert [r["step"] for r in records(work, "valid")] == [4, 8]
    assert adapter(work / "checkpoints" / "epoch-1")[1]["epoch"] == 1
    state = torch.load(work / "checkpoints" / "epoch-1" / "trainer_state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["sampler"]["epoch"] == 1 and state["sampler"]["step"] == 0


# ----------------------------------------------------------------------------- equivalences

EQUIVALENCE = ("--max_step", "6", "--eval_interval", "3", "--lora_dropout", "0.0")


@pytest.fixture(scope="module")
def one_process_runs(e2e_data, tmp_path_factory):
    """1 rank x batch 8 and 1 rank x batch 4 x grad_acc 2 (in-process, one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = tmp_path_factory.mktemp("one") / "run"
        assert main(tiny_args(e2e_data, one, *EQUIVALENCE, "--train_batch_size", "8")) == 0
        acc = tmp_path_factory.mktemp("acc") / "run"
        assert main(tiny_args(e2e_data, acc, *EQUIVALENCE, "--train_batch_size", "4", "--grad_acc", "2")) == 0
    finally:
        torch.set_num_threads(before)
    return one, acc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_grad_acc_equals_a_larger_batch(one_process_runs):
    one, acc = one_process_runs
    final_one, final_acc = (adapter(w / "checkpoints" / "step-6")[0] for w in (one, acc))
    assert_same_tensors(final_acc, final_one, atol=1e-6)
    assert any(t.abs().max() > 1e-3 for t in final_one.values())  # it did train


@pytest.mark.parametrize("layout", ["1 node x 2 processes", "2 nodes x 1 process"])
def test_two_process_gloo_torchrun_equals_one_process(e2e_data, tmp_path, one_process_runs, layout):
    """2 ranks x batch 4 (torchrun, gloo) == 1 rank x batch 8. With 2 "nodes" (two torchrun
    agents on this machine) each worker has local rank 0: the global rank must pick the data."""
    two = tmp_path / "two"
    args = [GPT2_FT, *tiny_args(e2e_data, two, *EQUIVALENCE, "--train_batch_size", "4")]
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    if layout.startswith("1 node"):
        procs = [
            subprocess.Popen(
                [*torchrun, "--standalone", "--nproc_per_node=2", *args],
                env=subprocess_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        ]
    else:
        port = str(free_port())
        procs = [
            subprocess.Popen(
                [
                    *torchrun,
                    "--nnodes=2",
                    "--nproc_per_node=1",
                    f"--node_rank={node}",
                    "--master_addr=127.0.0.1",
                    f"--master_port={port}",
                    *args,
                ],
                env=subprocess_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for node in (0, 1)
        ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "2 process(es) on cpu (gloo)" in outputs[0][0]
    one, _ = one_process_runs
    assert_same_tensors(
        adapter(two / "checkpoints" / "step-6")[0], adapter(one / "checkpoints" / "step-6")[0], atol=1e-5
    )
    # Validation loss is reduced over both ranks: the same number as one process computes.
    v2, v1 = records(two, "valid"), records(one, "valid")
    assert [r["step"] for r in v2] == [3, 6]
    for a, b in zip(v2, v1):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for a, b in zip(records(two, "train"), records(one, "train")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_kill_9_then_resume_equals_uninterrupted_run(e2e_data, tmp_path, one_thread):
    """LoRA dropout 0.1 (so the random state matters), checkpoints every 3 steps, killed mid-run."""
    common = ("--max_step", "14", "--save_interval", "3", "--lora_dropout", "0.1", "--eval_interval", "4")
    ref = tmp_path / "ref"
    assert main(tiny_args(e2e_data, ref, *common)) == 0
    work = tmp_path / "killed"
    cmd = [sys.executable, GPT2_FT, *tiny_args(e2e_data, work, *common)]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = work / "checkpoints" / "last"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and last.read_text().strip() in ("step-6", "step-9"):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = int(re.fullmatch(r"step-(\d+)", last.read_text().strip()).group(1))
    assert 3 <= killed_at < 14
    resumed = run([sys.executable, GPT2_FT, *tiny_args(e2e_data, work, *common, "--resume")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {work / 'checkpoints' / f'step-{killed_at}'} at step {killed_at}" in resumed.stdout
    assert_same_tensors(adapter(work / "checkpoints" / "step-14")[0], adapter(ref / "checkpoints" / "step-14")[0])
    # The log reads as one run: every step once, the killed run's redone steps dropped.
    assert [r["step"] for r in records(work, "train")] == list(range(1, 15))
    assert [r["loss"] for r in records(work, "train")] == pytest.approx([r["loss"] for r in records(ref, "train")])
    ref_state = torch.load(ref / "checkpoints" / "step-14" / "trainer_state.pt", weights_only=True)
    state = torch.load(work / "checkpoints" / "step-14" / "trainer_state.pt", weights_only=True)
    assert state["best_val_loss"] == ref_state["best_val_loss"]
    for k, v in ref_state["optimizer"]["state"].items():
        assert torch.equal(state["optimizer"]["state"][k]["exp_avg_sq"], v["exp_avg_sq"])


def test_sigterm_to_torchrun_saves_a_resumable_checkpoint_on_every_rank(e2e_data, tmp_path):
    """SIGTERM to the torchrun agent (what a cluster scheduler sends): it forwards the signal to
    both workers, they finish the step, save one checkpoint with both ranks' random states, and
    exit; a second torchrun with --resume continues from it."""
    work = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", GPT2_FT]
    args = tiny_args(e2e_data, work, "--train_batch_size", "4", "--scheduler", "constant")
    proc = subprocess.Popen(
        [*torchrun, *args, "--max_step", "500"],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = work / "log.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and '"step": 3,' in log.read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert "stopped by signal 15" in out, err[-3000:]
    name = (work / "checkpoints" / "last").read_text().strip()
    step = int(name.split("-")[1])
    assert 3 <= step < 500 and f"stopped by signal 15 at step {step}" in out
    state = torch.load(work / "checkpoints" / name / "trainer_state.pt", weights_only=True)
    assert state["step"] == step and state["world_size"] == 2 and len(state["rng"]) == 2
    resumed = run([*torchrun, *args, "--max_step", str(step + 2), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {step} (epoch 1)" in resumed.stdout
    assert (work / "checkpoints" / "last").read_text().strip() == f"step-{step + 2}"
    assert [r["step"] for r in records(work, "train")] == list(range(1, step + 3))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(e2e_data, tmp_path, monkeypatch, capsys):
    import lora_nlg.train.loop as train_module

    real = train_module.token_loss_sum
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss  # step 5's loss (1 micro-batch per step)

    monkeypatch.setattr(train_module, "token_loss_sum", poisoned)
    work = tmp_path / "run"
    assert main(tiny_args(e2e_data, work, "--max_step", "10", "--save_interval", "2")) == 1
    err = capsys.readouterr().err
    assert "the training loss is nan at step 5" in err and "step-4" in err
    root = work / "checkpoints"
    assert (root / "last").read_text().strip() == "step-4"
    assert sorted(p.name for p in root.iterdir()) == ["last", "step-2", "step-4"]
    tensors, meta = adapter(root / "step-4")
    assert meta["step"] == 4 and all(torch.isfinite(t).all() for t in tensors.values())


def test_scheduler_counts_optimizer_steps_under_grad_acc(e2e_data, tmp_path):
    work = tmp_path / "run"
    assert (
        main(
            tiny_args(
                e2e_data,
                work,
                "--train_batch_size",
                "4",
                "--grad_acc",
                "3",
                "--max_step",
                "6",
                "--warmup_step",
                "2",
                "--scheduler",
                "linear",
                "--lr",
                "0.001",
            )
        )
        == 0
    )
    lrs = [r["lr"] for r in records(work, "train")]
    # Step t (1-based) uses the schedule at t - 1: warmup 0, 0.5, then linear decay to 0 at 6.
    expected = [0.001 * f for f in (0.0, 0.5, 1.0, 3 / 4, 2 / 4, 1 / 4)]
    assert lrs == pytest.approx(expected)
    state = torch.load(work / "checkpoints" / "step-6" / "trainer_state.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 6
    assert state["optimizer"]["param_groups"][0]["upstream_step"] == 6
    assert all(float(s["step"]) == 6 for s in state["optimizer"]["state"].values())
    assert state["sampler"]["step"] == 6  # 6 batches of 4 x 3 examples consumed


# ------------------------------------------------------------------------- command lines


@pytest.fixture(scope="module")
def seed_style_checkpoint(tmp_path_factory):
    """A tiny GPT-2 saved like upstream's `gpt2-medium-pytorch_model.bin`: a pickled state dict
    with Hugging Face's GPT2Model names (no `transformer.` prefix) in Conv1D layout."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pretrained")
    save_pretrained(GPT2LMModel(GPT2Config.from_card("gpt2.tiny")), folder / "hf")
    with safe_open(str(folder / "hf" / "model.safetensors"), framework="pt") as f:
        state = {k[len("transformer.") :]: f.get_tensor(k) for k in f.keys()}
    torch.save(state, folder / "gpt2-tiny-pytorch_model.bin")
    return folder / "gpt2-tiny-pytorch_model.bin"


def test_seed_readme_e2e_command_runs_under_torchrun(e2e_data, tmp_path, seed_style_checkpoint):
    """microsoft/LoRA's README E2E command, `python -m torch.distributed.launch` replaced by
    torchrun, paths changed, --max_step 4 and --model_card gpt2.tiny added."""
    work = tmp_path / "trained_models" / "GPT2_M" / "e2e"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        GPT2_FT,
        "--train_data",
        str(e2e_data / "train.jsonl"),
        "--valid_data",
        str(e2e_data / "valid.jsonl"),
        "--train_batch_size",
        "8",
        "--grad_acc",
        "1",
        "--valid_batch_size",
        "4",
        "--seq_len",
        "512",
        "--model_card",
        "gpt2.md",
        "--init_checkpoint",
        str(seed_style_checkpoint),
        "--platform",
        "local",
        "--clip",
        "0.0",
        "--lr",
        "0.0002",
        "--weight_decay",
        "0.01",
        "--correct_bias",
        "--adam_beta2",
        "0.999",
        "--scheduler",
        "linear",
        "--warmup_step",
        "500",
        "--max_epoch",
        "5",
        "--save_interval",
        "1000",
        "--lora_dim",
        "4",
        "--lora_alpha",
        "32",
        "--lora_dropout",
        "0.1",
        "--label_smooth",
        "0.1",
        "--work_dir",
        str(work),
        "--random_seed",
        "110",
        "--max_step",
        "4",
        "--model_card",
        "gpt2.tiny",
        "--device",
        "cpu",
        "--tensorboard",
        "false",
    ]
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--platform local is ignored" in proc.stderr
    tensors, meta = adapter(work / "checkpoints" / "step-4")
    assert meta["r"] == 4 and meta["alpha"] == 32 and meta["dropout"] == 0.1
    assert meta["init_checkpoint"] == str(seed_style_checkpoint)
    cfg = meta["config"]
    assert cfg["label_smooth"] == 0.1 and cfg["correct_bias"] is True and cfg["adam_beta2"] == 0.999
    assert cfg["random_seed"] == 110 and cfg["warmup_step"] == 500 and cfg["max_epoch"] == 5
    state = torch.load(work / "checkpoints" / "step-4" / "trainer_state.pt", weights_only=True)
    assert state["scheduler"]["_last_lr"] == pytest.approx([0.0002 * 4 / 500])  # warming up over 500 steps


def test_old_launcher_local_rank_flag_is_accepted(e2e_data, tmp_path):
    assert main(tiny_args(e2e_data, tmp_path / "a", "--max_step", "1", "--local-rank=0")) == 0
    assert main(tiny_args(e2e_data, tmp_path / "b", "--max_step", "1", "--local_rank", "0")) == 0


def test_unknown_flags_are_errors(e2e_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(tiny_args(e2e_data, tmp_path, "--max_step", "1", "--no_such_flag", "3"))
    assert e.value.code == 2 and "unrecognized arguments: --no_such_flag" in capsys.readouterr().err
    config = tmp_path / "x.yaml"
    config.write_text("lr: 0.001\nlearning_rate: 0.1\n")
    assert main(tiny_args(e2e_data, tmp_path, "--max_step", "1", "--config", str(config))) == 2
    assert "unknown key(s) ['learning_rate']" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--fp16", "--precision", "bf16"), "--fp16 contradicts --precision bf16"),
        (("--precision", "fp16"), "needs CUDA"),
        (("--lora_dim", "0", "--lora_dropout", "0.1"), "full fine-tuning has no LoRA"),
        (("--resume", "--overwrite"), "choose one"),
        (("--lora_targets", "q", "x"), "--lora_targets ['q', 'x']"),
        (("--grad_acc", "0"), "--grad_acc must be at least 1"),
        (("--seq_len", "5000"), "exceeds the model's 1024 positions"),
        (("--scheduler", "cycle", "--i_steps", "0,10", "--i_lrs", "0.1,0"), "but --max_step is 1"),
    ],
)
def test_contradictory_flags_are_errors(e2e_data, tmp_path, capsys, flags, message):
    assert main(tiny_args(e2e_data, tmp_path / "run", "--max_step", "1", *flags)) == 2
    assert message in capsys.readouterr().err


def test_cycle_scheduler_takes_max_step_from_i_steps_and_refuses_warmup(e2e_data, tmp_path, capsys):
    cycle = ("--scheduler", "cycle", "--i_steps", "0,2,4", "--i_lrs", "0.0,0.01,0.002")
    assert main(tiny_args(e2e_data, tmp_path / "run", *cycle, "--warmup_step", "5")) == 2
    assert "--warmup_step has no effect with --scheduler cycle" in capsys.readouterr().err
    work = tmp_path / "run"
    assert main(tiny_args(e2e_data, work, *cycle)) == 0
    # Upstream's CyclicScheduler: linear between the given points (its 1e-6 guard included).
    lrs = [r["lr"] for r in records(work, "train")]
    assert lrs == pytest.approx([0.0, 0.005, 0.01, 0.006], rel=1e-5)


def test_missing_max_step_and_max_epoch_and_existing_work_dir(e2e_data, tmp_path, capsys):
    assert main(tiny_args(e2e_data, tmp_path / "run")) == 2
    assert "give --max_step or --max_epoch" in capsys.readouterr().err
    assert main(tiny_args(e2e_data, tmp_path / "run", "--max_step", "1")) == 0
    assert main(tiny_args(e2e_data, tmp_path / "run", "--max_step", "1")) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(tiny_args(e2e_data, tmp_path / "run", "--max_step", "1", "--overwrite")) == 0


def test_config_file_fills_and_flags_override(e2e_data, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("lora_dim: 2\nlora_alpha: 16\nlora_targets: [q, k, v]\nlr: 0.01\nmax_step: 3\n")
    work = tmp_path / "run"
    assert main(tiny_args(e2e_data, work, "--config", str(config), "--lr", "0.003")) == 0
    saved = yaml.safe_load((work / "config.yaml").read_text())
    assert saved["lora_dim"] == 2 and saved["lora_targets"] == ["q", "k", "v"] and saved["lr"] == 0.003
    tensors, meta = adapter(work / "checkpoints" / "step-3")
    assert meta["r"] == 2 and meta["targets"] == ["q", "k", "v"]
    assert tensors["transformer.h.0.attn.c_attn.lora_A"].shape == (3 * 2, 128)


def test_tiny_recipe_config_runs(e2e_data, tmp_path):
    """configs/tiny.yaml stays a valid recipe (its data paths and length overridden)."""
    work = tmp_path / "run"
    assert (
        main(
            [
                "--config",
                str(REPO / "configs" / "tiny.yaml"),
                "--train_data",
                str(e2e_data / "train64.jsonl"),
                "--valid_data",
                str(e2e_data / "valid.jsonl"),
                "--max_step",
                "2",
                "--warmup_step",
                "1",
                "--work_dir",
                str(work),
                "--tensorboard",
                "false",
            ]
        )
        == 0
    )
    meta = adapter(work / "checkpoints" / "step-2")[1]
    assert (meta["r"], meta["alpha"], meta["dropout"], meta["model_card"]) == (4, 32, 0.1, "gpt2.tiny")
    assert meta["config"]["label_smooth"] == 0.1 and meta["config"]["random_seed"] == 110


# ------------------------------------------------------------------- full fine-tuning, bf16


def test_full_fine_tuning_writes_a_model_that_loads_as_init_checkpoint(e2e_data, tmp_path):
    """The CPU demo's first half: full training with --obj jlm gives a GPT-2 folder that a LoRA
    run then starts from."""
    full = tmp_path / "full"
    assert main(tiny_args(e2e_data, full, "--lora_dim", "0", "--obj", "jlm", "--max_step", "3", "--lr", "0.001")) == 0
    folder = full / "checkpoints" / "step-3"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "model", "trainer_state.pt"]
    model = load_pretrained(folder / "model", "gpt2.tiny")
    torch.manual_seed(10)
    untrained = GPT2LMModel(GPT2Config.from_card("gpt2.tiny"))
    assert not torch.equal(model.transformer.h[0].attn.c_attn.weight, untrained.transformer.h[0].attn.c_attn.weight)
    lora = tmp_path / "lora"
    assert main(tiny_args(e2e_data, lora, "--init_checkpoint", str(folder / "model"), "--max_step", "2")) == 0
    assert adapter(lora / "checkpoints" / "step-2")[1]["init_checkpoint"] == str(folder / "model")


def test_bf16_autocast_on_cpu_trains(e2e_data, tmp_path):
    work = tmp_path / "run"
    assert main(tiny_args(e2e_data, work, "--precision", "bf16", "--max_step", "4", "--save_full")) == 0
    assert all(r["loss"] == r["loss"] for r in records(work, "train"))
    assert (work / "checkpoints" / "step-4" / "model" / "model.safetensors").exists()
    tensors, _ = adapter(work / "checkpoints" / "step-4")
    assert all(t.dtype == torch.float32 for t in tensors.values())  # weights stay fp32
