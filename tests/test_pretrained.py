"""The pretrained-checkpoint fetcher: mirror use, sha256 check, clear offline error."""

import hashlib
import os

import pytest

from lora_nlg.weights import hub as pretrained


def _mirror(tmp_path, payload=b"weights"):
    src = tmp_path / "mirror" / "gpt2-medium"
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(payload)
    return tmp_path / "mirror", hashlib.sha256(payload).hexdigest()


def test_mirror_copy_with_matching_sha256(tmp_path):
    mirror, digest = _mirror(tmp_path)
    folder = pretrained.fetch("gpt2.md", str(tmp_path / "out"), mirror=str(mirror), sha256=digest)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    assert (tmp_path / "out" / "gpt2-medium" / "model.safetensors").read_bytes() == b"weights"


def test_sha256_mismatch_removes_file(tmp_path):
    mirror, _ = _mirror(tmp_path)
    with pytest.raises(RuntimeError, match="does not match"):
        pretrained.fetch("gpt2.md", str(tmp_path / "out"), mirror=str(mirror), sha256="0" * 64)
    assert not (tmp_path / "out" / "gpt2-medium" / "model.safetensors").exists()


def test_offline_error_names_repo_and_mirror_variable(tmp_path, monkeypatch, capsys):
    def no_network(*a, **k):
        raise pretrained.urllib.error.URLError("offline")

    monkeypatch.setattr(pretrained.urllib.request, "urlopen", no_network)
    assert pretrained.main(["gpt2.sm", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "openai-community/gpt2" in err and "NLG_MODEL_MIRROR" in err
