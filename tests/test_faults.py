"""Every entry point against every kind of bad file: one line naming the file, a non-zero exit
status, no traceback, nothing written (issue: hardening, rule 4 and rule 6).

The programs run in-process (their ``main(argv)``): an exception that escapes would fail the test
as the traceback a user would have seen.
"""

import json
import os

import pytest

from lora_nlg.data.prepare import encode_main
from lora_nlg.decode.predict import main as beam_main
from lora_nlg.decode.scorer_files import main as decode_main
from lora_nlg.methods import LoRAConfig, apply_adapter
from lora_nlg.metrics.evaluate import main as eval_main
from lora_nlg.train.loop import main as train_main
from lora_nlg.weights.adapter import save_adapter
from lora_nlg.weights.backbone import load_pretrained
from lora_nlg.weights.convert import main as export_main

pytestmark = pytest.mark.usefixtures("one_thread")

ENCODED = '{"context": [1, 2, 3, 100], "completion": [4, 5, 6, 100]}'  # the tiny backbone has 101 tokens
UNIQUE = '{"id": 0, "context": "a : b", "context_ids": [1, 2, 3], "references": ["x y z"]}'
PREDICTIONS = '{"id": 0, "token_ids": [7], "text": "x y"}'
FORMATTED = '{"context": "a : b", "completion": "x y z"}'

# format -> kind -> file content (bytes); None: the kind makes no sense for the format.
BAD = {
    "encoded": {
        "malformed JSON": ENCODED + '\n{"context": [1, 2',
        "missing field": ENCODED + '\n{"context": [1, 2]}',
        "wrong type": ENCODED + '\n{"context": "1 2", "completion": [3]}',
        "out-of-range id": ENCODED + '\n{"context": [1, 2], "completion": [99999, 3]}',
    },
    "unique": {
        "malformed JSON": UNIQUE + '\n{"id": 1, "context": "c", "context_ids": [1,',
        "missing field": '{"id": 0, "context": "a", "references": ["x"]}',
        "wrong type": '{"id": [0], "context": "a", "context_ids": [1], "references": ["x"]}',
        "out-of-range id": '{"id": 0, "context": "a", "context_ids": [1, 99999], "references": ["x"]}',
    },
    "references": {
        "malformed JSON": UNIQUE + "\n{",
        "missing field": '{"id": 0, "context": "a"}',
        "wrong type": '{"id": 0, "context": "a", "references": "x y z"}',
        "empty reference": '{"id": 0, "context": "a", "references": [""]}',
    },
    "predictions": {
        "malformed JSON": PREDICTIONS + '\n{"id": 1, "text": ',
        "missing field": '{"id": 0, "token_ids": [7]}',
        "wrong type": '{"id": [0], "token_ids": [7], "text": "x"}',
    },
    "formatted": {
        "malformed JSON": FORMATTED + '\n{"context": "a", ',
        "missing field": '{"context": "a"}',
        "wrong type": '{"context": 3, "completion": "x"}',
    },
    "yaml": {
        "malformed YAML": "lr: [0.1, 0.2\nmax_step: 3\n",
        "wrong type": "lr: fast\n",
        "unknown key": "learning_rate: 0.1\n",
    },
}
COMMON = {"non-UTF-8": b'{"context": "\xff\xfe"}\n', "empty": b"", "folder": None, "missing": None}
NO_EMPTY = {"yaml", "references"}  # an empty config is no config; an empty file of references is tested below


def kinds(fmt):
    out = list(BAD[fmt])
    out += [k for k in COMMON if not (k == "empty" and fmt in NO_EMPTY)]
    return out


def write_bad(tmp_path, fmt, kind, name):
    path = tmp_path / name
    if kind == "folder":
        path.mkdir()
    elif kind == "missing":
        pass
    else:
        content = COMMON[kind] if kind in COMMON else BAD[fmt][kind]
        path.write_bytes(content if isinstance(content, bytes) else (content + "\n").encode())
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory, hf_tiny_dir):
    """Good inputs for every slot: data, an adapter on the tiny backbone, predictions."""
    root = tmp_path_factory.mktemp("good")
    (root / "train.jsonl").write_text("\n".join([ENCODED] * 8) + "\n")
    (root / "unique.jsonl").write_text(UNIQUE + "\n")
    (root / "pred.jsonl").write_text(PREDICTIONS + "\n")
    (root / "formatted.jsonl").write_text(FORMATTED + "\n")
    model = apply_adapter(load_pretrained(hf_tiny_dir), LoRAConfig(r=2, alpha=4.0))
    save_adapter(root / "adapter.safetensors", model, {"init_checkpoint": str(hf_tiny_dir)})
    return root


