"""Checkpoint formats in and out: Hugging Face folders, upstream's files, adapters; strict errors."""

import json
import os
import shlex

import pytest
import torch
import transformers
from conftest import TINY
from safetensors import safe_open
from safetensors.torch import save_file

from lora_nlg.methods import LoRAConfig, adapter_layers, adapter_state_dict, apply_adapter, merge_adapter
from lora_nlg.weights.adapter import apply_adapter_weights, load_adapter, save_adapter
from lora_nlg.weights.backbone import load_pretrained, save_pretrained
from lora_nlg.weights.layout import ADAPTER_FILE, METADATA_KEY
from lora_nlg.weights.tensors import CheckpointError, read_tensors
from lora_nlg.weights.upstream import lora_config_from_tensors

TOL = 1e-4  # as test_model: max abs logit difference against transformers


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def assert_same_as_hf(model, hf_model, ids, tol=TOL):
    assert max_diff(model(ids), hf_model(input_ids=ids).logits) < tol


def save_safetensors(tensors, path):
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, path)  # no shared storage


# Formats other than transformers 5's own, built from the reference state dict.
def hub_original(state):
    """The Hub's original GPT-2 files (what upstream downloads): no 'transformer.' prefix, no
    lm_head, and the causal-mask buffers attn.bias / attn.masked_bias stored as tensors."""
    out = {k[len("transformer.") :]: v for k, v in state.items() if k.startswith("transformer.")}
    P = TINY["n_positions"]
    for i in range(TINY["n_layer"]):
        out[f"h.{i}.attn.bias"] = torch.tril(torch.ones(P, P)).view(1, 1, P, P)
        out[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return out


def seed_full(state, tf_names=True):
    """Upstream's full-model .pt body: DDP's 'module.' prefix, TF-style .g/.b/.w names, its
    lm_head.decoder.weight (tied) and its attn.bias mask buffers."""
    out = {}
    for k, v in hub_original(state).items():
        if tf_names and (".ln_" in k or k.startswith("ln_f")):
            k = k.replace(".weight", ".g").replace(".bias", ".b")
        elif tf_names and ".c_" in k:
            k = k.replace(".weight", ".w").replace(".bias", ".b")
        out["module.transformer." + k] = v
    out["module.lm_head.decoder.weight"] = state["transformer.wte.weight"]
    return out


# ------------------------------------------------------------------------------ loading formats


@pytest.mark.parametrize(
    "fmt",
    [
        "hub_bin",
        "hub_safetensors",
        "transformers_single_file",
        "seed_tf_names",
        "seed_module_prefix",
        "state_dict_wrapper",
        "our_linear_layout",
    ],
)
def test_loads_every_format(fmt, tmp_path, hf_tiny_state, hf_tiny_model, token_ids, tiny_model):
    if fmt == "hub_bin":
        path = tmp_path / "gpt2-pytorch_model.bin"
        torch.save(hub_original(hf_tiny_state), path)
    elif fmt == "hub_safetensors":
        path = tmp_path / "model.safetensors"
        save_safetensors(hub_original(hf_tiny_state), path)
    elif fmt == "transformers_single_file":
        path = tmp_path / "weights.pth"
        torch.save(dict(hf_tiny_state), path)
    elif fmt in ("seed_tf_names", "seed_module_prefix"):
        path = tmp_path / "model.final.pt"
        body = seed_full(hf_tiny_state, tf_names=fmt == "seed_tf_names")
        assert ("module.transformer.h.0.ln_1.g" in body) == (fmt == "seed_tf_names")
        assert ("module.transformer.h.0.attn.c_attn.w" in body) == (fmt == "seed_tf_names")
        torch.save({"model_state_dict": body}, path)
    elif fmt == "state_dict_wrapper":
        path = tmp_path / "lightning.pt"
        torch.save({"state_dict": dict(hf_tiny_state), "epoch": 3}, path)
    else:  # torch.save(model.state_dict()) of our own model: nn.Linear (out, in) layout
        path = tmp_path / "ours.pt"
        torch.save(tiny_model.state_dict(), path)
    model = load_pretrained(path)
    assert model.config.n_layer == TINY["n_layer"] and model.config.n_head == TINY["n_head"]
    assert model.config.vocab_size == TINY["vocab_size"] and model.config.n_positions == TINY["n_positions"]
    assert_same_as_hf(model, hf_tiny_model, token_ids)


def test_sharded_folder(tmp_path, hf_tiny_model, token_ids):
    hf_tiny_model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert_same_as_hf(load_pretrained(tmp_path / "sharded"), hf_tiny_model, token_ids)


def test_dtype(hf_tiny_dir):
    model = load_pretrained(hf_tiny_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_pretrained(hf_tiny_dir).parameters()} == {torch.float32}


# -------------------------------------------------------------------------------- load errors


@pytest.fixture
def broken(tmp_path, hf_tiny_state):
    """Write a copy of the reference weights with ``edit`` applied; return its path."""

    def write(edit):
        state = {k: v.clone() for k, v in hf_tiny_state.items() if k != "lm_head.weight"}
        edit(state)
        path = tmp_path / "broken.safetensors"
        save_safetensors(state, path)
        return path

    return write


def test_missing_key_is_named(broken):
    path = broken(lambda s: s.pop("transformer.h.1.ln_2.bias"))
    with pytest.raises(CheckpointError, match=r"missing \(1\): transformer\.h\.1\.ln_2\.bias") as e:
        load_pretrained(path)
    assert str(path) in str(e.value)


def test_unexpected_key_is_named(broken):
    path = broken(lambda s: s.update({"transformer.h.0.attn.c_attn.extra": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): transformer\.h\.0\.attn\.c_attn\.extra"):
        load_pretrained(path)


def test_wrong_shape_is_named(broken):
    path = broken(lambda s: s.update({"transformer.h.2.mlp.c_fc.bias": torch.zeros(100)}))
    with pytest.raises(
        CheckpointError,
        match=r"wrong shape \(1\): transformer\.h\.2\.mlp\.c_fc\.bias: "
        r"\(100,\) in the file, \(512,\) expected",
    ):
        load_pretrained(path)


def test_all_problems_in_one_error(broken):
    def edit(s):
        s.pop("transformer.ln_f.weight")
        s.pop("transformer.h.3.attn.c_proj.weight")
        s["transformer.h.0.mlp.c_proj.weight"] = torch.zeros(128, 512)  # nn.Linear layout in a Conv1D file
        s["something.else"] = torch.zeros(1)

    with pytest.raises(CheckpointError) as e:
        load_pretrained(broken(edit))
    msg = str(e.value)
    for key in (
        "transformer.ln_f.weight",
        "transformer.h.3.attn.c_proj.weight",
        "transformer.h.0.mlp.c_proj.weight: (128, 512) in the file, (512, 128) expected",
        "something.else",
    ):
        assert key in msg


def test_untied_lm_head_is_refused(tmp_path, hf_tiny_state):
    state = dict(hf_tiny_state)
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    torch.save(state, tmp_path / "untied.bin")
    with pytest.raises(CheckpointError, match="lm_head.weight.*tied"):
        load_pretrained(tmp_path / "untied.bin")


class RunsCode:
    """Unpickling this runs a shell command, as a malicious checkpoint would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {"transformer.wte.weight": torch.zeros(2, 2), "x": RunsCode(marker)}}, path)
    for load in (read_tensors, load_pretrained, load_adapter):
        with pytest.raises(CheckpointError) as e:
            load(path)
        assert str(path) in str(e.value) and "safetensors" in str(e.value) and "weights_only" in str(e.value)
        assert not marker.exists()
    # The payload is real: a plain unpickler runs it (so the assertions above can fail).
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_model_card_conflict_names_both(hf_tiny_dir, tmp_path, hf_tiny_state):
    with pytest.raises(
        CheckpointError, match=r"n_layer=4, n_head=4, n_embd=128.*'gpt2\.md' is n_layer=24, n_head=16, n_embd=1024"
    ):
        load_pretrained(hf_tiny_dir, model_card="gpt2.md")
    torch.save(dict(hf_tiny_state), tmp_path / "w.bin")  # single file: n_head from the card table
    with pytest.raises(CheckpointError, match="'gpt2.sm'"):
        load_pretrained(tmp_path / "w.bin", model_card="gpt2.sm")
    assert load_pretrained(tmp_path / "w.bin", model_card="gpt2.tiny").config.n_head == 4
    with pytest.raises(CheckpointError, match="unknown model card"):
        load_pretrained(hf_tiny_dir, model_card="gpt2.huge")


def test_config_json_must_agree(tmp_path, hf_tiny_dir):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((hf_tiny_dir / "model.safetensors").read_bytes())
    config = json.loads((hf_tiny_dir / "config.json").read_text())
    for change, message in [
        ({"activation_function": "gelu"}, "activation_function is 'gelu'"),
        ({"n_embd": 64}, "config.json says n_embd=64, the weights have n_embd=128"),
    ]:
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=message):
            load_pretrained(folder)


def test_lora_only_file_is_not_a_backbone(tmp_path):
    lora = {
        "module.transformer.h.0.attn.c_attn.lora_A": torch.zeros(8, 128),
        "module.transformer.h.0.attn.c_attn.lora_B": torch.zeros(256, 4),
    }
    torch.save({"model_state_dict": lora}, tmp_path / "model.20000.pt")
    with pytest.raises(CheckpointError, match="only LoRA tensors.*not a GPT-2 backbone"):
        load_pretrained(tmp_path / "model.20000.pt")


def test_seed_full_checkpoint_with_lora(tmp_path, hf_tiny_state):
    """Upstream's final checkpoint: frozen backbone plus LoRA. load_pretrained says to split it;
    load_adapter takes its LoRA tensors."""
    body = seed_full(hf_tiny_state)
    for i in range(TINY["n_layer"]):
        body[f"module.transformer.h.{i}.attn.c_attn.lora_A"] = torch.randn(8, 128)
        body[f"module.transformer.h.{i}.attn.c_attn.lora_B"] = torch.randn(256, 4)
    torch.save({"model_state_dict": body}, tmp_path / "model.final.pt")
    with pytest.raises(CheckpointError, match="(?s)unexpected.*lora_A.*load_adapter"):
        load_pretrained(tmp_path / "model.final.pt")
    tensors, metadata = load_adapter(tmp_path / "model.final.pt")
    assert metadata is None and len(tensors) == 2 * TINY["n_layer"]
    assert all(k.startswith("transformer.h.") for k in tensors)


# --------------------------------------------------------------------------------- saving


def test_save_pretrained_loads_in_transformers(tiny_model, token_ids, tmp_path):
    save_pretrained(tiny_model, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (
        config["model_type"],
        config["activation_function"],
        config["n_embd"],
        config["n_layer"],
        config["n_head"],
    ) == ("gpt2", "gelu_new", 128, 4, 4)
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert f.get_slice("transformer.h.0.attn.c_attn.weight").get_shape() == [128, 384]  # Conv1D
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    assert_same_as_hf(tiny_model, hf.eval(), token_ids)
    back = load_pretrained(tmp_path / "out").state_dict()  # our round trip is bit-exact
    assert back.keys() == tiny_model.state_dict().keys()
    assert all(torch.equal(v, back[k]) for k, v in tiny_model.state_dict().items())


def test_save_pretrained_merges_lora_and_leaves_the_model(tiny_model, token_ids, tmp_path):
    with torch.no_grad():
        base = tiny_model(token_ids)
    apply_adapter(tiny_model, LoRAConfig(r=4, alpha=32, targets=("q", "v", "mlp.c_proj")))
    with torch.no_grad():
        for _, m in adapter_layers(tiny_model):
            m.lora_B.normal_(0, 0.05)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    save_pretrained(tiny_model, tmp_path / "merged")
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())
    assert not any(m.merged for _, m in adapter_layers(tiny_model))
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert max_diff(tiny_model(token_ids), load_pretrained(tmp_path / "merged")(token_ids)) < TOL
        assert max_diff(tiny_model(token_ids), hf(input_ids=token_ids).logits) < TOL
        assert max_diff(hf(input_ids=token_ids).logits, base) > 1e-2  # the LoRA update was written
    merge_adapter(tiny_model)  # an already merged model saves the same weights
    save_pretrained(tiny_model, tmp_path / "merged2")
    a, b = (
        read_tensors(tmp_path / "merged" / "model.safetensors"),
        read_tensors(tmp_path / "merged2" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(max_diff(a[k], b[k]) < 1e-6 for k in a)


def test_save_pretrained_replaces_only_its_own_folder(tiny_model, tmp_path):
    save_pretrained(tiny_model, tmp_path / "out")
    save_pretrained(tiny_model, tmp_path / "out")  # an earlier save is replaced
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary folders left behind
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="notes.txt"):
        save_pretrained(tiny_model, tmp_path / "work")
    assert (tmp_path / "work" / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------------- adapters


def lora_model(tiny_model, seed=0, **cfg):
    apply_adapter(tiny_model, LoRAConfig(**{"r": 4, "alpha": 32, **cfg}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in adapter_layers(tiny_model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    return tiny_model


def test_save_load_lora_round_trip(tiny_model, hf_tiny_dir, token_ids, tmp_path):
    model = lora_model(tiny_model, dropout=0.1, targets=("q", "v", "mlp.c_fc"))
    run = {"lr": 2e-4, "label_smooth": 0.1, "train_data": "data/e2e/train.jsonl"}
    save_adapter(tmp_path / "adapter.safetensors", model, {"step": 1200, "epoch": 2, "val_loss": 1.25, "config": run})
    tensors, meta = load_adapter(tmp_path / "adapter.safetensors")
    assert tensors.keys() == adapter_state_dict(model).keys()
    assert all(torch.equal(tensors[k], v) for k, v in adapter_state_dict(model).items())
    assert {k: meta[k] for k in ("r", "alpha", "dropout", "targets", "scaling_rule", "scaling", "model_card")} == {
        "r": 4,
        "alpha": 32,
        "dropout": 0.1,
        "targets": ["q", "v", "mlp.c_fc"],
        "scaling_rule": "alpha/r",
        "scaling": 8.0,
        "model_card": "gpt2.tiny",
    }
    assert (meta["step"], meta["epoch"], meta["val_loss"], meta["config"]) == (1200, 2, 1.25, run)
    assert meta["model_config"]["n_embd"] == 128

    fresh = apply_adapter(load_pretrained(hf_tiny_dir), LoRAConfig.from_dict(meta))
    apply_adapter_weights(fresh, tensors)
    with torch.no_grad():
        assert torch.equal(fresh(token_ids), model.eval()(token_ids))


def test_saved_lora_settings_are_read_off_the_layers(tiny_model, tmp_path):
    """The metadata describes the LoRA layers themselves, not an attribute set beside them: a model
    whose ``lora_config`` attribute is stale, or missing, saves the same description."""
    model = lora_model(tiny_model, dropout=0.1, targets=("q", "v", "mlp.c_fc"))
    want = LoRAConfig(r=4, alpha=32, dropout=0.1, targets=("q", "v", "mlp.c_fc")).to_dict()
    model.lora_config = LoRAConfig(r=8, alpha=1.0, targets=("k",))  # stale
    save_adapter(tmp_path / "stale.safetensors", model)
    del model.lora_config
    save_adapter(tmp_path / "missing.safetensors", model)
    for name in ("stale", "missing"):
        _, meta = load_adapter(tmp_path / f"{name}.safetensors")
        assert {k: meta[k] for k in want} == want, name


def test_lora_checkpoint_directory(tiny_model, tmp_path):
    model = lora_model(tiny_model)
    (tmp_path / "ckpt").mkdir()
    save_adapter(tmp_path / "ckpt", model, {"step": 5})
    assert os.listdir(tmp_path / "ckpt") == [ADAPTER_FILE]
    with safe_open(tmp_path / "ckpt" / ADAPTER_FILE, "pt") as f:
        assert json.loads(f.metadata()[METADATA_KEY])["step"] == 5
    tensors, meta = load_adapter(tmp_path / "ckpt")
    assert meta["step"] == 5 and len(tensors) == 2 * TINY["n_layer"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=ADAPTER_FILE):
        load_adapter(tmp_path / "empty")


def test_save_lora_metadata_errors(tiny_model, tmp_path):
    model = lora_model(tiny_model)
    with pytest.raises(CheckpointError, match="JSON"):
        save_adapter(tmp_path / "a.safetensors", model, {"when": object()})
    with pytest.raises(CheckpointError, match="contradicts.*'r'"):
        save_adapter(tmp_path / "a.safetensors", model, {"r": 8})
    save_adapter(tmp_path / "a.safetensors", model, {"r": 4, "targets": ("q", "v")})  # agreeing is fine
    assert not [p for p in os.listdir(tmp_path) if p != "a.safetensors"]  # no temporary files left


def test_apply_lora_weights_is_strict(tiny_model):
    model = lora_model(tiny_model)
    tensors = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    tensors.pop("transformer.h.1.attn.c_attn.lora_B")
    tensors["transformer.h.0.mlp.c_fc.lora_A"] = torch.zeros(4, 128)
    tensors["transformer.h.2.attn.c_attn.lora_A"] = torch.zeros(12, 128)
    with pytest.raises(CheckpointError) as e:
        apply_adapter_weights(model, tensors)
    msg = str(e.value)
    assert "missing (1): transformer.h.1.attn.c_attn.lora_B" in msg
    assert "unexpected (1): transformer.h.0.mlp.c_fc.lora_A" in msg
    assert "transformer.h.2.attn.c_attn.lora_A: (12, 128) given, (8, 128) expected" in msg


def test_lora_config_from_tensors(tiny_model):
    def tensors_of(**cfg):
        return adapter_state_dict(lora_model(load_fresh(), **cfg))

    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}

    def load_fresh():
        m = type(tiny_model)(tiny_model.config)
        m.load_state_dict(state)
        return m

    for targets in [("q", "v"), ("q", "k", "v"), ("q", "v", "mlp.c_fc"), ("attn.c_proj", "mlp.c_proj")]:
        cfg = lora_config_from_tensors(tensors_of(r=2, targets=targets), alpha=16)
        assert (cfg.r, cfg.targets, cfg.scaling) == (2, targets, 8.0)
    k_only = tensors_of(targets=("k",))
    with pytest.raises(CheckpointError, match="c_attn_targets"):
        lora_config_from_tensors(k_only, alpha=32)
    assert lora_config_from_tensors(k_only, alpha=32, c_attn_targets=("k",)).targets == ("k",)
    uneven = tensors_of()
    uneven.pop("transformer.h.3.attn.c_attn.lora_A")
    uneven.pop("transformer.h.3.attn.c_attn.lora_B")
    uneven["transformer.h.3.mlp.c_fc.lora_A"] = torch.zeros(4, 128)
    uneven["transformer.h.3.mlp.c_fc.lora_B"] = torch.zeros(512, 4)
    with pytest.raises(CheckpointError, match="different modules in different layers"):
        lora_config_from_tensors(uneven, alpha=32)
