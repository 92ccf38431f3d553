"""nltk's English Punkt sentence model (`punkt_tab/english`), found or installed from PyPI.

GenerationEval tokenizes METEOR and TER input with `nltk.word_tokenize`, which splits sentences
with Punkt first. nltk's data server is not reachable from every machine; PyPI is. The
`punkt_tab` package of nltk_data is shipped inside the PyPI wheel of `llama-index-core`
(`llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/`). `install_punkt` downloads that
wheel with pip (no dependencies, nothing installed), extracts the four English files, checks
their sha256, and stores them under `<cache_dir>/nltk_data/tokenizers/punkt_tab/english/`.
Only texts with a word-final period before more text need the model (see `word_tokenize.py`).
"""

import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

from .cache import default_cache_dir

WHEEL = "llama-index-core==0.14.25"
MEMBER_PREFIX = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/english/"
SHA256 = {
    "abbrev_types.txt": "92a3e070f43d9b4c5534758ca40ad7343b04e7e29bfe0c2eb658a39445a4f779",
    "collocations.tab": "8e2da1225e4dd2cc9dba261ee231ccb134859e21b46006e7f472c5ee269af0cf",
    "ortho_context.tab": "4bbcca25ed3d3f06c02402abf8419b9f033b8adc06e7b482eca4e45f81a5dc4c",
    "sent_starters.txt": "f3f8535483e1dba487241b764945168123bca3209a9645e59acd1225dc76edac",
}


class PunktNotFoundError(LookupError):
    """nltk's English Punkt model is needed and not installed."""


def _cache_model_dir(cache_dir=None):
    return os.path.join(cache_dir or default_cache_dir(), "nltk_data", "tokenizers", "punkt_tab", "english")


def find_punkt(cache_dir=None):
    """Folder of the English punkt_tab model: nltk's own data path first, then our cache; or None."""
    import nltk.data

    try:
        return str(nltk.data.find("tokenizers/punkt_tab/english/"))
    except LookupError:
        pass
    folder = _cache_model_dir(cache_dir)
    if all(os.path.exists(os.path.join(folder, name)) for name in SHA256):
        return folder
    return None


def install_punkt(cache_dir=None):
    """Download the wheel that carries punkt_tab (PyPI, via pip), extract and verify the English
    model into the cache; returns its folder. Raises PunktNotFoundError if that fails."""
    folder = _cache_model_dir(cache_dir)
    with tempfile.TemporaryDirectory(prefix="lora-nlg-punkt-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            WHEEL,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if out.returncode != 0 or not wheels:
            raise PunktNotFoundError(f"could not download {WHEEL} from PyPI: {out.stderr.strip()[-500:]}")
        staged = os.path.join(tmp, "english")
        os.makedirs(staged)
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z:
            for name, digest in SHA256.items():
                data = z.read(MEMBER_PREFIX + name)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise PunktNotFoundError(f"{WHEEL}: {name} has an unexpected sha256")
                with open(os.path.join(staged, name), "wb") as f:
                    f.write(data)
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        try:
            os.rename(staged, folder)
        except OSError:
            if find_punkt(cache_dir) is None:
                raise
    return folder


@functools.lru_cache(maxsize=4)
def sentence_tokenizer(cache_dir=None):
    """nltk's PunktSentenceTokenizer with the English model; PunktNotFoundError if not installed."""
    from nltk.tabdata import PunktDecoder
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    folder = find_punkt(cache_dir)
    if folder is None:
        raise PunktNotFoundError(
            "nltk's English Punkt model (punkt_tab/english) is not installed. It is needed to "
            "tokenize text with several sentences exactly as GenerationEval (nltk.word_tokenize). "
            "Install it with `eval/eval.sh --install-punkt` (downloads from PyPI) or "
            "`python -c \"import nltk; nltk.download('punkt_tab')\"`."
        )
    # As nltk.tokenize.punkt.load_punkt_params (which only opens files under nltk's data path).
    decoder = PunktDecoder()
    params = PunktParameters()

    def read(name, parse):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            return parse(f)

    params.collocations = set(read("collocations.tab", decoder.tab2tups))
    params.sent_starters = read("sent_starters.txt", decoder.txt2set)
    params.abbrev_types = read("abbrev_types.txt", decoder.txt2set)
    params.ortho_context = read("ortho_context.tab", decoder.tab2intdict)
    return PunktSentenceTokenizer(params)