def _train(good, backbone, out, **slots):
    args = {"--train_data": good / "train.jsonl", "--init_checkpoint": backbone, **slots}
    argv = [str(a) for kv in args.items() for a in kv]
    return train_main(
        [
            *argv,
            "--model_card",
            "gpt2.tiny",
            "--seq_len",
            "32",
            "--max_step",
            "2",
            "--device",
            "cpu",
            "--tensorboard",
            "false",
            "--lr",
            "0.001",
            "--work_dir",
            str(out / "run"),
        ]
    )


# slot -> (format, run(good, backbone, out, bad_path) -> exit status)
ENTRY_POINTS = {
    "gpt2_ft --train_data": ("encoded", lambda g, b, o, p: _train(g, b, o, **{"--train_data": p})),
    "gpt2_ft --valid_data": ("encoded", lambda g, b, o, p: _train(g, b, o, **{"--valid_data": p})),
    "gpt2_ft --config": ("yaml", lambda g, b, o, p: _train(g, b, o, **{"--config": p})),
    "gpt2_beam --data": (
        "unique",
        lambda g, b, o, p: beam_main(
            [
                "--data",
                str(p),
                "--init_checkpoint",
                str(g / "adapter.safetensors"),
                "--eval_len",
                "4",
                "--work_dir",
                str(o),
                "--output_file",
                "pred.jsonl",
            ]
        ),
    ),
    "gpt2_beam --config": (
        "yaml",
        lambda g, b, o, p: beam_main(
            [
                "--config",
                str(p),
                "--data",
                str(g / "unique.jsonl"),
                "--init_checkpoint",
                str(g / "adapter.safetensors"),
                "--work_dir",
                str(o),
            ]
        ),
    ),
    "gpt2_decode --sample_file": (
        "predictions",
        lambda g, b, o, p: decode_main(
            [
                "--sample_file",
                str(p),
                "--input_file",
                str(g / "unique.jsonl"),
                "--output_ref_file",
                str(o / "ref.txt"),
                "--output_pred_file",
                str(o / "hyp.txt"),
            ]
        ),
    ),
    "gpt2_decode --input_file": (
        "references",
        lambda g, b, o, p: decode_main(
            [
                "--sample_file",
                str(g / "pred.jsonl"),
                "--input_file",
                str(p),
                "--output_ref_file",
                str(o / "ref.txt"),
                "--output_pred_file",
                str(o / "hyp.txt"),
            ]
        ),
    ),
    "gpt2_encode --input": (
        "formatted",
        lambda g, b, o, p: encode_main(["--input", str(p), "--output", str(o / "enc.jsonl"), "--add_bos", "--add_eos"]),
    ),
    "eval.sh PREDICTIONS": (
        "predictions",
        lambda g, b, o, p: eval_main(["e2e", str(p), str(g / "unique.jsonl"), "--json", str(o / "report.json")]),
    ),
    "eval.sh REFERENCES": (
        "references",
        lambda g, b, o, p: eval_main(["e2e", str(g / "pred.jsonl"), str(p), "--json", str(o / "report.json")]),
    ),
}
# "out-of-range id" only means something where the ids meet a model.
CASES = [
    (slot, kind)
    for slot, (fmt, _) in ENTRY_POINTS.items()
    for kind in kinds(fmt)
    if kind != "out-of-range id" or slot.startswith(("gpt2_ft", "gpt2_beam --data"))
]


def _leftovers(out):
    """Everything written under ``out`` but an empty work-dir lock."""
    found = []
    for folder, _, names in os.walk(out):
        for name in names:
            path = os.path.join(folder, name)
            if not (name == ".lock" and os.path.getsize(path) == 0):
                found.append(os.path.relpath(path, out))
    return found


@pytest.mark.parametrize("slot, kind", CASES, ids=[f"{s} {k}" for s, k in CASES])
def test_a_bad_file_gets_one_line_and_leaves_nothing(slot, kind, good, hf_tiny_dir, tmp_path, capsys):
    fmt, run = ENTRY_POINTS[slot]
    bad = write_bad(tmp_path, fmt, kind, "bad.yaml" if fmt == "yaml" else "bad.jsonl")
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    code = run(good, hf_tiny_dir, out, bad)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code != 0, err
    assert "Traceback" not in err, err
    assert len(errors) == 1 and str(bad) in errors[0], err
    if kind in BAD.get(fmt, {}) and kind not in ("wrong type", "unknown key"):
        assert f"{bad}:" in errors[0], err  # file:line (or file:line:column)
    assert _leftovers(out) == [], err


