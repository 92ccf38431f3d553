"""Every method through the whole pipeline: gpt2_ft.py --method M (exact resume, 2 gloo ranks equal
1, printed parameter counts, metadata), gpt2_beam.py (the file decodes as the model in memory, a
contradicting --method is refused), export merged and export peft (PEFT over transformers' GPT-2
gives our logits, or a refusal naming why), LoRA+'s groups against PEFT's, the PEFT backend."""

import contextlib
import copy
import io
import json
import shutil
import sys

import peft
import pytest
import torch
import transformers
from training import GPT2_FT, REPO, adapter, assert_same_tensors, records, run, tiny_args

from lora_nlg.decode.predict import main as beam_main
from lora_nlg.methods import (
    METHODS,
    DoRAConfig,
    FourierFTConfig,
    LoRAConfig,
    VeRAConfig,
    adapter_layers,
    apply_adapter,
    mark_only_adapter_as_trainable,
)
from lora_nlg.model import GPT2Config, GPT2LMModel
from lora_nlg.train.loop import main as train_main
from lora_nlg.train.optim import build_optimizer
from lora_nlg.weights.adapter import adapter_config_from_metadata, save_adapter
from lora_nlg.weights.backbone import save_pretrained
from lora_nlg.weights.merged import export_merged
from lora_nlg.weights.peft import NotRepresentable, export_peft

pytestmark = pytest.mark.usefixtures("one_thread")

ADALORA = {
    "peft_type": "ADALORA",
    "init_r": 6,
    "target_r": 2,
    "tinit": 2,
    "tfinal": 2,
    "deltaT": 1,
    "lora_alpha": 8,
    "target_modules": ["c_attn", "mlp.c_proj"],
}
METHOD_FLAGS = {
    "dora": ["--method", "dora"],
    "vera": ["--method", "vera", "--vera_r", "16", "--vera_seed", "3", "--vera_d_initial", "0.5"],
    "fourierft": [
        "--method",
        "fourierft",
        "--fourierft_n",
        "200",
        "--fourierft_scaling",
        "300",
        "--fourierft_seed",
        "5",
    ],
    "lora+": ["--loraplus_lr_ratio", "16"],
    "adalora": ["--method", "peft"],  # + --peft_config FILE
}
COMMON = ("--max_step", "8", "--save_interval", "4", "--eval_interval", "4", "--lora_dropout", "0.0", "--lr", "0.01")


def flags(name, data, work, tmp):
    extra = list(METHOD_FLAGS[name])
    if name == "adalora":
        path = tmp / "adalora.json"
        path.write_text(json.dumps(ADALORA))
        extra += ["--peft_config", str(path)]
    return tiny_args(data, work, *COMMON, *extra)


@pytest.fixture(scope="module")
def runs(e2e_data, tmp_path_factory):
    """One finished 8-step run per method (--save_full), checkpoints at 4 and 8."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("methods")
    out = {}
    for name in METHOD_FLAGS:
        work = tmp / name
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert train_main([*flags(name, e2e_data, work, tmp), "--save_full"]) == 0
        (work / "stdout.txt").write_text(printed.getvalue())
        out[name] = (work, tmp)
    return out


def trained(work, step):
    """The tensors a checkpoint trains: the adapter file's, or the PEFT run's trainer state's."""
    folder = work / "checkpoints" / f"step-{step}"
    if (folder / "peft").is_dir():
        return torch.load(folder / "trainer_state.pt", weights_only=True)["adapter_tensors"]
    return adapter(folder)[0]


@pytest.mark.parametrize("name", list(METHOD_FLAGS))
def test_resume_equals_the_uninterrupted_run(name, runs, e2e_data, tmp_path):
    ref, tmp = runs[name]
    work = tmp_path / "resumed"
    shutil.copytree(ref, work)
    shutil.rmtree(work / "checkpoints" / "step-8")
    shutil.rmtree(work / "checkpoints" / "epoch-1", ignore_errors=True)
    (work / "checkpoints" / "last").write_text("step-4\n")
    assert train_main([*flags(name, e2e_data, work, tmp), "--save_full", "--resume"]) == 0
    assert_same_tensors(trained(work, 8), trained(ref, 8))
    assert [r["loss"] for r in records(work, "train")] == [r["loss"] for r in records(ref, "train")]


