"""Shared fixtures: tiny GPT-2s on the CPU, offline, deterministic. Reuse them in any test file.

All of them describe ONE tiny GPT-2 (``TINY``: the ``gpt2.tiny`` card's 4 layers, 4 heads and
n_embd 128, so a lone weights file without config.json loads too; vocab 101, 64 positions),
built by ``transformers`` with fixed random weights: ``initializer_range=0.2``
(ten times GPT-2's) and every bias and LayerNorm parameter randomised too, so that mistakes that
GPT-2's own init would hide (a wrong GELU, a dropped bias, LayerNorms swapped) change the logits.

- ``hf_tiny_config``: the ``transformers.GPT2Config``.
- ``hf_tiny_state``: its state dict (transformers' names, Conv1D layout); session-wide, do not modify.
- ``hf_tiny_model``: a fresh ``transformers.GPT2LMHeadModel`` with those weights, in eval mode
  (per test: change it freely).
- ``hf_tiny_dir``: a folder written by transformers' ``save_pretrained``
  (``config.json`` + ``model.safetensors``); session-wide, read only.
- ``hf_tiny_bin_dir``: the same weights as ``config.json`` + ``pytorch_model.bin``. transformers 5
  always writes safetensors (its ``safe_serialization=False`` is gone), so the ``.bin`` is written
  the way transformers 4 wrote it: ``torch.save`` of the model's state dict (``lm_head.weight``
  included, tied to ``wte``); session-wide, read only.
- ``tiny_model``: our ``GPT2LMModel`` loaded from ``hf_tiny_dir`` through
  ``lora_nlg.weights.backbone.load_pretrained`` (per test, eval mode).
- ``token_ids``: a (3, 16) LongTensor of random token ids below the tiny vocab, fixed seed.

Data (session-wide, read only): ``mirror``, the raw data mirror (NLG_DATA_MIRROR or
../shared/data; the test fails without it); ``prepared``, ``create_datasets all`` run on it
offline once per test process (``prepared_data.py``).
"""

import os

import prepared_data
import pytest
import torch
import transformers

TINY = dict(n_layer=4, n_head=4, n_embd=128, vocab_size=101, n_positions=64)


def _hf_config() -> transformers.GPT2Config:
    return transformers.GPT2Config(
        **TINY,
        initializer_range=0.2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        activation_function="gelu_new",
    )


@pytest.fixture
def hf_tiny_config() -> transformers.GPT2Config:
    return _hf_config()


@pytest.fixture(scope="session")
def hf_tiny_state():
    torch.manual_seed(1234)
    model = transformers.GPT2LMHeadModel(_hf_config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.2)
            elif ".ln_" in name:
                p.normal_(1.0, 0.2)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def hf_tiny_model(hf_tiny_state) -> transformers.GPT2LMHeadModel:
    model = transformers.GPT2LMHeadModel(_hf_config())
    model.load_state_dict(hf_tiny_state)
    return model.eval()


@pytest.fixture(scope="session")
def hf_tiny_dir(tmp_path_factory, hf_tiny_state):
    model = transformers.GPT2LMHeadModel(_hf_config())
    model.load_state_dict(hf_tiny_state)
    folder = tmp_path_factory.mktemp("hf_tiny") / "gpt2-tiny"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hf_tiny_bin_dir(tmp_path_factory, hf_tiny_dir, hf_tiny_state):
    folder = tmp_path_factory.mktemp("hf_tiny_bin") / "gpt2-tiny"
    folder.mkdir()
    (folder / "config.json").write_bytes((hf_tiny_dir / "config.json").read_bytes())
    torch.save(dict(hf_tiny_state), folder / "pytorch_model.bin")
    assert sorted(os.listdir(folder)) == ["config.json", "pytorch_model.bin"]
    return folder


@pytest.fixture
def tiny_model(hf_tiny_dir):
    from lora_nlg.weights.backbone import load_pretrained

    return load_pretrained(hf_tiny_dir)


@pytest.fixture
def token_ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, TINY["vocab_size"], (3, 16), generator=g)


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny models are many small ops (OpenMP waits cost more
    than they gain), and results match subprocesses run with OMP_NUM_THREADS=1 bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def punkt_model():
    """nltk's English Punkt model: found, or fetched from PyPI (``punkt.install_punkt``)."""
    from lora_nlg.metrics import punkt

    try:
        return punkt.find_punkt() or punkt.install_punkt()
    except punkt.PunktNotFoundError as e:
        pytest.fail(f"nltk's English Punkt model is required here and could not be installed: {e}")


@pytest.fixture(scope="session")
def mirror():
    return prepared_data.mirror()


@pytest.fixture(scope="session")
def prepared():
    return prepared_data.prepared_dir()


@pytest.fixture(scope="session")
def e2e_data(tmp_path_factory, mirror):
    """train.jsonl (256 pairs), valid.jsonl (64 pairs of other MRs) and train64.jsonl (the first 64
    pairs) from the E2E dev set, encoded as upstream encodes them."""
    import json

    from lora_nlg.data import raw as D
    from lora_nlg.data.prepare import encode_pairs
    from lora_nlg.data.tokenizer import GPT2Tokenizer

    pairs = D.read_e2e_csv(mirror / "e2e" / "devset.csv")
    encoded, _ = encode_pairs(GPT2Tokenizer.from_dir(), pairs[:256] + pairs[3000:3064])
    folder = tmp_path_factory.mktemp("e2e")
    for name, part in (("train", encoded[:256]), ("valid", encoded[256:]), ("train64", encoded[:64])):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for context, completion in part:
                f.write(json.dumps({"context": context, "completion": completion}) + "\n")
    return folder