def test_bad_adapter_files(good, tmp_path, capsys):
    """Adapters: a damaged safetensors file, lying or broken metadata, a folder without one."""
    import safetensors.torch

    tensors, header = safetensors.torch.load_file(good / "adapter.safetensors"), None
    from safetensors import safe_open

    with safe_open(good / "adapter.safetensors", "pt") as f:
        header = json.loads(f.metadata()["lora_nlg"])
    cases = {
        "truncated.safetensors": (good / "adapter.safetensors").read_bytes()[:200],
        "alpha.safetensors": {**header, "alpha": "abc"},
        "nan.safetensors": {**header, "alpha": float("nan"), "scaling": float("nan")},
        "list.safetensors": [1, 2],
        "claims.safetensors": {
            **header,
            "model_config": {**header["model_config"], "n_layer": 200, "n_embd": 2_000_000},
        },
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            safetensors.torch.save_file(tensors, path, metadata={"lora_nlg": json.dumps(content)})
        for argv, run in (
            (["export", "peft", str(path), str(tmp_path / "peft")], export_main),
            (
                [
                    "--data",
                    str(good / "unique.jsonl"),
                    "--init_checkpoint",
                    str(path),
                    "--random_backbone",
                    "--work_dir",
                    str(tmp_path / "beam"),
                ],
                beam_main,
            ),
        ):
            capsys.readouterr()
            code = run(argv)
            err = capsys.readouterr().err
            assert code != 0 and "Traceback" not in err and str(path) in err, (name, err)
            assert not (tmp_path / "peft").exists() and not (tmp_path / "beam").exists(), name
    for argv in (
        ["export", "peft", str(tmp_path / "none"), str(tmp_path / "peft")],
        ["export", "merged", str(tmp_path / "none.safetensors"), str(tmp_path / "m")],
    ):
        assert export_main(argv) == 1
        assert "no such file" in capsys.readouterr().err


def test_bad_flag_values_and_backbones_get_one_line(good, hf_tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty_backbone"
    empty.mkdir()
    for slots, expected in (
        ({"--lr": "nan"}, "--lr"),
        ({"--lr": "-1"}, "--lr"),
        ({"--lr": "1e38"}, "--lr"),
        ({"--init_checkpoint": tmp_path / "nowhere"}, "no such file"),
        ({"--init_checkpoint": empty}, "no weights"),
        ({"--seq_len": "3"}, "no loss token"),
    ):
        capsys.readouterr()
        args = {"--train_data": good / "train.jsonl", "--init_checkpoint": hf_tiny_dir, **slots}
        argv = [str(a) for kv in args.items() for a in kv]
        code = train_main(
            [
                *argv,
                "--model_card",
                "gpt2.tiny",
                "--max_step",
                "2",
                "--device",
                "cpu",
                "--tensorboard",
                "false",
                "--work_dir",
                str(out),
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and expected in err, (slots, err)
        assert _leftovers(out) == [], slots


def test_a_folder_where_an_output_goes_is_refused_first(good, tmp_path, capsys):
    for name, run in (
        (
            "report.json",
            lambda o: eval_main(["e2e", str(good / "pred.jsonl"), str(good / "unique.jsonl"), "--json", str(o)]),
        ),
        ("enc.jsonl", lambda o: encode_main(["--input", str(good / "formatted.jsonl"), "--output", str(o)])),
    ):
        out = tmp_path / name
        out.mkdir()
        capsys.readouterr()
        assert run(out) != 0
        err = capsys.readouterr().err
        assert "Traceback" not in err and str(out) in err and "a folder" in err, err
        assert os.listdir(out) == [] and [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_a_peft_config_with_a_non_numeric_alpha_is_one_line(good, tmp_path, capsys):
    assert export_main(["export", "peft", str(good / "adapter.safetensors"), str(tmp_path / "peft")]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": "abc"}))
    capsys.readouterr()
    assert export_main(["import", "peft", str(tmp_path / "peft"), str(tmp_path / "back.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "adapter_config.json" in err and "'abc'" in err, err
    assert not (tmp_path / "back.safetensors").exists()
