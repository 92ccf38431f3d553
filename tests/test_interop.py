"""Interoperability round trips, each checked against the other side's own code:

- ours -> PEFT: ``peft.PeftModel.from_pretrained`` on transformers' ``GPT2LMHeadModel`` gives our logits;
- PEFT -> ours: adapters made by ``peft`` itself (patterns, rsLoRA, left-out layers, biases) give
  PEFT's logits in our model; ours -> PEFT -> ours gives back the same tensors and config;
- merged export -> ``GPT2LMHeadModel.from_pretrained`` gives our logits;
- a seed-format ``.pt`` -> import -> beam search decodes what our model with the same tensors
  decodes, and upstream's layout is checked against loralib's ``MergedLinear``;
- scales PEFT cannot express fail with a message.

Logit comparisons run in float64 (as ``test_lora.py``): the algebra then agrees to ~1e-12 and the
tolerance of 1e-9 is strict, while every test checks that LoRA moves the logits by far more.
"""

import copy
import json

import loralib
import peft
import pytest
import torch
import transformers
from safetensors.torch import save_file

import lora_export
from lora_nlg.beam import BeamSettings, beam_search
from lora_nlg.methods import LoRAConfig, adapter_layers, adapter_state_dict, apply_adapter
from lora_nlg.weights.adapter import load_adapter, read_adapter, save_adapter, update_norms
from lora_nlg.weights.backbone import load_pretrained
from lora_nlg.weights.merged import model_with_adapter
from lora_nlg.weights.peft import NotRepresentable, export_peft, import_peft
from lora_nlg.weights.tensors import CheckpointError

