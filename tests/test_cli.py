"""The typed command line (`lora_nlg.cli`) and atomic writes (`lora_nlg.atomic`)."""

import dataclasses
import os
import stat
from typing import List, Literal, Optional

import pytest

from lora_nlg.atomic import atomic_write
from lora_nlg.cli import build_parser, parse_config, save_config


@dataclasses.dataclass
class Toy:
    lr: float = 1e-5
    """Learning rate."""
    lora_dim: int = 4
    """LoRA rank."""
    fp16: bool = False
    """Mixed precision."""
    targets: List[str] = dataclasses.field(default_factory=lambda: ["q", "v"])
    """Where LoRA goes."""
    rule: Literal["alpha/r", "alpha/sqrt(r)"] = "alpha/r"
    """Scaling rule."""
    init_checkpoint: Optional[str] = None
    """Weights to start from."""


def test_defaults_then_file_then_flags(tmp_path):
    assert parse_config(Toy, []) == Toy()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 2.0e-4\nlora_dim: 8\ntargets: [q, k, v]\n")
    cfg = parse_config(Toy, ["--config", str(cfg_file), "--lora_dim", "16", "--fp16"])
    assert cfg == Toy(lr=2e-4, lora_dim=16, fp16=True, targets=["q", "k", "v"])


def test_a_config_starts_from_its_base_and_wins_over_it(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "base.yaml").write_text("lr: 2.0e-4\nlora_dim: 8\ntargets: [q, k]\n")
    (tmp_path / "recipes" / "m.yaml").write_text("base: ../base.yaml\nlora_dim: 16\n")  # relative to its folder
    cfg = parse_config(Toy, ["--config", str(tmp_path / "recipes" / "m.yaml"), "--fp16"])
    assert cfg == Toy(lr=2e-4, lora_dim=16, fp16=True, targets=["q", "k"])


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.yaml": "base: a.yaml\n"}, r"a\.yaml: key 'base': .*a\.yaml starts from this file again"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, r"b\.yaml: key 'base': .*a\.yaml starts from"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "learning_rate: 1\n"}, r"b\.yaml: unknown key.*learning_rate"),
        ({"a.yaml": "base: 3\n"}, r"a\.yaml: key 'base' must name a config file"),
    ],
)
def test_a_bad_base_names_the_file(files, message, tmp_path):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        parse_config(Toy, ["--config", str(tmp_path / "a.yaml")])


def test_saved_config_loads_back_to_the_same_values(tmp_path):
    cfg = Toy(lr=3e-4, fp16=True, rule="alpha/sqrt(r)", init_checkpoint="x.bin")
    save_config(cfg, tmp_path / "saved.yaml")
    assert parse_config(Toy, ["--config", str(tmp_path / "saved.yaml")]) == cfg


def test_attribute_docstrings_are_the_help():
    text = build_parser(Toy).format_help()
    assert "Learning rate." in text and "Scaling rule." in text


def test_unknown_key_in_the_file_names_file_and_key(tmp_path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("lr: 1.0\nlearning_rate: 2.0\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*learning_rate"):
        parse_config(Toy, ["--config", str(cfg_file)])


def test_wrong_type_in_the_file_names_the_key(tmp_path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("lora_dim: four\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: key 'lora_dim'"):
        parse_config(Toy, ["--config", str(cfg_file)])


@pytest.mark.parametrize("argv", [["--lora", "8"], ["--learning_rate", "1"], ["--rule", "alpha"]])
def test_unknown_abbreviated_or_invalid_flags_are_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Toy, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err or "invalid choice" in err


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_gives_the_permissions_open_gives(tmp_path):
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    with atomic_write(tmp_path / "atomic.txt") as f:
        f.write("x")
    mode = lambda name: stat.S_IMODE(os.stat(tmp_path / name).st_mode)  # noqa: E731
    assert mode("atomic.txt") == mode("plain.txt")
