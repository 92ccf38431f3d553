"""The shell entry points end to end: scripts/demo.sh, scripts/run.sh, bench/run_all.sh.

- the demo in its reduced mode (--quick) runs offline on the CPU and writes a metrics JSON where
  every E2E metric is a number, a loss plot and the run log;
- run.sh on gpt2.tiny (random backbone) with the data mirror runs every step: data, training under
  torchrun (gloo), dev decoding of each epoch, the choice by dev BLEU, test decoding, both
  evaluation protocols, the results table;
- a step that fails stops the chain with a non-zero status and a message that names the step;
- the pieces the scripts call (epoch choice, results table over seeds, subsets, the loss plot,
  the bench ratio table) are checked against numbers computed here.

Java is required (METEOR, PTB tokens), as in test_metrics_java.py.
"""

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from training import adapter

from lora_nlg.data import subset
from lora_nlg.pipeline import loss_plot, model_selection, results_table

REPO = Path(__file__).resolve().parents[1]
E2E_METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


def script_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    env.pop("PT_OUTPUT_DIR", None)
    return env


def run_script(args, timeout=600):
    return subprocess.run(
        ["bash", *map(str, args)], cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=timeout
    )


# ------------------------------------------------------------------------------ end to end


def test_demo_quick_writes_every_e2e_metric_and_a_loss_plot(prepared, mirror, tmp_path):
    out = tmp_path / "demo"
    r = run_script([REPO / "scripts/demo.sh", "--quick", "--out", out, "--data_dir", prepared, "--data_mirror", mirror])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["dataset"] == "e2e" and report["protocol"] == "official"
    assert report["not_computed"] == {}
    scores = report["scores"]["all"]
    for metric in E2E_METRICS:
        assert isinstance(scores[metric], float) and math.isfinite(scores[metric]), (metric, scores)
    assert report["counts"]["all"]["inputs"] == 6
    # The table eval.sh prints, the loss plot, the logged commands of every step.
    assert "BLEU" in r.stdout and "CIDEr" in r.stdout
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (out / "run.log").read_text()
    for name in ("prepare-data", "pretrain", "run.sh", "plot"):
        assert f"step {name}: " in log and f"step {name} done" in log
    run_log = (out / "run" / "run.log").read_text()
    assert "train-110: " in run_log and "torch.distributed.run" in run_log
    # LoRA on the stand-in backbone: the adapter names the pretrained tiny model it was trained on.
    chosen = json.loads((out / "run" / "seed-110" / "selection.json").read_text())["chosen"]
    meta = json.loads((out / "run" / "seed-110" / "checkpoints" / chosen / "checkpoint.json").read_text())
    assert meta["config"]["lora_dim"] == 4 and meta["config"]["lora_alpha"] == 32
    assert meta["init_checkpoint"].endswith(os.path.join("pretrain", "checkpoints", "step-30", "model"))