STRICT = 1e-9  # float64
EFFECT = 1e-2  # LoRA must move the logits by at least this, or a test could not fail


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def randomize_lora(model, seed=0, std=0.1):
    """Non-zero A and B, float32-exact values (files store float32)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in adapter_layers(model):
            m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g).float() * std)
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g).float() * std)


def our_adapter(hf_tiny_dir, path, cfg: LoRAConfig, seed=0):
    """Our tiny model (float64) with random LoRA, saved to ``path`` as training saves it."""
    model = load_pretrained(hf_tiny_dir).double()
    apply_adapter(model, cfg)
    randomize_lora(model, seed)
    save_adapter(path, model.float(), {"step": 7, "init_checkpoint": str(hf_tiny_dir)})
    return model.double().eval()


def hf_model(hf_tiny_dir):
    return transformers.GPT2LMHeadModel.from_pretrained(hf_tiny_dir).double().eval()


def our_model(hf_tiny_dir, adapter_path):
    return model_with_adapter(adapter_path, str(hf_tiny_dir)).double().eval()


EXPORT_CASES = {
    "qv alpha/r (the paper)": LoRAConfig(r=4, alpha=32, targets=("q", "v")),
    "qv rsLoRA": LoRAConfig(r=4, alpha=32, targets=("q", "v"), scaling_rule="alpha/sqrt(r)"),
    "qkv + mlp (rank_pattern)": LoRAConfig(r=2, alpha=8, targets=("q", "k", "v", "mlp.c_fc", "mlp.c_proj")),
    "k only + attn.c_proj": LoRAConfig(r=3, alpha=5, targets=("k", "attn.c_proj")),
    "qv + c_fc rsLoRA, bias": LoRAConfig(
        r=4, alpha=16, targets=("q", "v", "mlp.c_fc"), scaling_rule="alpha/sqrt(r)", bias="lora_only"
    ),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_ours_to_peft_gives_our_logits(hf_tiny_dir, tmp_path, token_ids, case):
    cfg = EXPORT_CASES[case]
    ours = load_pretrained(hf_tiny_dir).double()
    apply_adapter(ours, cfg)
    randomize_lora(ours)
    if cfg.bias == "lora_only":  # trained biases travel with the adapter
        with torch.no_grad():
            for _, m in adapter_layers(ours):
                m.base_layer.bias.add_(0.5)
    save_adapter(tmp_path / "adapter.safetensors", ours.float(), {"step": 7})
    ours = ours.double().eval()
    config = export_peft(tmp_path / "adapter.safetensors", tmp_path / "peft")
    base = hf_model(hf_tiny_dir)
    with torch.no_grad():
        plain = base(input_ids=token_ids).logits
        peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "peft").eval()
        theirs = peft_model(input_ids=token_ids).logits
        mine = ours(token_ids)
    assert max_diff(mine, plain) > EFFECT
    assert max_diff(mine, theirs) < STRICT, case
    # PEFT's own view of the scale equals ours in every layer.
    for name, m in peft_model.named_modules():
        if isinstance(m, peft.tuners.lora.LoraLayer):
            assert m.scaling["default"] == pytest.approx(cfg.scaling, rel=1e-12), name
    if case == "qv alpha/r (the paper)":  # the documented mapping: rank 2r, alpha doubled, k rows zero
        assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (8, 64, False)
        tensors = peft.utils.load_peft_weights(str(tmp_path / "peft"))
        b = tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
        assert b.shape == (3 * 128, 8) and not b[128:256].any()
        assert not b[:128, 4:].any() and not b[256:, :4].any()


def test_ours_to_peft_to_ours_is_the_identity(hf_tiny_dir, tmp_path):
    cfg = LoRAConfig(r=4, alpha=32, targets=("q", "v", "mlp.c_fc"), scaling_rule="alpha/sqrt(r)", dropout=0.1)
    our_adapter(hf_tiny_dir, tmp_path / "a.safetensors", cfg)
    assert lora_export.main(["export", "peft", str(tmp_path / "a.safetensors"), str(tmp_path / "peft")]) == 0
    assert lora_export.main(["import", "peft", str(tmp_path / "peft"), str(tmp_path / "b.safetensors")]) == 0
    (ta, ma), (tb, mb) = load_adapter(tmp_path / "a.safetensors"), load_adapter(tmp_path / "b.safetensors")
    assert sorted(ta) == sorted(tb)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    for key in ("r", "alpha", "scaling_rule", "targets", "dropout", "model_card", "step", "init_checkpoint"):
        assert mb[key] == ma[key], key
    assert mb["imported_from"]["format"] == "peft"


def _peft_native(hf_tiny_dir, folder, seed, **config):
    """An adapter made and saved by PEFT itself, with random (non-zero) A and B."""
    torch.manual_seed(seed)
    base = hf_model(hf_tiny_dir)
    model = peft.get_peft_model(base, peft.LoraConfig(init_lora_weights=False, fan_in_fan_out=True, **config))
    if config.get("bias", "none") != "none":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.add_(0.3)
    model.save_pretrained(folder)
    return model.eval()


PEFT_CASES = {
    "c_attn + c_proj + c_fc": dict(r=4, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"]),
    "rsLoRA, rank/alpha patterns, two layers": dict(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        target_modules=["c_attn", "mlp.c_proj"],
        rank_pattern={"mlp.c_proj": 2, "h.1.attn.c_attn": 6},
        alpha_pattern={"attn.c_attn": 20},
        layers_to_transform=[1, 3],
        layers_pattern="h",
    ),
    "bias all": dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"], bias="all"),
}


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_to_ours_gives_peft_logits(hf_tiny_dir, tmp_path, token_ids, case):
    theirs_model = _peft_native(hf_tiny_dir, tmp_path / "peft", 3, **PEFT_CASES[case])
    cfg = import_peft(tmp_path / "peft", tmp_path / "ours.safetensors", pretrained=str(hf_tiny_dir))
    ours = our_model(hf_tiny_dir, tmp_path / "ours.safetensors")
    with torch.no_grad():
        theirs = theirs_model(input_ids=token_ids).logits
        plain = hf_model(hf_tiny_dir)(input_ids=token_ids).logits
        mine = ours(token_ids)
    assert max_diff(theirs, plain) > EFFECT
    assert max_diff(mine, theirs) < 1e-5, case  # our adapter file stores A and B in float32
    _, metadata = load_adapter(tmp_path / "ours.safetensors")
    assert metadata["imported_from"]["format"] == "peft"
    if case.startswith("rsLoRA"):
        assert cfg.scaling_rule == "alpha/sqrt(r)"
        notes = " ".join(metadata["imported_from"]["notes"])
        assert "folded" in notes and "padded" in notes and "zero LoRA" in notes


def test_peft_import_refuses_dora(hf_tiny_dir, tmp_path):
    _peft_native(hf_tiny_dir, tmp_path / "peft", 0, r=2, lora_alpha=4, target_modules=["c_attn"], use_dora=True)
    with pytest.raises(NotRepresentable, match="use_dora"):
        import_peft(tmp_path / "peft", tmp_path / "x.safetensors", pretrained=str(hf_tiny_dir))


def test_merged_export_loads_in_transformers(hf_tiny_dir, tmp_path, token_ids):
    cfg = LoRAConfig(r=4, alpha=32, targets=("q", "v", "attn.c_proj"))
    ours = our_adapter(hf_tiny_dir, tmp_path / "a.safetensors", cfg)
    # The backbone comes from the adapter's metadata (init_checkpoint), as after training.
    assert lora_export.main(["export", "merged", str(tmp_path / "a.safetensors"), str(tmp_path / "merged")]) == 0
    merged = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "merged").double().eval()
    with torch.no_grad():
        mine, theirs = ours(token_ids), merged(input_ids=token_ids).logits
        plain = hf_model(hf_tiny_dir)(input_ids=token_ids).logits
    assert max_diff(mine, plain) > EFFECT
    assert max_diff(mine, theirs) < 1e-4  # merged weights are float32: W + s B A rounded once


def _seed_file(path, tensors, backbone):
    """What microsoft/LoRA's gpt2_ft.py saved: DDP's ``module.`` prefix, LoRA and the (frozen)
    backbone in one ``model_state_dict``, no r, no alpha."""
    state = {f"module.{k}": v.clone() for k, v in {**backbone, **tensors}.items()}
    torch.save({"model_state_dict": state}, path)


def test_seed_checkpoint_decodes_like_our_model(hf_tiny_dir, tmp_path):
    cfg = LoRAConfig(r=4, alpha=32, targets=("q", "v"))
    reference = load_pretrained(hf_tiny_dir)
    apply_adapter(reference, cfg)
    randomize_lora(reference, seed=5, std=0.3)
    tensors = {k: v.clone() for k, v in adapter_state_dict(reference).items()}
    backbone = {k: v for k, v in load_pretrained(hf_tiny_dir).state_dict().items()}
    _seed_file(tmp_path / "gpt2_tiny_lora.pt", tensors, backbone)
    assert (
        lora_export.main(
            [
                "import",
                "seed",
                str(tmp_path / "gpt2_tiny_lora.pt"),
                str(tmp_path / "s.safetensors"),
                "--lora_dim",
                "4",
                "--lora_alpha",
                "32",
                "--model_card",
                "gpt2.tiny",
            ]
        )
        == 0
    )
    _, metadata, imported_cfg, _ = read_adapter(tmp_path / "s.safetensors")
    assert (imported_cfg.r, imported_cfg.alpha, imported_cfg.scaling, tuple(imported_cfg.targets)) == (
        4,
        32,
        8,
        ("q", "v"),
    )
    assert metadata["imported_from"]["format"] == "seed"
    imported = model_with_adapter(tmp_path / "s.safetensors", str(hf_tiny_dir))

    # Upstream's own layer (loralib.MergedLinear, fan_in_fan_out as in its model.py) with the
    # file's tensors computes what our c_attn computes.
    ours_c_attn = copy.deepcopy(imported.transformer.h[0].attn.c_attn).double()
    seed_layer = loralib.MergedLinear(
        128, 384, r=4, lora_alpha=32, enable_lora=[True, False, True], fan_in_fan_out=True, merge_weights=False
    ).double()
    with torch.no_grad():
        seed_layer.weight.copy_(ours_c_attn.base_layer.weight.t())
        seed_layer.bias.copy_(ours_c_attn.base_layer.bias)
        seed_layer.lora_A.copy_(tensors["transformer.h.0.attn.c_attn.lora_A"])
        seed_layer.lora_B.copy_(tensors["transformer.h.0.attn.c_attn.lora_B"])
        x = torch.randn(2, 5, 128, dtype=torch.float64)
        assert max_diff(seed_layer(x), ours_c_attn(x)) < STRICT
        assert max_diff(ours_c_attn(x), ours_c_attn.base_layer(x)) > EFFECT

    prompts = [[5, 17, 42, 8, 99], [3, 3, 71], [60, 12, 7, 7, 30, 2, 88]]
    settings = BeamSettings(
        beam=3, eval_len=10, length_penalty=0.9, no_repeat_ngram_size=3, stop_ids=(0,), batch_size=3
    )
    with torch.no_grad():
        got = beam_search(imported, prompts, settings)
        want = beam_search(reference.eval(), prompts, settings)
        plain = beam_search(load_pretrained(hf_tiny_dir), prompts, settings)
    assert [h.token_ids for h in got] == [h.token_ids for h in want]
    assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
    assert [h.token_ids for h in got] != [h.token_ids for h in plain]  # the LoRA matters


def test_imported_seed_checkpoint_decodes_with_gpt2_beam(hf_tiny_dir, tmp_path):
    """The decoding program gives the same predictions for the imported adapter, for our own
    adapter with the same tensors, and for upstream file with the right --lora_dim/--lora_alpha;
    upstream decoder's default alpha (128) gives others."""
    import gpt2_beam

    reference = load_pretrained(hf_tiny_dir)
    apply_adapter(reference, LoRAConfig(r=4, alpha=32, targets=("q", "v")))
    randomize_lora(reference, seed=5, std=0.3)
    save_adapter(tmp_path / "ours.safetensors", reference, {"init_checkpoint": str(hf_tiny_dir)})
    _seed_file(tmp_path / "seed.pt", adapter_state_dict(reference), {})
    from lora_nlg.weights.upstream import import_upstream

    import_upstream(tmp_path / "seed.pt", tmp_path / "imported.safetensors", 4, 32, "gpt2.tiny")
    inputs = [[5, 17, 42, 8, 99], [3, 3, 71], [60, 12, 7, 7, 30, 2, 88]]
    with open(tmp_path / "test_unique.jsonl", "w") as f:
        for i, ids in enumerate(inputs):
            f.write(json.dumps({"id": i, "context": "x", "context_ids": ids, "references": ["y"]}) + "\n")

    def decode(name, *flags):
        assert (
            gpt2_beam.main(
                [
                    "--data",
                    str(tmp_path / "test_unique.jsonl"),
                    "--pretrained_checkpoint",
                    str(hf_tiny_dir),
                    "--beam",
                    "3",
                    "--eval_len",
                    "10",
                    "--seq_len",
                    "32",
                    "--length_penalty",
                    "0.9",
                    "--no_repeat_ngram_size",
                    "3",
                    "--work_dir",
                    str(tmp_path),
                    "--output_file",
                    name,
                    *flags,
                ]
            )
            == 0
        )
        return [json.loads(line)["token_ids"] for line in open(tmp_path / name)]

    ours = decode("ours.jsonl", "--init_checkpoint", str(tmp_path / "ours.safetensors"))
    assert decode("imported.jsonl", "--init_checkpoint", str(tmp_path / "imported.safetensors")) == ours
    seed = ["--init_checkpoint", str(tmp_path / "seed.pt"), "--lora_dim", "4"]
    assert decode("seed32.jsonl", *seed, "--lora_alpha", "32") == ours
    assert decode("seed128.jsonl", *seed, "--lora_alpha", "128") != ours


