"""No run is lost, no wrong result is silent: work-dir locks, --overwrite, resume from damaged
checkpoints, runs and decodings that would mean nothing, outputs that come in pairs, and the
small decisions on odd raw files. (Bad files at every entry point: test_faults.py.)
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file
from training import GPT2_FT, REPO, records, run, subprocess_env, tiny_args

from lora_nlg.data import raw
from lora_nlg.data.prepare import encode_main
from lora_nlg.decode.predict import main as beam_main
from lora_nlg.decode.scorer_files import main as decode_main
from lora_nlg.errors import FormatError
from lora_nlg.jsonl import parse_json_lines
from lora_nlg.methods import LoRAConfig, apply_adapter
from lora_nlg.train.loop import main
from lora_nlg.weights.adapter import load_adapter, save_adapter
from lora_nlg.weights.backbone import load_pretrained, save_pretrained
from lora_nlg.weights.convert import main as export_main

pytestmark = pytest.mark.usefixtures("one_thread")


def _checkpoints(work):
    return sorted(os.listdir(work / "checkpoints"))


@pytest.fixture(scope="module")
def finished(e2e_data, tmp_path_factory):
    """A finished 6-step run with checkpoints at steps 2, 4, 6 (and last = step-6)."""
    work = tmp_path_factory.mktemp("finished") / "run"
    assert main(tiny_args(e2e_data, work, "--max_step", "6", "--save_interval", "2")) == 0
    return work


def _copy(src, dst):
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


# ------------------------------------------------------------------------- D1: --overwrite


def test_overwrite_keeps_the_old_run_until_the_new_one_is_built(finished, e2e_data, tmp_path, capsys):
    work = _copy(finished, tmp_path / "run")
    before = {
        p: (work / p).read_bytes() for p in ("log.jsonl", "checkpoints/last", "checkpoints/step-6/adapter.safetensors")
    }
    for bad in (["--train_data", str(tmp_path / "typo.jsonl")], ["--init_checkpoint", str(tmp_path / "none")]):
        assert main(tiny_args(e2e_data, work, "--max_step", "6", "--overwrite", *bad)) == 2
        assert "Traceback" not in capsys.readouterr().err
        assert {p: (work / p).read_bytes() for p in before} == before  # nothing of value destroyed
    assert main(tiny_args(e2e_data, work, "--max_step", "2", "--overwrite")) == 0  # a good one replaces it
    assert _checkpoints(work) == ["last", "step-2"] and [r["step"] for r in records(work, "train")] == [1, 2]


# ------------------------------------------------------------------------- D2: one writer


def _wait_for(condition, proc, seconds=180):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.05)
    return condition()


def test_a_second_trainer_on_a_held_work_dir_stops_and_names_the_holder(e2e_data, tmp_path):
    work = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, GPT2_FT, *tiny_args(e2e_data, work, "--max_step", "400")],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert _wait_for(lambda: (work / "log.jsonl").exists(), first), first.stderr.read()[-2000:]
        second = run(
            [sys.executable, GPT2_FT, *tiny_args(e2e_data, work, "--max_step", "400", "--resume")], timeout=120
        )
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is in use by pid {first.pid} on " in second.stderr and "started" in second.stderr, second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(e2e_data, tmp_path, capsys):
    work = tmp_path / "run"
    work.mkdir()
    (work / ".lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "yesterday"}))
    assert main(tiny_args(e2e_data, work, "--max_step", "1")) == 0
    err = capsys.readouterr().err
    assert "took over the work dir lock of pid 999999 on elsewhere (started yesterday)" in err, err
    assert (work / ".lock").read_text() == ""  # released at the end


def _lock_is_free(path):
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def test_workers_stop_with_a_checkpoint_when_torchrun_is_killed_with_its_group(e2e_data, tmp_path):
    """kill -9 -- -PGID of torchrun leaves its workers (own sessions) running: they notice that their
    launcher is gone, save a checkpoint and stop; the run then resumes."""
    work = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", GPT2_FT]
    args = tiny_args(e2e_data, work, "--train_batch_size", "4", "--scheduler", "constant")
    proc = subprocess.Popen(
        [*torchrun, *args, "--max_step", "2000"],
        env=subprocess_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = work / "log.jsonl"
    assert _wait_for(lambda: log.exists() and '"step": 2,' in log.read_text(), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 120
    while time.time() < deadline and not _lock_is_free(work / ".lock"):
        time.sleep(0.2)
    assert _lock_is_free(work / ".lock"), "the workers kept training after their launcher was killed"
    events = [r.get("message", "") for r in records(work, "event")]
    assert any("stopped by the end of its launcher" in m for m in events), events
    name = (work / "checkpoints" / "last").read_text().strip()
    step = int(name.split("-")[1])
    resumed = run([*torchrun, *args, "--max_step", str(step + 1), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (work / "checkpoints" / "last").read_text().strip() == f"step-{step + 1}"


# ------------------------------------------------------------------------- D3, D17: resume


@pytest.mark.parametrize("damage", ["folder removed", "trainer_state.pt truncated", "adapter.safetensors truncated"])
def test_resume_falls_back_to_the_newest_complete_checkpoint(finished, e2e_data, tmp_path, capsys, damage):
    work = _copy(finished, tmp_path / "run")
    step6 = work / "checkpoints" / "step-6"
    if damage == "folder removed":
        subprocess.run(["rm", "-r", str(step6)], check=True)
    else:
        path = step6 / damage.split()[0]
        path.write_bytes(path.read_bytes()[:100])
    (work / "checkpoints" / ".last.x1y2.tmp").write_text("step-")  # a kill during the pointer's write
    capsys.readouterr()
    assert (
        main(
            tiny_args(
                e2e_data, work, "--max_step", "6", "--save_interval", "2", "--resume", "--resume_fallback", "false"
            )
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(step6) in err, err
    assert main(tiny_args(e2e_data, work, "--max_step", "6", "--save_interval", "2", "--resume")) == 0
    captured = capsys.readouterr()
    assert f"resuming from {work / 'checkpoints' / 'step-4'}, not from the newer" in captured.err, captured.err
    assert str(step6) in captured.err
    assert f"resumed from {work / 'checkpoints' / 'step-4'} at step 4" in captured.out
    assert (work / "checkpoints" / "last").read_text().strip() == "step-6"
    assert load_adapter(step6 / "adapter.safetensors")[1]["step"] == 6
    assert not (work / "checkpoints" / ".last.x1y2.tmp").exists()


def test_resume_refuses_another_global_batch_in_one_line(finished, e2e_data, tmp_path, capsys):
    work = _copy(finished, tmp_path / "run")
    assert main(tiny_args(e2e_data, work, "--max_step", "8", "--resume", "--train_batch_size", "4")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot resume" in err and "global batch" in err, err


# ------------------------------------------------------------------------- D4, D5: results that mean nothing


def test_an_empty_validation_set_is_an_error_not_a_best_checkpoint(e2e_data, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = tiny_args(e2e_data, tmp_path / "run", "--max_step", "2")
    args[args.index("--valid_data") + 1] = str(empty)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{empty}: no examples" in err and not (tmp_path / "run" / "checkpoints").exists()


def test_a_seq_len_shorter_than_every_context_is_an_error(e2e_data, tmp_path, capsys):
    assert main(tiny_args(e2e_data, tmp_path / "run", "--max_step", "2", "--seq_len", "8")) == 2
    assert "leaves no loss token in any of its 256 examples" in capsys.readouterr().err


def test_second_signal_stops_at_once_in_one_line(e2e_data, tmp_path):
    """The first SIGTERM asks for a checkpoint after the step; the second, while a slow validation
    runs (every step, batch 1), stops at once: one line, no KeyboardInterrupt traceback."""
    work = tmp_path / "run"
    args = tiny_args(e2e_data, work, "--max_step", "400", "--eval_interval", "1", "--valid_batch_size", "1")
    proc = subprocess.Popen(
        [sys.executable, GPT2_FT, *args],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert _wait_for(lambda: (work / "log.jsonl").exists() and '"step": 1,' in (work / "log.jsonl").read_text(), proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert "stopped at once by a second signal" in err


# ------------------------------------------------------------------------- D9, D10, D11: decoding


@pytest.fixture()
def tiny_adapter(hf_tiny_dir, tmp_path):
    model = apply_adapter(load_pretrained(hf_tiny_dir), LoRAConfig(r=2, alpha=4.0))
    path = tmp_path / "adapter.safetensors"
    save_adapter(path, model, {"init_checkpoint": str(hf_tiny_dir)})
    data = tmp_path / "unique.jsonl"
    data.write_text(json.dumps({"id": 0, "context": "a", "context_ids": [5, 6, 7], "references": ["x"]}) + "\n")
    return model, path, data


def _decode(data, ckpt, out, *extra):
    return beam_main(
        ["--data", str(data), "--init_checkpoint", str(ckpt), "--eval_len", "4", "--work_dir", str(out), *extra]
    )


def test_decoding_refuses_non_finite_weights_and_scales(tiny_adapter, hf_tiny_dir, tmp_path, capsys):
    model, path, data = tiny_adapter
    tensors, meta = load_adapter(path)
    nan_lora = {k: v.clone() for k, v in tensors.items()}
    next(iter(nan_lora.values()))[0, 0] = float("nan")
    save_file(nan_lora, tmp_path / "nan_lora.safetensors", metadata={"lora_nlg": json.dumps(meta)})
    save_file(
        tensors,
        tmp_path / "nan_alpha.safetensors",
        metadata={"lora_nlg": json.dumps({**meta, "alpha": float("nan"), "scaling": float("nan")})},
    )
    backbone = load_pretrained(hf_tiny_dir)
    with torch.no_grad():
        backbone.transformer.h[1].mlp.c_fc.weight[3, 3] = float("nan")
    save_pretrained(backbone, tmp_path / "nan_backbone")
    for ckpt, extra, where in (
        (tmp_path / "nan_lora.safetensors", [], "nan_lora.safetensors"),
        (tmp_path / "nan_alpha.safetensors", [], "nan_alpha.safetensors"),
        (path, ["--pretrained_checkpoint", str(tmp_path / "nan_backbone")], "nan_backbone"),
        (path, ["--lora_alpha", "inf", "--force"], "--lora_alpha"),
    ):
        capsys.readouterr()
        assert _decode(data, ckpt, tmp_path / "out", *extra) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and where in err and ("non-finite" in err or "nan" in err or "inf" in err), err
        assert not (tmp_path / "out").exists()


def test_a_header_that_claims_a_huge_model_allocates_nothing(tiny_adapter, tmp_path):
    """Metadata saying n_layer 200, n_embd 2,000,000 over a 4-layer adapter: refused from the
    tensors' shapes, under a 3 GB address-space limit that the claim (~25 GB) would break."""
    _, path, data = tiny_adapter
    tensors, meta = load_adapter(path)
    lie = {**meta, "model_config": {**meta["model_config"], "n_layer": 200, "n_embd": 2_000_000, "n_head": 1}}
    liar = tmp_path / "liar.safetensors"
    save_file(tensors, liar, metadata={"lora_nlg": json.dumps(lie)})
    limit = "import resource, sys, runpy; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
    for argv in (
        ["src/lora_export.py", "export", "peft", str(liar), str(tmp_path / "p")],
        ["src/lora_export.py", "export", "merged", str(liar), str(tmp_path / "m")],
        [
            "src/gpt2_beam.py",
            "--data",
            str(data),
            "--init_checkpoint",
            str(liar),
            "--random_backbone",
            "--work_dir",
            str(tmp_path / "b"),
        ],
    ):
        code = limit + f"sys.argv = {argv!r}; runpy.run_path({argv[0]!r}, run_name='__main__')"
        r = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120
        )
        assert r.returncode != 0 and "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr[-2000:]
        assert str(liar) in r.stderr and "do not fit its description" in r.stderr, r.stderr[-2000:]


