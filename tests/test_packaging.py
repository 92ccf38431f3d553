"""Packaging: ``pip install .`` into a fresh virtual environment gives every program as a command.

The fresh venv borrows the test venv's packages (torch, ...) through a ``.pth`` line, and the
package is installed from a copy of the repository (``--no-deps``, no build isolation: offline), so
what runs is the installed copy, not ``src/``.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {  # console script -> a word its --help prints
    "lora-nlg-prepare": "--datasets",
    "lora-nlg-encode": "--add_bos",
    "lora-nlg-fetch": "--revision",
    "lora-nlg-train": "--lora_dim",
    "lora-nlg-beam": "--length_penalty",
    "lora-nlg-decode": "--ref_type",
    "lora-nlg-eval": "--protocol",
    "lora-nlg-export": "import",
}


def test_pip_install_gives_every_program_as_a_command(tmp_path):
    src = tmp_path / "src_copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "requirements.txt", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr

    where = subprocess.run(
        [
            str(python),
            "-c",
            "import lora_nlg.data.sources as s; print(s.__file__); print(s.SOURCES_JSON.is_file(), s.REPO)",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    ).stdout.split()
    assert where[0].startswith(site) and where[1:] == ["True", "None"]  # installed copy, with its data
    for command, word in COMMANDS.items():
        r = subprocess.run(
            [str(venv / "bin" / command), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
        )
        assert r.returncode == 0 and "usage:" in r.stdout and word in r.stdout, (command, r.stdout[-500:], r.stderr)