def test_run_sh_tiny_runs_every_step(prepared, mirror, tmp_path):
    out = tmp_path / "run"
    r = run_script(
        [
            REPO / "scripts/run.sh",
            "e2e",
            "--tiny",
            "--out",
            out,
            "--data_dir",
            prepared,
            "--data_mirror",
            mirror,
            "--no_download",
            "--limit_train",
            64,
            "--limit_valid",
            32,
            "--limit_eval",
            3,
            "--log_interval",
            4,
            "--tensorboard",
            "false",
        ]
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    seed = out / "seed-110"
    # 64 pairs at batch 8: 8 steps per epoch, 2 epochs, each epoch a candidate decoded on the dev slice.
    assert sorted(os.listdir(seed / "dev")) == [
        "epoch-1.config.yaml",
        "epoch-1.jsonl",
        "epoch-2.config.yaml",
        "epoch-2.jsonl",
    ]
    selection = json.loads((seed / "selection.json").read_text())
    assert set(selection["scores"]) == {"epoch-1", "epoch-2"}
    assert selection["chosen"] == max(selection["scores"], key=lambda k: (selection["scores"][k], k == "epoch-1"))
    predictions = [json.loads(line) for line in (seed / "test" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 3
    for proto in ("official", "paper"):
        report = json.loads((seed / "test" / f"eval.{proto}.json").read_text())
        assert report["protocol"] == proto and set(report["scores"]["all"]) == set(E2E_METRICS)
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == ["110"] and results["model_card"] == "gpt2.tiny"
    bleu = results["summary"]["official"]["all"]["BLEU"]
    assert bleu["n"] == 1 and bleu["std"] is None
    assert bleu["mean"] == json.loads((seed / "test" / "eval.official.json").read_text())["scores"]["all"]["BLEU"]
    md = (out / "results.md").read_text()
    assert "## protocol `official`" in md and "## protocol `paper`" in md
    # Every step's command is logged before it runs, with its duration after.
    log = (out / "run.log").read_text()
    for name in (
        "prepare-data",
        "train-110",
        "decode-dev-110-epoch-1",
        "decode-dev-110-epoch-2",
        "select-110",
        "decode-test-110",
        "eval-official-110",
        "eval-paper-110",
        "results",
    ):
        assert f"step {name}: " in log and f"step {name} done in" in log, name
    assert "--max_epoch 2 --max_step 16" in log


# ------------------------------------------------------------------------------ failures


def test_run_sh_stops_at_the_failing_step_and_names_it(prepared, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "configs" / "tiny.yaml").read_text() + "lora_dropout: 1.5\n")  # gpt2_ft.py refuses it
    out = tmp_path / "run"
    r = run_script(
        [
            REPO / "scripts/run.sh",
            "e2e",
            "--tiny",
            "--config",
            bad,
            "--out",
            out,
            "--data_dir",
            prepared,
            "--no_download",
            "--limit_train",
            16,
            "--limit_eval",
            2,
        ]
    )
    assert r.returncode != 0
    assert "run.sh: step 'train-110' failed" in r.stderr
    assert "--lora_dropout must be in [0, 1), got 1.5" in r.stdout + r.stderr
    log = (out / "run.log").read_text()
    assert "FAILED step train-110" in log and "decode-dev" not in log  # nothing after the failure
    assert not (out / "results.json").exists()


def test_a_missing_data_mirror_fails_the_prepare_step(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for script, prog, extra in (
        (REPO / "scripts/run.sh", "run.sh", ["e2e", "--tiny", "--no_download"]),
        (REPO / "scripts/demo.sh", "demo.sh", ["--quick"]),
    ):  # the demo never downloads
        r = run_script(
            [script, *extra, "--out", tmp_path / prog, "--data_dir", tmp_path / "data", "--data_mirror", empty],
            timeout=120,
        )
        assert r.returncode != 0, prog
        assert f"{prog}: step 'prepare-data' failed" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "name a dataset"),
        (["e2e", "--nproc", "0"], "--nproc must be a positive integer"),
        (["e2e", "--config", "no/such.yaml"], "--config"),
        (["e2e", "--random_seed", "3"], "--seeds"),
        (["e2e", "--model_card", "gpt2.huge"], "--model_card gpt2.huge"),
        (["e2e", "--config", "tests/conftest.py"], "conftest.py:1:3: not valid YAML"),
        (["e2e", "--method", "adamix"], "--method adamix: no configs/e2e.adamix.yaml, and gpt2_ft.py's methods are: "),
        (["e2e", "--tiny", "--method", "loraplus"], "(tiny runs use configs/tiny.yaml)"),
    ],
)
def test_run_sh_rejects_bad_arguments_before_running_anything(args, message, tmp_path):
    r = run_script([REPO / "scripts/run.sh", *args, "--out", tmp_path / "run"], timeout=60)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "run" / "run.log").exists()


def test_bench_run_all_rejects_an_unknown_benchmark():
    r = run_script([REPO / "bench/run_all.sh", "--only", "train,speed"], timeout=60)
    assert r.returncode == 2 and "'speed' is not train, beam, eval or methods" in r.stderr


# ------------------------------------------------------------------------------ the pieces


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_model_selection_picks_the_best_dev_bleu_and_the_earlier_on_a_tie(tmp_path):
    refs = _write_jsonl(
        tmp_path / "valid_unique.jsonl",
        [
            {
                "id": i,
                "context": f"name : X{i}",
                "context_ids": [1, 50256],
                "references": [f"X{i} is a pub in the city centre .", f"The pub X{i} is in the centre ."],
            }
            for i in range(4)
        ],
    )
    texts = {
        "epoch-1": "X{} is a pub .",
        "epoch-2": "X{} is a pub in the city centre .",
        "epoch-3": "X{} is a pub in the city centre .",
    }
    candidates = [
        (
            name,
            str(
                _write_jsonl(
                    tmp_path / f"{name}.jsonl", [{"id": i, "token_ids": [], "text": t.format(i)} for i in range(4)]
                )
            ),
        )
        for name, t in texts.items()
    ]
    report = model_selection.select("e2e", str(refs), candidates)
    assert report["scores"]["epoch-2"] == pytest.approx(1.0)
    assert report["scores"]["epoch-1"] < 1.0
    assert report["chosen"] == "epoch-2"  # epoch-3 ties it: the earlier one wins
    out = tmp_path / "selection.json"
    assert (
        model_selection.main(
            ["--dataset", "e2e", "--references", str(refs), "--out", str(out), *[f"{n}={p}" for n, p in candidates]]
        )
        == 0
    )
    assert json.loads(out.read_text())["chosen"] == "epoch-2"
    # A prediction file that lacks an input is an error, not a silent partial score.
    short = _write_jsonl(tmp_path / "short.jsonl", [{"id": 0, "token_ids": [], "text": "X0"}])
    assert (
        model_selection.main(["--dataset", "e2e", "--references", str(refs), "--out", str(out), f"epoch-1={short}"])
        == 2
    )