def test_seed_import_checks_rank_and_needs_alpha(hf_tiny_dir, tmp_path):
    model = load_pretrained(hf_tiny_dir)
    apply_adapter(model, LoRAConfig(r=4, alpha=32))
    _seed_file(tmp_path / "seed.pt", adapter_state_dict(model), {})
    with pytest.raises(CheckpointError, match="rank r=4.*not --lora_dim 2"):
        from lora_nlg.weights.upstream import import_upstream

        import_upstream(tmp_path / "seed.pt", tmp_path / "x.safetensors", 2, 32, "gpt2.tiny")
    with pytest.raises(SystemExit):  # --lora_alpha has no default: upstream never stored it
        lora_export.main(
            [
                "import",
                "seed",
                str(tmp_path / "seed.pt"),
                str(tmp_path / "x.safetensors"),
                "--lora_dim",
                "4",
                "--model_card",
                "gpt2.tiny",
            ]
        )


def test_unrepresentable_scales_fail_clearly(hf_tiny_dir, tmp_path, capsys):
    # rsLoRA on q and v needs PEFT alpha = 32 sqrt(2): fine for PEFT, not as an integer.
    cfg = LoRAConfig(r=4, alpha=32, targets=("q", "v"), scaling_rule="alpha/sqrt(r)")
    our_adapter(hf_tiny_dir, tmp_path / "rs.safetensors", cfg)
    with pytest.raises(NotRepresentable, match=r"lora_alpha = 45\.25.*not an integer"):
        export_peft(tmp_path / "rs.safetensors", tmp_path / "p1", integer_alpha=True)
    # alpha/r on q, v with an integer alpha is whole in PEFT too (2 alpha).
    our_adapter(hf_tiny_dir, tmp_path / "qv.safetensors", LoRAConfig(r=4, alpha=32))
    assert export_peft(tmp_path / "qv.safetensors", tmp_path / "p2", integer_alpha=True)["lora_alpha"] == 64
    # A scale that is no number: nothing in adapter_config.json can give it.
    our_adapter(hf_tiny_dir, tmp_path / "inf.safetensors", LoRAConfig(r=4, alpha=float("inf")))
    assert lora_export.main(["export", "peft", str(tmp_path / "inf.safetensors"), str(tmp_path / "p3")]) == 1
    err = capsys.readouterr().err
    assert "scale is inf" in err and "attn.c_attn" in err
    # No metadata (a bare tensor file): the scale is unknown, so it is not exported at all.
    tensors, _ = load_adapter(tmp_path / "qv.safetensors")
    save_file(tensors, tmp_path / "bare.safetensors")
    with pytest.raises(CheckpointError, match="no lora_nlg metadata"):
        export_peft(tmp_path / "bare.safetensors", tmp_path / "p4")


def test_update_norm_is_the_frobenius_norm_of_the_merged_change(hf_tiny_dir, tmp_path):
    cfg = LoRAConfig(r=4, alpha=32, targets=("q", "v", "mlp.c_fc"))
    model = our_adapter(hf_tiny_dir, tmp_path / "a.safetensors", cfg)
    tensors, _, lora_cfg, _ = read_adapter(tmp_path / "a.safetensors")
    norms = update_norms(tensors, lora_cfg)
    for name, m in adapter_layers(model):
        assert norms[name] == pytest.approx(m.delta_weight().norm().item(), rel=1e-6)