@pytest.mark.parametrize("name", list(METHOD_FLAGS))
def test_two_gloo_ranks_equal_one(name, runs, e2e_data, tmp_path):
    ref, tmp = runs[name]
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", GPT2_FT]
    r = run([*cmd, *flags(name, e2e_data, two, tmp), "--train_batch_size", "4"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es) on cpu (gloo)" in r.stdout
    # float32 sums in another order; LoRA+ steps B at 16 times the learning rate, so its noise is 16 times larger
    assert_same_tensors(trained(two, 8), trained(ref, 8), atol=1.6e-4 if name == "lora+" else 1e-5)


@pytest.mark.parametrize("name", ["dora", "vera", "fourierft"])
def test_the_adapter_file_names_the_method_and_its_seeds(name, runs):
    work, _ = runs[name]
    tensors, metadata = adapter(work / "checkpoints" / "step-8")
    cfg = adapter_config_from_metadata(metadata, "test")
    assert metadata["method"] == name and type(cfg) is METHODS[name]
    assert metadata["config"]["random_seed"] == 10 and metadata["backbone"] == "random init (seed 10)"
    if name == "vera":
        assert (cfg.r, cfg.seed, cfg.d_initial) == (16, 3, 0.5)
    if name == "fourierft":
        assert (cfg.n_frequency, cfg.scaling, cfg.seed, cfg.init) == (200, 300.0, 5, "randn")
    # the printed count is the tensors' size
    printed = (work / "stdout.txt").read_text()
    assert f"| {sum(t.numel() for t in tensors.values()):,} trainable parameters |" in printed


@pytest.mark.parametrize("name", list(METHOD_FLAGS))
def test_the_checkpoint_decodes_as_the_model_trained(name, runs, e2e_data, tmp_path, capsys):
    """The adapter (or PEFT folder) on the recorded random backbone decodes to exactly what the
    merged model written from memory (model/) decodes."""
    work, _ = runs[name]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(open(e2e_data / "valid.jsonl").readlines()[:4]))  # upstream's encoded lines
    common = ["--data", str(inputs), "--beam", "2", "--eval_len", "8", "--min_length", "4", "--work_dir", str(tmp_path)]
    ckpt = work / "checkpoints" / "step-8"
    assert beam_main([*common, "--init_checkpoint", str(ckpt / "model"), "--output_file", "full.jsonl"]) == 0
    assert beam_main([*common, "--init_checkpoint", str(ckpt), "--random_backbone", "--output_file", "a.jsonl"]) == 0
    read = [[json.loads(line)["token_ids"] for line in open(tmp_path / n)] for n in ("full.jsonl", "a.jsonl")]
    assert read[0] == read[1]
    capsys.readouterr()
    other = "vera" if name != "vera" else "dora"
    assert beam_main([*common, "--init_checkpoint", str(ckpt), "--random_backbone", "--method", other]) == 2
    assert f"--method {other} contradicts it" in capsys.readouterr().err


def test_an_adapter_loaded_as_another_method_is_refused(runs, e2e_data, tmp_path, capsys):
    """A DoRA file whose header is rewritten to say VeRA: its tensors do not fit the description."""
    from safetensors.torch import load_file, save_file

    work, _ = runs["dora"]
    path = work / "checkpoints" / "step-8" / "adapter.safetensors"
    tensors, metadata = adapter(path)
    metadata = {**metadata, "method": "vera", "d_initial": 0.1, "seed": 0}
    fake = tmp_path / "fake.safetensors"
    save_file(load_file(path), fake, metadata={"format": "pt", "lora_nlg": json.dumps(metadata)})
    data = work.parent.parent / "inputs.jsonl"
    data.write_text(open(e2e_data / "valid.jsonl").readline())
    flags = ["--data", str(data), "--init_checkpoint", str(fake), "--random_backbone", "--work_dir", str(tmp_path)]
    assert beam_main(flags) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # one line, after the inputs' count
    assert last.startswith("gpt2_beam.py: error: ") and "the VeRA tensors do not fit its description" in last


# ------------------------------------------------------------------------------------ export


@pytest.fixture
def backbone_dir(tmp_path):
    """A random gpt2.tiny written as a Hugging Face folder (what transformers and our loader read)."""
    torch.manual_seed(0)
    model = GPT2LMModel(GPT2Config.from_card("gpt2.tiny", vocab_size=101, n_positions=64))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_pretrained(model, tmp_path / "backbone")
    return tmp_path / "backbone"


