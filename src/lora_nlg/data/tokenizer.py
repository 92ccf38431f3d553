"""GPT-2's byte-level BPE, built from the two vocabulary files on disk (never fetched at run time).

`encoder.json` maps the 50,257 byte-level tokens to ids (`<|endoftext|>` is 50256) and
`vocab.bpe` holds the 50,000 merges in rank order. The `tokenizers` library runs the same
algorithm as OpenAI's `encoder.py` (which upstream used): the GPT-2 regex splits the text into
words, each word's UTF-8 bytes are mapped to printable characters, and merges are applied by rank.

`<|endoftext|>` is an ordinary string to `encode`, as in upstream's encoder: a data text that
happens to contain it is never turned into the end-of-text id. The id is added explicitly
(`eos_id`) where a sequence needs it.
"""

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from lora_nlg.catalog import EOS_ID
from lora_nlg.data.sources import default_data_dir, default_mirror
from lora_nlg.jsonl import read_json

EOS_TOKEN = "<|endoftext|>"
VOCAB_FILES = ("encoder.json", "vocab.bpe")


def default_vocab_dir():
    """Where the GPT-2 vocabulary lives.

    In order: env `NLG_VOCAB_DIR`; `<data dir>/gpt2-vocab` (written by scripts/create_datasets.sh; `sources.default_data_dir`);
    `<mirror>/gpt2-vocab` with the data mirror of `sources.default_mirror()` (env `NLG_DATA_MIRROR`,
    else `<repo>/../shared/data`).
    """
    env = os.environ.get("NLG_VOCAB_DIR")
    if env:
        return Path(env)
    mirror = default_mirror()
    candidates = [default_data_dir() / "gpt2-vocab"] + ([mirror / "gpt2-vocab"] if mirror else [])
    for folder in candidates:
        if all((folder / name).is_file() for name in VOCAB_FILES):
            return folder
    raise FileNotFoundError(
        "GPT-2 vocabulary (encoder.json, vocab.bpe) not found in any of: "
        + ", ".join(str(c) for c in candidates)
        + ". Run `bash scripts/create_datasets.sh` (it writes data/gpt2-vocab/), "
        "or set NLG_VOCAB_DIR to a folder holding both files."
    )


def read_merges(path):
    """The merges of `vocab.bpe` as (left, right) pairs, in rank order (the header line skipped)."""
    merges = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line_no == 1 and line.startswith("#version"):
                continue
            if not line:
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{path}:{line_no}: expected a merge 'LEFT RIGHT', got {line!r}")
            merges.append((parts[0], parts[1]))
    return merges


class GPT2Tokenizer:
    """GPT-2 byte-level BPE: `encode(text) -> ids`, `decode(ids) -> text`, `eos_id = 50256`."""

    eos_id = EOS_ID

    def __init__(self, vocab, merges):
        """vocab: token string -> id (encoder.json); merges: (left, right) pairs in rank order."""
        if vocab.get(EOS_TOKEN) != EOS_ID:
            raise ValueError(f"vocabulary maps {EOS_TOKEN!r} to {vocab.get(EOS_TOKEN)}, expected {EOS_ID}")
        bpe = models.BPE(
            vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
        )
        self._tok = Tokenizer(bpe)
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        self._tok.decoder = decoders.ByteLevel()
        self.vocab_size = self._tok.get_vocab_size()

    @classmethod
    def from_dir(cls, path=None):
        """Load `encoder.json` and `vocab.bpe` from `path` (default: `default_vocab_dir()`)."""
        folder = Path(path) if path is not None else default_vocab_dir()
        missing = [name for name in VOCAB_FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder}: missing {', '.join(missing)}; run `bash scripts/create_datasets.sh` "
                "to obtain the GPT-2 vocabulary"
            )
        vocab = read_json(folder / "encoder.json")
        return cls(vocab, read_merges(folder / "vocab.bpe"))

    def __len__(self):
        return self.vocab_size

    def encode(self, text):
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids):
        # Bytes that do not form valid UTF-8 (a cut multi-byte character) become U+FFFD, as
        # OpenAI's decoder does with errors="replace".
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def decode_batch(self, batch):
        return self._tok.decode_batch([list(ids) for ids in batch], skip_special_tokens=False)

    def token_to_id(self, token):
        return self._tok.token_to_id(token)
