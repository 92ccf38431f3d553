"""What a new user meets first: the test script's install stamp, a failed download, a missing
backbone under torchrun, clearing a config value, decoding an adapter trained on a random backbone,
predictions that say nothing, one BLEU scale per report, log files without progress bars, the help
texts and the ignored example outputs."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from training import GPT2_FT, REPO, run, subprocess_env, tiny_args

from lora_nlg.decode.predict import main as beam_main
from lora_nlg.metrics import evaluate
from lora_nlg.pipeline import model_selection, results_table
from lora_nlg.train.loop import main as train_main
from lora_nlg.weights import hub

pytestmark = pytest.mark.usefixtures("one_thread")


def test_test_sh_skips_the_install_when_the_requirements_are_unchanged(tmp_path):
    want = hashlib.sha256(
        b"".join((REPO / f).read_bytes() for f in ("requirements.txt", "requirements-test.txt", "pyproject.toml"))
    ).hexdigest()
    env = dict(subprocess_env(), VIRTUAL_ENV=os.path.dirname(os.path.dirname(sys.executable)))
    for _ in range(2):  # the first may install (a changed file); the second must not
        r = subprocess.run(
            ["bash", "scripts/test.sh", "--collect-only", "-q", "tests/test_cli.py"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-2000:]
    assert "requirements unchanged since the last install: not reinstalling" in r.stderr
    assert (REPO / env["VIRTUAL_ENV"] / ".lora-nlg-installed").read_text().strip() == want


def test_a_failed_download_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    def no_network(*a, **k):
        raise hub.urllib.error.URLError("offline")

    monkeypatch.setattr(hub.urllib.request, "urlopen", no_network)
    assert hub.main(["gpt2.md", "--out", str(tmp_path / "pretrained")]) == 1
    assert "openai-community/gpt2-medium" in capsys.readouterr().err
    assert os.listdir(tmp_path / "pretrained") == []


def test_a_missing_backbone_under_torchrun_is_one_line(e2e_data, tmp_path):
    r = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            GPT2_FT,
            *tiny_args(
                e2e_data,
                tmp_path / "run",
                "--train_batch_size",
                "4",
                "--max_step",
                "2",
                "--init_checkpoint",
                str(tmp_path / "pretrained_checkpoints" / "gpt2-tiny"),
            ),
        ],
        timeout=240,
    )
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert r.returncode != 0 and "Traceback" not in r.stderr and "ChildFailedError" not in r.stderr, r.stderr
    assert len(errors) == 1 and "no such file or folder" in errors[0], r.stderr


def test_a_config_value_is_cleared_with_none_and_a_contradicting_card_is_named(e2e_data, tmp_path, capsys):
    e2e = ["--config", str(REPO / "configs" / "e2e.yaml"), "--model_card", "gpt2.tiny"]
    args = tiny_args(e2e_data, tmp_path / "run", "--max_step", "1")
    assert train_main([*e2e, *args]) == 2  # configs/e2e.yaml names pretrained_checkpoints/gpt2-medium
    err = capsys.readouterr().err
    assert "--model_card gpt2.tiny contradicts --init_checkpoint pretrained_checkpoints/gpt2-medium" in err, err
    assert "--init_checkpoint none" in err
    assert train_main([*e2e, *args, "--init_checkpoint", "none"]) == 0
    assert "randomly initialised" in capsys.readouterr().err


@pytest.fixture(scope="module")
def random_backbone_run(e2e_data, tmp_path_factory):
    """A LoRA run on a random backbone that also saves the model it trained (--save_full)."""
    work = tmp_path_factory.mktemp("random") / "run"
    assert train_main(tiny_args(e2e_data, work, "--max_step", "3", "--save_full", "--random_seed", "7")) == 0
    inputs = work.parent / "unique.jsonl"
    rows = [json.loads(line) for line in open(e2e_data / "valid.jsonl")][:6]
    inputs.write_text(
        "".join(
            json.dumps({"id": i, "context": "c", "context_ids": r["context"], "references": ["x"]}) + "\n"
            for i, r in enumerate(rows)
        )
    )
    return work, inputs


def _predictions(path):
    return [json.loads(line) for line in open(path)]


def test_a_random_backbone_adapter_decodes_as_the_model_it_was_trained_on(random_backbone_run, tmp_path, capsys):
    work, inputs = random_backbone_run
    flags = ["--data", str(inputs), "--beam", "2", "--eval_len", "8", "--min_length", "4", "--work_dir", str(tmp_path)]
    ckpt = work / "checkpoints" / "step-3"
    assert beam_main([*flags, "--init_checkpoint", str(ckpt / "model"), "--output_file", "trained.jsonl"]) == 0
    assert (
        beam_main([*flags, "--init_checkpoint", str(ckpt), "--random_backbone", "--output_file", "adapter.jsonl"]) == 0
    )
    trained, adapter = _predictions(tmp_path / "trained.jsonl"), _predictions(tmp_path / "adapter.jsonl")
    assert [p["token_ids"] for p in adapter] == [p["token_ids"] for p in trained]
    assert "seed 7" in capsys.readouterr().err
    assert beam_main([*flags, "--init_checkpoint", str(ckpt), "--random_backbone", "--random_seed", "1"]) == 2
    assert "drawn with seed 7" in capsys.readouterr().err


def test_predictions_that_say_nothing_are_said_so(random_backbone_run, tmp_path, capsys, monkeypatch):
    import lora_nlg.decode.predict as predict
    from lora_nlg.beam import Hypothesis

    work, inputs = random_backbone_run
    ckpt = work / "checkpoints" / "step-3"
    # A model that emits the stop token first: every prediction is empty.
    monkeypatch.setattr(
        predict, "beam_search", lambda m, prompts, s, progress=None: [Hypothesis([50256], 0.0, True) for _ in prompts]
    )
    assert (
        beam_main(
            [
                "--data",
                str(inputs),
                "--init_checkpoint",
                str(ckpt),
                "--random_backbone",
                "--eval_len",
                "8",
                "--work_dir",
                str(tmp_path),
                "--output_file",
                "empty.jsonl",
            ]
        )
        == 0
    )
    assert all(p["text"] == "" for p in _predictions(tmp_path / "empty.jsonl"))
    assert "all 6 predictions are empty: the model emits the stop token first" in capsys.readouterr().err
    out = tmp_path / "seed-7"
    (out / "test").mkdir(parents=True)
    assert (
        model_selection.main(
            [
                "--dataset",
                "e2e",
                "--references",
                str(inputs),
                "--out",
                str(out / "selection.json"),
                f"epoch-1={tmp_path / 'empty.jsonl'}",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "epoch-1 (the chosen one: its BLEU means nothing): all 6 predictions are empty" in captured.err
    assert "dev BLEU (0-100)" in captured.out
    (out / "test" / "predictions.jsonl").write_bytes((tmp_path / "empty.jsonl").read_bytes())
    report = {
        "protocol": "official",
        "metrics": ["BLEU"],
        "scores": {"all": {"BLEU": 0.0}},
        "counts": {"all": {"inputs": 6}},
        "not_computed": {},
    }
    (out / "test" / "eval.official.json").write_text(json.dumps(report))
    assert (
        results_table.main(["--dataset", "e2e", "--model_card", "gpt2.tiny", "--out_dir", str(tmp_path), str(out)]) == 0
    )
    md = (tmp_path / "results.md").read_text()
    assert "**WARNING** seed 7: epoch-1 (chosen): all 6 predictions are empty" in md
    assert "**WARNING** seed 7: test predictions: all 6 predictions are empty" in md
    assert "| subset | BLEU (x100) |" in md and "dev BLEU (x100)" in md  # the scale in every header


def test_the_eval_table_names_each_scale():
    for dataset, header in (("e2e", "BLEU(0-1)"), ("webnlg", "BLEU(0-100)")):
        report = {
            "dataset": dataset,
            "protocol": "official",
            "references": "r",
            "protocol_description": "d",
            "metrics": ["BLEU", "METEOR"],
            "scores": {"all": {"BLEU": 0.5, "METEOR": 0.3}},
            "counts": {"all": {"inputs": 1, "segments": 1, "references": 1, "references_dropped": 0}},
            "metric_definitions": {},
            "not_computed": {},
        }
        table = evaluate.report.format_table(report)
        assert header in table and "METEOR(0-1)" in table


def test_log_files_get_whole_lines_not_progress_bars(e2e_data, tmp_path):
    with open(tmp_path / "err.log", "w") as err, open(tmp_path / "out.log", "w") as out:
        subprocess.run(
            [sys.executable, GPT2_FT, *tiny_args(e2e_data, tmp_path / "run", "--max_step", "3")],
            env=subprocess_env(),
            stdout=out,
            stderr=err,
            timeout=240,
            check=True,
        )
    for name in ("err.log", "out.log"):
        text = (tmp_path / name).read_text()
        assert "\r" not in text and "step/s" not in text, name
    assert "end of training at step 3; no validation ran" in (tmp_path / "out.log").read_text()


def _help(*cmd):
    r = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return " ".join(r.stdout.split())


def test_help_texts():
    ft = _help(sys.executable, "src/gpt2_ft.py", "--help")
    assert "(default: $PT_OUTPUT_DIR, else gpt2_model)" in ft and "gpt2_model). (default:" not in ft
    assert "(default: fp32, or fp16 with --fp16)" in ft and "none" in ft
    beam = _help(sys.executable, "src/gpt2_beam.py", "--help")
    assert "gpt2.tiny" in beam and "gpt2.xl" in beam
    assert _help("bash", "scripts/export.sh", "--help").startswith("usage: scripts/export.sh")
    assert _help("bash", "scripts/download_pretrained_checkpoints.sh", "--help").startswith(
        "usage: scripts/download_pretrained_checkpoints.sh"
    )
    datasets = _help("bash", "scripts/create_datasets.sh", "--help")
    assert datasets.startswith("usage: scripts/create_datasets.sh") and "[DATASETS ...]" in datasets


def test_gpt2_decode_refuses_a_vocab_folder_that_does_not_exist(tmp_path, capsys):
    from lora_nlg.decode.scorer_files import main as decode_main

    (tmp_path / "u.jsonl").write_text(json.dumps({"id": 0, "context": "a", "references": ["x"]}) + "\n")
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": 0, "text": "x"}) + "\n")
    assert (
        decode_main(
            [
                "--vocab",
                str(tmp_path / "vocab"),
                "--sample_file",
                str(tmp_path / "p.jsonl"),
                "--input_file",
                str(tmp_path / "u.jsonl"),
                "--output_ref_file",
                str(tmp_path / "r"),
                "--output_pred_file",
                str(tmp_path / "h"),
            ]
        )
        == 2
    )
    assert "--vocab" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_the_readme_example_outputs_are_ignored():
    r = subprocess.run(
        [
            "git",
            "check-ignore",
            "out/peft_adapter/x",
            "e2e_test.json",
            "trained_models/GPT2_M/e2e",
            "bench_out/table.md",
            "e2e_ref.txt",
            "e2e_pred.txt",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert len(r.stdout.split()) == 6, r.stdout