def randomized(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for key, t in layer.tensors().items():
                noise = torch.randn(t.shape, generator=g)
                t.copy_(
                    t * (1 + 0.2 * noise) if key == "lora_magnitude" else noise * (30 if "spectrum" in key else 0.2)
                )
    return model


WHOLE = ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")
EXPORTS = [
    DoRAConfig(r=2, alpha=8, targets=WHOLE),
    VeRAConfig(r=8, targets=WHOLE, seed=4),
    FourierFTConfig(n_frequency=50, scaling=300.0, targets=WHOLE, seed=9),
]
IDS = [c.name for c in EXPORTS]


def our_model(backbone_dir, cfg):
    from lora_nlg.weights.backbone import load_pretrained

    return randomized(apply_adapter(load_pretrained(str(backbone_dir)), cfg)).eval()


@pytest.mark.parametrize("cfg", EXPORTS, ids=IDS)
def test_export_peft_gives_our_logits_in_peft_over_transformers(cfg, backbone_dir, tmp_path):
    model = our_model(backbone_dir, cfg)
    save_adapter(tmp_path / "a.safetensors", model, {"init_checkpoint": str(backbone_dir)})
    written = export_peft(tmp_path / "a.safetensors", tmp_path / "peft")
    hf = transformers.GPT2LMHeadModel.from_pretrained(backbone_dir).eval()
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base, ours = hf(ids).logits, model(ids)
        theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()(ids).logits
    assert float((ours - base).abs().max()) > 1e-2
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    assert written["peft_type"] == {"dora": "LORA", "vera": "VERA", "fourierft": "FOURIERFT"}[cfg.name]


@pytest.mark.parametrize(
    "cfg", [DoRAConfig(targets=("q", "v")), VeRAConfig(r=8), FourierFTConfig(n_frequency=50)], ids=IDS
)
def test_export_peft_refuses_slices_of_c_attn_naming_why(cfg, backbone_dir, tmp_path):
    model = our_model(backbone_dir, cfg)
    save_adapter(tmp_path / "a.safetensors", model)
    with pytest.raises(NotRepresentable, match="fused c_attn"):
        export_peft(tmp_path / "a.safetensors", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


@pytest.mark.parametrize(
    "cfg",
    [DoRAConfig(r=2, alpha=8), VeRAConfig(r=8, targets=("q", "v", "mlp.c_fc")), FourierFTConfig(n_frequency=50)],
    ids=IDS,
)
def test_export_merged_is_a_plain_gpt2_computing_the_same(cfg, backbone_dir, tmp_path):
    model = our_model(backbone_dir, cfg)
    save_adapter(tmp_path / "a.safetensors", model, {"init_checkpoint": str(backbone_dir)})
    export_merged(tmp_path / "a.safetensors", tmp_path / "merged")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval()
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ LoRA+


@pytest.mark.parametrize("cfg", [LoRAConfig(r=4, targets=WHOLE), DoRAConfig(r=2, targets=WHOLE)], ids=["lora", "dora"])
def test_loraplus_groups_are_peft_s(cfg, tiny_model):
    from peft.optimizers import create_loraplus_optimizer

    ours = apply_adapter(copy.deepcopy(tiny_model), cfg)
    mark_only_adapter_as_trainable(ours)
    opt = build_optimizer(ours, 1e-3, 0.01, (0.9, 0.999), 1e-6, True, False, loraplus_lr_ratio=16.0)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    names = {n: lr_of[id(p)] for n, p in ours.named_parameters() if p.requires_grad}
    pc = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, target_modules=list(WHOLE), use_dora=cfg.name == "dora")
    ref = peft.get_peft_model(copy.deepcopy(tiny_model), pc)
    ref_opt = create_loraplus_optimizer(
        ref, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16.0, loraplus_weight_decay=0.01
    )
    ref_lr = {id(p): (g["lr"], g["weight_decay"]) for g in ref_opt.param_groups for p in g["params"]}
    theirs = {}
    for n, p in ref.named_parameters():
        if p.requires_grad:
            key = n.replace("base_model.model.", "").replace(".default", "").replace(".weight", "")
            theirs[key.replace("lora_magnitude_vector", "lora_magnitude")] = ref_lr[id(p)]
    assert names == theirs
    assert {lr for lr, _ in names.values()} == {1e-3, 16e-3}


# ------------------------------------------------------------------------------------ PEFT backend


def test_peft_lora_on_whole_modules_equals_our_lora(tiny_model, token_ids):
    ours = apply_adapter(copy.deepcopy(tiny_model).double(), LoRAConfig(r=4, alpha=8, targets=WHOLE))
    from lora_nlg.methods.peft_backend import PeftAdapter

    theirs = copy.deepcopy(tiny_model).double()
    PeftAdapter(theirs, {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": list(WHOLE)}, "cfg")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, layer in adapter_layers(ours):
            peft_layer = theirs.get_submodule(name)
            for key in ("lora_A", "lora_B"):
                t = torch.randn(getattr(layer, key).shape, generator=g, dtype=torch.float64) * 0.2
                getattr(layer, key).copy_(t)
                getattr(peft_layer, key)["default"].weight.copy_(t)
    torch.testing.assert_close(ours(token_ids), theirs(token_ids), rtol=1e-10, atol=1e-10)


def test_adalora_keeps_peft_s_rank_budget(runs):
    """After tfinal, the ranks kept are PEFT's final budget (target_r per module): the trainer called
    update_and_allocate; without the call every rank would stay."""
    work, _ = runs["adalora"]
    tensors = trained(work, 8)
    kept = sum(int((t != 0).sum()) for k, t in tensors.items() if "lora_E" in k)
    modules = 4 * len(ADALORA["target_modules"])
    assert kept == ADALORA["target_r"] * modules
    config = json.loads((work / "checkpoints" / "step-8" / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["total_step"] == 8


def test_adalora_orthogonal_regularisation_is_peft_s(tiny_model, token_ids):
    """PEFT adds it only to outputs.loss: drive PEFT's AdaLoraModel over a model that returns one."""
    from types import SimpleNamespace

    from lora_nlg.methods.peft_backend import PeftAdapter

    model = copy.deepcopy(tiny_model)
    ours = PeftAdapter(model, {**ADALORA, "total_step": 10}, "cfg")

    class WithLoss(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids):
            return SimpleNamespace(loss=self.inner(ids).float().square().mean())

    plain = SimpleNamespace(loss=model(token_ids).float().square().mean())
    tuner = ours.tuner
    inner, tuner.model = tuner.model, WithLoss(model)
    try:
        theirs = tuner.forward(token_ids).loss
    finally:
        tuner.model = inner
    torch.testing.assert_close(plain.loss + ours.extra_loss(), theirs, rtol=1e-6, atol=1e-6)


def test_a_peft_adapter_of_ours_loads_in_plain_peft_over_transformers(e2e_data, tmp_path):
    """--method peft on a pretrained (here: random, HF-format) backbone: PEFT's own folder, which
    PeftModel.from_pretrained over transformers' GPT-2 reads to our logits."""
    torch.manual_seed(0)
    save_pretrained(GPT2LMModel(GPT2Config.from_card("gpt2.tiny")), tmp_path / "backbone")
    config = tmp_path / "lora.json"
    config.write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 16, "target_modules": ["c_attn", "c_fc"]}))
    work = tmp_path / "run"
    args = tiny_args(e2e_data, work, *COMMON, "--method", "peft", "--peft_config", str(config))
    assert train_main([*args, "--init_checkpoint", str(tmp_path / "backbone")]) == 0
    folder = work / "checkpoints" / "step-8" / "peft"
    from lora_nlg.methods.peft_backend import load_for_decoding
    from lora_nlg.weights.backbone import load_pretrained

    ours = load_for_decoding(load_pretrained(str(tmp_path / "backbone")), str(folder)).eval()
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "backbone")
    theirs = peft.PeftModel.from_pretrained(hf, folder).eval()
    ids = torch.randint(0, 50257, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)


def test_a_peft_config_naming_what_our_model_lacks_is_one_line(e2e_data, tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj", "c_attn"]}))
    args = tiny_args(e2e_data, tmp_path / "run", *COMMON, "--method", "peft", "--peft_config", str(config))
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert "'target_modules' names ['q_proj']" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------ recipes


@pytest.mark.parametrize(
    "recipe, method, params, settings",
    [
        ("e2e", "lora", 393_216, {"lr": 2e-4}),
        ("e2e.loraplus", "lora", 393_216, {"loraplus_lr_ratio": 16.0, "lr": 2e-4}),
        ("e2e.dora", "dora", 442_368, {"lr": 2e-4}),
        ("e2e.vera", "vera", 98_304, {"vera_r": 1024, "vera_d_initial": 0.1, "lr": 0.1, "warmup_step": 500}),
        ("e2e.fourierft", "fourierft", 48_000, {"fourierft_n": 1000, "fourierft_scaling": 300.0, "lr": 0.02}),
    ],
)
def test_the_method_recipes_are_the_papers(recipe, method, params, settings):
    """configs/e2e.<method>.yaml (each starting from e2e.yaml): the papers' E2E settings and counts on GPT-2 M."""
    from lora_nlg.cli import parse_config
    from lora_nlg.train.config import TrainConfig, method_config

    cfg = parse_config(TrainConfig, ["--config", str(REPO / "configs" / f"{recipe}.yaml")])
    assert cfg.method == method and cfg.model_card == "gpt2.md" and cfg.max_epoch == 5 and cfg.label_smooth == 0.1
    assert {k: getattr(cfg, k) for k in settings} == settings
    assert cfg.train_batch_size * cfg.grad_acc == (128 if method == "fourierft" else 8)
    shapes = method_config(cfg).tensor_shapes(24, 1024)
    assert sum(torch.Size(s).numel() for s in shapes.values()) == params


def test_the_adalora_recipe_runs_peft_s_adalora():
    from lora_nlg.cli import parse_config
    from lora_nlg.methods.peft_backend import read_config
    from lora_nlg.train.config import TrainConfig

    cfg = parse_config(TrainConfig, ["--config", str(REPO / "configs" / "e2e.adalora.yaml")])
    assert cfg.method == "peft" and read_config(REPO / cfg.peft_config)["peft_type"] == "ADALORA"
