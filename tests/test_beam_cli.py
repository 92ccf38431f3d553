"""gpt2_beam.py end to end on the tiny GPT-2: adapters and their stored alpha, upstream's .pt,
the backbone rule, input formats, the output file, and 2 gloo ranks against 1."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lora_nlg.beam import BeamSettings, beam_search
from lora_nlg.data.tokenizer import GPT2Tokenizer
from lora_nlg.decode.predict import BeamConfig, load_decoding_model, main, merge_repeated_flags, text_of
from lora_nlg.methods import LoRAConfig, adapter_layers, adapter_state_dict, apply_adapter, merge_adapter
from lora_nlg.weights.adapter import apply_adapter_weights, save_adapter
from lora_nlg.weights.backbone import load_pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [
    [5, 17, 33, 2],
    [9, 8, 7, 6, 5, 4, 3],
    [42],
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    [60, 61],
    [77, 3, 77, 3, 77],
    [12, 99, 0, 45, 45, 45],
]
IDS = [6, 0, 3, 1, 5, 2, 4]  # not in file order: the output must come back sorted
FLAGS = [
    "--beam",
    "3",
    "--eval_len",
    "12",
    "--length_penalty",
    "0.8",
    "--no_repeat_ngram_size",
    "3",
    "--eos_token_id",
    "40",
    "--batch_size",
    "3",
]
STORED_ALPHA = 8.0

# Tiny models are many small ops: one thread avoids OpenMP waits (10-100x on a busy machine).
pytestmark = pytest.mark.usefixtures("one_thread")


def _lora_tensors(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in adapter_state_dict(model).values():
            t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return {k: v.clone() for k, v in adapter_state_dict(model).items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory, hf_tiny_dir):
    """An adapter (r=2, alpha=8, naming its backbone), a unique-inputs file, an encoded file."""
    root = tmp_path_factory.mktemp("beam_cli")
    model = apply_adapter(load_pretrained(hf_tiny_dir), LoRAConfig(r=2, alpha=STORED_ALPHA, targets=("q", "v")))
    tensors = _lora_tensors(model)
    save_adapter(root / "ckpt" / "adapter.safetensors", model, {"init_checkpoint": str(hf_tiny_dir), "step": 7})
    save_adapter(root / "orphan.safetensors", model, {"step": 7})  # names no backbone
    seed_keys = {"module." + k: v for k, v in tensors.items()}
    torch.save({"model_state_dict": seed_keys}, root / "seed_lora.pt")
    with open(root / "test_unique.jsonl", "w") as f:
        for i, p in zip(IDS, PROMPTS):
            f.write(json.dumps({"id": i, "context": f"input {i}", "context_ids": p, "references": ["r"]}) + "\n")
    with open(root / "test.jsonl", "w") as f:  # upstream's encoded form: each input once per reference
        for p in [PROMPTS[0], PROMPTS[0], PROMPTS[2], PROMPTS[1], PROMPTS[2], PROMPTS[2]]:
            f.write(json.dumps({"context": p, "completion": [1, 2]}) + "\n")
    return dict(
        root=root,
        backbone=hf_tiny_dir,
        adapter=root / "ckpt",
        tensors=tensors,
        seed=root / "seed_lora.pt",
        orphan=root / "orphan.safetensors",
        unique=root / "test_unique.jsonl",
        encoded=root / "test.jsonl",
    )


def _reference(files, alpha, prompts=PROMPTS):
    """Decode in-process: backbone + LoRA(alpha) merged, the settings FLAGS give."""
    model = apply_adapter(load_pretrained(files["backbone"]), LoRAConfig(r=2, alpha=alpha, targets=("q", "v")))
    apply_adapter_weights(model, files["tensors"])
    merge_adapter(model)
    settings = BeamSettings(beam=3, eval_len=12, length_penalty=0.8, no_repeat_ngram_size=3, stop_ids=(50256, 40))
    return [h.token_ids for h in beam_search(model, prompts, settings)]


def _run(files, tmp_path, *extra, data="unique", name="pred.jsonl"):
    rc = main(["--data", str(files[data]), "--work_dir", str(tmp_path), "--output_file", name, *FLAGS, *extra])
    path = tmp_path / name
    return rc, ([json.loads(line) for line in open(path)] if rc == 0 and path.exists() else None)


def test_adapter_decodes_with_its_stored_config(files, tmp_path):
    rc, out = _run(files, tmp_path, "--init_checkpoint", str(files["adapter"]))
    assert rc == 0
    assert [r["id"] for r in out] == sorted(IDS)
    by_id = {r["id"]: r for r in out}
    want = _reference(files, STORED_ALPHA)
    assert [by_id[i]["token_ids"] for i in IDS] == want
    tok = GPT2Tokenizer.from_dir()
    for r in out:
        assert r["text"] == text_of(tok, r["token_ids"], {50256, 40})
        assert set(r) == {"id", "token_ids", "text"}
    assert (tmp_path / "pred.config.yaml").exists()
    # LoRA matters: the backbone alone decodes differently
    rc, plain = _run(files, tmp_path, "--pretrained_checkpoint", str(files["backbone"]), name="plain.jsonl")
    assert rc == 0 and [r["token_ids"] for r in plain] != [r["token_ids"] for r in out]


def test_alpha_flag_contradicting_the_adapter_is_an_error_unless_forced(files, tmp_path, capsys):
    rc, _ = _run(files, tmp_path, "--init_checkpoint", str(files["adapter"]), "--lora_alpha", "32")
    err = capsys.readouterr().err
    assert rc == 2 and "alpha=8" in err and "--lora_alpha 32" in err and "--force" in err
    assert not (tmp_path / "pred.jsonl").exists()
    rc, out = _run(files, tmp_path, "--init_checkpoint", str(files["adapter"]), "--lora_alpha", "32", "--force")
    err = capsys.readouterr().err
    assert rc == 0 and "warning" in err and "alpha=32" in err
    by_id = {r["id"]: r["token_ids"] for r in out}
    forced = [by_id[i] for i in IDS]
    assert forced == _reference(files, 32.0)
    assert forced != _reference(files, STORED_ALPHA)
    # the same alpha as stored, or a wrong rank
    assert _run(files, tmp_path, "--init_checkpoint", str(files["adapter"]), "--lora_alpha", "8")[0] == 0
    assert _run(files, tmp_path, "--init_checkpoint", str(files["adapter"]), "--lora_dim", "4")[0] == 2
    assert "r=2" in capsys.readouterr().err


def test_lora_is_merged_into_the_weights_before_decoding(files):
    """Decoding costs what the plain model costs: every LoRA layer is merged (the output alone
    cannot tell, merged and unmerged models decode the same), and the merged weight is W + scaling B A."""
    cfg = BeamConfig(data="x", init_checkpoint=str(files["adapter"]))
    model = load_decoding_model(cfg, torch.device("cpu"))
    layers = adapter_layers(model)
    assert layers and all(m.merged for _, m in layers)
    plain = load_pretrained(files["backbone"])
    name, layer = layers[0]
    base = dict(plain.named_modules())[name].weight
    delta = layer.delta_weight()
    assert delta.abs().max() > 1e-3
    assert torch.allclose(layer.base_layer.weight, base + delta, atol=1e-6)


def test_seed_pt_needs_r_and_alpha(files, tmp_path, capsys):
    base = ["--init_checkpoint", str(files["seed"]), "--pretrained_checkpoint", str(files["backbone"])]
    rc, _ = _run(files, tmp_path, *base, "--lora_dim", "2")
    assert rc == 2 and "--lora_alpha" in capsys.readouterr().err
    rc, out = _run(files, tmp_path, *base, "--lora_dim", "2", "--lora_alpha", "8")
    assert rc == 0
    by_id = {r["id"]: r["token_ids"] for r in out}
    assert [by_id[i] for i in IDS] == _reference(files, STORED_ALPHA)
    rc, _ = _run(files, tmp_path, *base, "--lora_dim", "3", "--lora_alpha", "8")
    assert rc == 2 and "r=2" in capsys.readouterr().err


def test_no_silent_random_backbone(files, tmp_path, capsys):
    rc, _ = _run(files, tmp_path, "--init_checkpoint", str(files["seed"]), "--lora_dim", "2", "--lora_alpha", "8")
    assert rc == 2 and "--pretrained_checkpoint" in capsys.readouterr().err
    rc, _ = _run(files, tmp_path, "--init_checkpoint", str(files["orphan"]))
    assert rc == 2 and "no backbone" in capsys.readouterr().err
    rc, out = _run(files, tmp_path, "--init_checkpoint", str(files["orphan"]), "--random_backbone")
    assert rc == 0 and len(out) == len(PROMPTS) and "--random_backbone" in capsys.readouterr().err
    rc, out = _run(
        files, tmp_path, "--init_checkpoint", str(files["orphan"]), "--pretrained_checkpoint", str(files["backbone"])
    )
    by_id = {r["id"]: r["token_ids"] for r in out}
    assert rc == 0 and [by_id[i] for i in IDS] == _reference(files, STORED_ALPHA)


def test_encoded_input_one_line_per_pair_each_prompt_decoded_once(files, tmp_path, monkeypatch):
    import lora_nlg.decode.predict as predict

    decoded = []
    real = predict.beam_search
    monkeypatch.setattr(
        predict, "beam_search", lambda m, prompts, *a, **k: decoded.extend(prompts) or real(m, prompts, *a, **k)
    )
    rc, out = _run(files, tmp_path, "--init_checkpoint", str(files["adapter"]), data="encoded")
    assert rc == 0
    assert [r["id"] for r in out] == list(range(6))
    assert sorted(map(tuple, decoded)) == sorted(map(tuple, [PROMPTS[0], PROMPTS[1], PROMPTS[2]]))
    want = dict(zip(map(tuple, PROMPTS[:3]), _reference(files, STORED_ALPHA, PROMPTS[:3])))
    lines = [PROMPTS[0], PROMPTS[0], PROMPTS[2], PROMPTS[1], PROMPTS[2], PROMPTS[2]]
    assert [r["token_ids"] for r in out] == [want[tuple(p)] for p in lines]


def test_seq_len_keeps_the_last_tokens_of_a_long_prompt(files, tmp_path):
    # seq_len - eval_len = 3: every prompt keeps its last 3 tokens, as upstream's query does
    rc, out = _run(files, tmp_path, "--init_checkpoint", str(files["adapter"]), "--seq_len", "15")
    assert rc == 0
    by_id = {r["id"]: r["token_ids"] for r in out}
    assert [by_id[i] for i in IDS] == _reference(files, STORED_ALPHA, [p[-3:] for p in PROMPTS])


def test_eos_token_id_appends_to_50256_and_repeats():
    argv = merge_repeated_flags(["--data", "x", "--eos_token_id", "628", "--beam", "2", "--eos_token_id=198"])
    assert argv == ["--data", "x", "--beam", "2", "--eos_token_id", "628", "198"]
    from lora_nlg.cli import parse_config

    cfg = parse_config(BeamConfig, argv)
    assert cfg.settings().stop_ids == (50256, 628, 198)
    assert BeamConfig(data="x").settings().stop_ids == (50256,)


def test_text_is_cut_at_the_stop_token_and_the_first_blank_line():
    tok = GPT2Tokenizer.from_dir()
    ids = tok.encode(" The Eagle is a pub.\n\nIt is cheap.")
    assert text_of(tok, ids, {50256}) == "The Eagle is a pub."
    stop = tok.encode(" pub")[0]
    assert text_of(tok, ids, {50256, stop}) == "The Eagle is a"
    assert text_of(tok, tok.encode(" A") + [50256] + tok.encode(" B"), {50256}) == "A"


def test_two_gloo_ranks_write_what_one_rank_writes(files, tmp_path):
    args = [
        "--data",
        str(files["unique"]),
        "--init_checkpoint",
        str(files["adapter"]),
        *FLAGS,
        "--batch_size",
        "2",
        "--device",
        "cpu",
    ]
    one = tmp_path / "one"
    assert main([*args, "--work_dir", str(one), "--output_file", "p.jsonl"]) == 0
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            os.path.join(REPO, "src", "gpt2_beam.py"),
            *args,
            "--work_dir",
            str(two),
            "--output_file",
            "p.jsonl",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (two / "p.jsonl").read_text() == (one / "p.jsonl").read_text()
    assert "2 rank(s)" in proc.stderr
