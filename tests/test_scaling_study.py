"""The alpha/r study in its reduced quick mode: the whole pipeline (raw E2E from the mirror ->
compact-vocabulary data -> tiny backbone pretrained with gpt2_ft -> LoRA runs under both rules ->
table, JSON, PNG) on a few examples. The numbers mean nothing at this size; what is checked is
that the scaling rule reaches training and that the recorded norms are the adapters' own."""

import json

import pytest

from lora_nlg.pipeline import scaling_study
from lora_nlg.weights import layout as ts
from lora_nlg.weights.adapter import read_adapter, update_norms


def test_quick_study_runs_and_records_what_it_trained(tmp_path):
    out = tmp_path / "study"
    assert scaling_study.main(["--quick", "--out_dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    runs = {(x["rule"], x["r"]): x for x in results["runs"]}
    assert sorted(runs) == [("alpha/r", 1), ("alpha/r", 8), ("alpha/sqrt(r)", 1), ("alpha/sqrt(r)", 8)]

    # The rules agree at r = 1 (same seed, same scale: the same run) and differ at r = 8.
    assert runs["alpha/r", 1]["scaling"] == runs["alpha/sqrt(r)", 1]["scaling"] == 32
    assert runs["alpha/r", 1]["update_norm"] == pytest.approx(runs["alpha/sqrt(r)", 1]["update_norm"], rel=1e-6)
    assert runs["alpha/r", 1]["valid_loss"] == pytest.approx(runs["alpha/sqrt(r)", 1]["valid_loss"], rel=1e-6)
    assert runs["alpha/r", 8]["scaling"] == 4
    assert runs["alpha/sqrt(r)", 8]["scaling"] == pytest.approx(32 / 8**0.5)
    assert runs["alpha/r", 8]["update_norm"] != pytest.approx(runs["alpha/sqrt(r)", 8]["update_norm"], rel=1e-3)

    # The recorded norm is the last checkpoint's sum of ||scaling * B A||_F, with the rule it says.
    work = out / "runs" / "lr0.002_alpha_over_sqrtr_r8_seed1"
    tensors, metadata, cfg, _ = read_adapter(f"{ts.last_checkpoint(str(work))}/adapter.safetensors")
    assert (cfg.r, cfg.scaling_rule, metadata["step"]) == (8, "alpha/sqrt(r)", 12)
    assert sum(update_norms(tensors, cfg).values()) == pytest.approx(runs["alpha/sqrt(r)", 8]["update_norm"])
    assert all(x["valid_loss"] < results["backbone_valid_loss"] + 1.0 for x in results["runs"])

    table = (out / "results.md").read_text()
    assert table.count("\n| 0.002 | alpha/") == 4
    assert (out / "scaling_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