def _fake_seed(folder, seed, bleu, chosen="epoch-2"):
    d = folder / f"seed-{seed}"
    (d / "test").mkdir(parents=True)
    (d / "selection.json").write_text(json.dumps({"scores": {"epoch-1": 0.1, chosen: 0.5}, "chosen": chosen}))
    for proto, shift in (("official", 0.0), ("paper", 0.01)):
        scores = {
            "all": {"BLEU": bleu + shift, "METEOR": 0.4, "TER": 0.5},
            "seen": {"BLEU": bleu + 10, "METEOR": 0.45, "TER": 0.4},
        }
        (d / "test" / f"eval.{proto}.json").write_text(
            json.dumps(
                {
                    "protocol": proto,
                    "metrics": ["BLEU", "METEOR", "TER"],
                    "scores": scores,
                    "counts": {k: {"inputs": 3} for k in scores},
                    "not_computed": {},
                }
            )
        )
    return d


def test_results_table_mean_and_sample_std_over_seeds(tmp_path):
    bleus = [55.0, 56.5, 54.1]
    dirs = [_fake_seed(tmp_path, s, b) for s, b in zip((110, 111, 112), bleus)]
    assert (
        results_table.main(
            ["--dataset", "webnlg", "--model_card", "gpt2.md", "--out_dir", str(tmp_path), *map(str, dirs)]
        )
        == 0
    )
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["seeds"] == ["110", "111", "112"]
    s = result["summary"]["official"]["all"]["BLEU"]
    assert s["mean"] == pytest.approx(statistics.mean(bleus)) and s["std"] == pytest.approx(statistics.stdev(bleus))
    assert result["summary"]["paper"]["all"]["BLEU"]["mean"] == pytest.approx(statistics.mean(bleus) + 0.01)
    assert result["summary"]["official"]["seen"]["BLEU"]["mean"] == pytest.approx(statistics.mean(bleus) + 10)
    assert result["summary"]["official"]["all"]["METEOR"]["std"] == pytest.approx(0.0)
    md = (tmp_path / "results.md").read_text()
    assert f"| all | {statistics.mean(bleus):.2f} ± {statistics.stdev(bleus):.2f} |" in md
    assert "| paper (unseen) | 46.7 |" in md  # the paper's GPT-2 M figures beside the paper protocol
    # A seed folder without its evaluation is an error naming the file.
    (dirs[0] / "test" / "eval.official.json").unlink()
    (dirs[0] / "test" / "eval.paper.json").unlink()
    assert (
        results_table.main(
            ["--dataset", "webnlg", "--model_card", "gpt2.md", "--out_dir", str(tmp_path), *map(str, dirs)]
        )
        == 2
    )


