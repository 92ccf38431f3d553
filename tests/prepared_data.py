"""`create_datasets all` on the real mirror, run once per test process and shared through
conftest's ``mirror`` and ``prepared`` fixtures. Not a test module."""

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest

from lora_nlg.data import prepare
from lora_nlg.data.sources import default_mirror


def mirror():
    m = default_mirror()
    if m is None or not (m / "e2e" / "devset.csv").is_file():
        pytest.fail("raw data mirror not found: set NLG_DATA_MIRROR or provide ../shared/data")
    return m


@functools.lru_cache(maxsize=None)
def prepared_dir():
    """Everything prepared offline from the mirror into a temporary folder (about 15 s)."""
    out = Path(tempfile.mkdtemp(prefix="lora_nlg_prepared_"))
    atexit.register(shutil.rmtree, out, True)
    rc = prepare.main(["--datasets", "all", "--mirror", str(mirror()), "--data_dir", str(out), "--no_download"])
    assert rc == 0  # DART train is missing offline: a warning, not a failure, for `all`
    return out