def test_decoding_refuses_prompt_ids_outside_the_vocabulary(tiny_adapter, tmp_path, capsys):
    _, path, data = tiny_adapter
    data.write_text(json.dumps({"id": 3, "context": "a", "context_ids": [5, 101], "references": ["x"]}) + "\n")
    assert _decode(data, path, tmp_path / "out") == 2
    assert f"{data}: input 3: token id 101" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_output_paths_are_checked_first_and_taken_as_written(tiny_adapter, tmp_path, monkeypatch, capsys):
    """D16: a/sub/../../x.jsonl with a/sub not there yet is ./x.jsonl; a folder where the output goes
    is an error before any decoding."""
    _, path, data = tiny_adapter
    monkeypatch.chdir(tmp_path)
    assert _decode(data, path, "a/sub", "--output_file", "../../x.jsonl") == 0
    assert (tmp_path / "x.jsonl").is_file() and (tmp_path / "x.config.yaml").is_file()
    (tmp_path / "busy.jsonl").mkdir()
    calls = []
    import lora_nlg.decode.predict as predict

    monkeypatch.setattr(predict, "beam_search", lambda *a, **k: calls.append(1))
    assert _decode(data, path, tmp_path, "--output_file", "busy.jsonl") == 2
    assert "busy.jsonl" in capsys.readouterr().err and calls == []