def test_subset_keeps_lines_verbatim_first_or_seeded_sample(tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": i, "x": "é"}, ensure_ascii=False) + "\n" for i in range(20)]
    src.write_text("".join(lines), encoding="utf-8")
    assert subset.main([str(src), str(tmp_path / "a.jsonl"), "--first", "3"]) == 0
    assert (tmp_path / "a.jsonl").read_text(encoding="utf-8") == "".join(lines[:3])
    assert subset.main([str(src), str(tmp_path / "b.jsonl"), "--sample", "5", "--seed", "4"]) == 0
    kept = (tmp_path / "b.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(kept) == 5 and kept == sorted(kept, key=lines.index) and set(kept) <= set(lines)
    assert subset.main([str(src), str(tmp_path / "c.jsonl"), "--sample", "5", "--seed", "4"]) == 0
    assert (tmp_path / "c.jsonl").read_text(encoding="utf-8") == "".join(kept)
    assert subset.main([str(tmp_path / "missing.jsonl"), str(tmp_path / "d.jsonl"), "--first", "1"]) == 2


def test_loss_plot_reads_train_and_valid_records(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    records = [{"kind": "train", "step": s, "loss": 5.0 / s} for s in (1, 2, 3)]
    records += [{"kind": "valid", "step": 3, "loss": 1.5}, {"kind": "event", "step": 3, "message": "end"}]
    (work / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert loss_plot.read_log(str(work)) == {"train": [(1, 5.0), (2, 2.5), (3, 5.0 / 3)], "valid": [(3, 1.5)]}
    assert loss_plot.main(["--out", str(tmp_path / "loss.png"), f"run={work}"]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    (work / "log.jsonl").write_text("")
    assert loss_plot.main(["--out", str(tmp_path / "x.png"), str(work)]) == 2


def test_bench_ratio_table_reads_the_four_reports(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import ratio_table
    finally:
        sys.path.pop(0)
    train = tmp_path / "train.json"
    train.write_text(
        json.dumps(
            {
                "device": "CPU",
                "precision": "fp32",
                "ratios": {"speed vs transformers+PEFT (per step, target >= 1.3)": 1.5},
            }
        )
    )
    beam = tmp_path / "beam.json"
    beam.write_text(
        json.dumps(
            {
                "device": "CPU",
                "precision": "fp32",
                "a": {"speedup": 2.0, "inputs": 8, "identical_outputs": "8/8"},
                "b": {"speedup": 30.0, "ours_total_s": 10.0, "seed_total_s": 300.0, "seed_lines_measured": 2},
            }
        )
    )
    methods = tmp_path / "methods.json"
    methods.write_text(json.dumps({"device": "CPU", "precision": "fp32", "ratios": {"dora vs PEFT": 1.2}}))
    table = ratio_table.rows(str(train), str(beam), str(tmp_path / "missing.json"), str(methods))
    ratios = [r for _, _, r, _ in table]
    assert ratios == [1.5, 2.0, 30.0, None, 1.2]
    text = ratio_table.format_table(table)
    assert "1.50x" in text and "30.00x" in text and "no report" in text


def test_run_sh_method_picks_the_dataset_s_recipe(tmp_path):
    """--method vera on e2e is configs/e2e.vera.yaml (the header says so before the first step)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["e2e", "--method", "vera", "--no_download", "--data_mirror", empty, "--data_dir", tmp_path / "data"]
    r = run_script([REPO / "scripts/run.sh", *args, "--out", tmp_path / "run"], timeout=120)
    assert r.returncode != 0 and "step 'prepare-data' failed" in r.stderr
    header = (tmp_path / "run" / "run.log").read_text().splitlines()[0]
    assert "| method vera |" in header and "config configs/e2e.vera.yaml |" in header


def test_run_sh_tiny_with_a_method_trains_and_decodes_it(prepared, mirror, tmp_path):
    out = tmp_path / "run"
    limits = ["--limit_train", 16, "--limit_valid", 8, "--limit_eval", 2, "--max_epoch", 1, "--max_step", 2]
    args = ["e2e", "--tiny", "--method", "vera", "--vera_r", 8, "--data_dir", prepared, "--data_mirror", mirror]
    r = run_script([REPO / "scripts/run.sh", *args, "--no_download", *limits, "--out", out, "--tensorboard", "false"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _, metadata = adapter(out / "seed-110" / "checkpoints" / "epoch-1")
    assert metadata["method"] == "vera" and metadata["r"] == 8
    assert len((out / "seed-110" / "test" / "predictions.jsonl").read_text().splitlines()) == 2


def test_method_study_quick_measures_every_method_it_runs(prepared, mirror, tmp_path):
    out = tmp_path / "study"
    args = ["--quick", "--methods", "lora adalora", "--data_dir", prepared, "--data_mirror", mirror, "--out", out]
    r = run_script([REPO / "scripts/method_study.sh", *args])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = {row["method"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert list(rows) == ["lora", "adalora"]
    assert rows["lora"]["trainable"] == 4 * 2 * (4 * 128 + 128 * 4)  # r=4 on q, v of gpt2.tiny
    # AdaLoRA on c_attn: A (8, 128), B (384, 8), E (8, 1) per layer, as PEFT builds them
    assert rows["adalora"]["trainable"] == 4 * (8 * 128 + 384 * 8 + 8)
    for row in rows.values():
        assert row["peak_rss_mib"] > 100 and row["ms_per_step"] > 0 and row["dev_bleu"] is not None
        assert json.loads((out / row["method"] / "usage.json").read_text())["returncode"] == 0
    assert (out / "method_study.png").stat().st_size > 1000
    assert "| LoRA r=4 (q, v) | 0.008 | 8,192 |" in (out / "results.md").read_text()


def test_method_study_measure_passes_the_exit_status_on(tmp_path):
    from lora_nlg.pipeline import method_study

    usage = tmp_path / "usage.json"
    assert method_study.main(["measure", str(usage), "--", sys.executable, "-c", "import sys; sys.exit(3)"]) == 3
    assert json.loads(usage.read_text())["returncode"] == 3


def test_method_study_refuses_an_unknown_method(tmp_path):
    r = run_script([REPO / "scripts/method_study.sh", "--methods", "lora adamix", "--out", tmp_path], timeout=60)
    assert r.returncode == 2 and "--methods: unknown method 'adamix'" in r.stderr