# ------------------------------------------------------------------------- D15: outputs in pairs


def test_scorer_files_are_written_together_or_not_at_all(tmp_path, capsys):
    refs = tmp_path / "unique.jsonl"
    refs.write_text(json.dumps({"id": 0, "context": "a", "references": ["x y"]}) + "\n")
    preds = tmp_path / "pred.jsonl"
    preds.write_text(json.dumps({"id": 0, "token_ids": [], "text": "x"}) + "\n")
    (tmp_path / "hyp").mkdir()
    argv = [
        "--sample_file",
        str(preds),
        "--input_file",
        str(refs),
        "--output_ref_file",
        str(tmp_path / "ref.txt"),
        "--output_pred_file",
        str(tmp_path / "hyp"),
    ]
    assert decode_main(argv) == 2
    assert "hyp" in capsys.readouterr().err and not (tmp_path / "ref.txt").exists()
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []
    formatted = tmp_path / "f.jsonl"
    formatted.write_text(json.dumps({"context": "a", "completion": "x"}) + "\n")
    groups = tmp_path / "groups.txt"
    groups.write_text("0\nzero\n")
    argv = [
        "--sample_file",
        str(preds),
        "--input_file",
        str(formatted),
        "--ref_unique_file",
        str(groups),
        "--output_ref_file",
        str(tmp_path / "r.txt"),
        "--output_pred_file",
        str(tmp_path / "h.txt"),
    ]
    assert decode_main(argv) == 2
    assert f"{groups}:2: expected an integer, got 'zero'" in capsys.readouterr().err


# ------------------------------------------------------------------------- D14 and odd raw files


def test_jsonl_errors_give_the_column_of_the_line():
    with pytest.raises(FormatError) as e:
        list(parse_json_lines(['{"a": 1}\n', '{"context": [1], "completion": \n'], "f.jsonl"))
    assert str(e.value) == "f.jsonl:2: malformed JSON (Expecting value at column 32)"
    with pytest.raises(FormatError) as e:
        list(parse_json_lines(['{"a": "open\n'], "f.jsonl"))
    assert str(e.value) == "f.jsonl:1: malformed JSON (Unterminated string starting at column 7)"


def test_a_webnlg_entry_without_a_good_lexicalisation_is_dropped_and_listed(tmp_path):
    xml = tmp_path / "t.xml"
    entry = (
        '<entry category="Food" eid="Id{}" size="1"><modifiedtripleset><mtriple>A | p | B</mtriple>'
        "</modifiedtripleset>{}</entry>"
    )
    xml.write_text(
        "<benchmark><entries>"
        + entry.format(1, '<lex comment="good" lid="Id1">A p B.</lex>')
        + entry.format(2, '<lex comment="bad" lid="Id1">no.</lex>')
        + "</entries></benchmark>"
    )
    pairs = raw.read_webnlg_xml(xml)
    assert [p.completion for p in pairs] == ["A p B."]
    assert pairs.dropped == [f"{xml} entry Id2 (no lexicalisation with comment 'good')"]


def test_an_unterminated_quote_in_the_last_csv_row_is_an_error(tmp_path):
    csv = tmp_path / "e2e.csv"
    csv.write_text('mr,ref\n"name[A]","A is a pub."\n"name[B]","B is\n')
    with pytest.raises(FormatError, match=r"e2e\.csv:3: malformed CSV"):
        raw.read_e2e_csv(csv)


def test_encoding_an_empty_file_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty_formatted.jsonl"
    empty.write_text("")
    assert encode_main(["--input", str(empty), "--output", str(tmp_path / "out.jsonl")]) == 1
    assert f"{empty}: no lines to encode" in capsys.readouterr().err and not (tmp_path / "out.jsonl").exists()


def test_lora_export_names_a_missing_path(tmp_path, capsys):
    assert export_main(["export", "peft", str(tmp_path / "run" / "checkpoints" / "epoch-9"), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "no such file" in err and "unknown checkpoint type" not in err


def test_debug_shows_the_traceback(tmp_path):
    r = run(
        [
            sys.executable,
            GPT2_FT,
            "--train_data",
            str(tmp_path / "none.jsonl"),
            "--max_step",
            "1",
            "--debug",
            "--work_dir",
            str(tmp_path / "w"),
        ],
        timeout=120,
    )
    assert r.returncode != 0 and "Traceback" in r.stderr and "no such file" in r.stderr


def test_files_locate_counts_records_not_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    from lora_nlg.data.files import locate

    assert locate(path, 1) == 3
