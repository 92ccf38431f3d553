"""GPT2Tokenizer against two references, on every text of the E2E, WebNLG and DART splits.

References, both built from the same local encoder.json / vocab.bpe:
- transformers' GPT2Tokenizer (in transformers 5 it runs on the `tokenizers` library too);
- OpenAI's pure-Python BPE algorithm (openai/gpt-2 `encoder.py`, which upstream's
  `examples/NLG/src/encoder.py` copies), re-typed below. transformers 5 no longer ships a slow
  GPT-2 tokenizer, and this is the very algorithm upstream encoded its data with, so the
  comparison is not tokenizers-vs-tokenizers.
The texts: every context and reference of every prepared split and of upstream's E2E files, and
" " + reference as completions are encoded, deduplicated: about 174,000 texts. transformers sees all of them. The pure-Python
reference (too slow for all of them on a busy 2-core machine) sees a large deterministic sample:
every text with a non-ASCII character (about 34,600: the risky ones for byte-level BPE) and every
8th of the ASCII-only ones in sorted order (about 17,500), plus the edge cases below.
"""

import json
import os
from pathlib import Path

import pytest
import regex
import upstream_files as U

from lora_nlg.data import files
from lora_nlg.data import sources as S
from lora_nlg.data import tokenizer as T
from lora_nlg.data.tokenizer import GPT2Tokenizer, default_vocab_dir


@pytest.fixture(scope="module")
def vocab_dir(mirror):
    return mirror / "gpt2-vocab"


@pytest.fixture(scope="module")
def tok(vocab_dir):
    return GPT2Tokenizer.from_dir(vocab_dir)


@pytest.fixture(scope="module")
def vocab_and_merges(vocab_dir):
    with open(vocab_dir / "encoder.json", encoding="utf-8") as f:
        vocab = json.load(f)
    return vocab, T.read_merges(vocab_dir / "vocab.bpe")


EDGE_TEXTS = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    " \n \n",
    "a\n\nb",
    "tab\there",
    "trailing  ",
    "  leading",
    "Hello world",
    " Hello world",
    "HELLO WORLD'S",
    "don't DON'T we'll I'M you're",
    "x's 've",
    "3.14159 1,000,000 2020-07-04",
    "£20-25 and €30 or ¥5",
    "Café Adriatic — naïve façade",
    "Raúl_Fernando_Sendic_Rodríguez",
    "日本語のテキスト",
    "emoji 🙂👍🏽",
    "\u200b zero width",
    "a\u00a0b",
    "<|endoftext|> in text",
    "!!!???...",
    "   multiple   spaces   between   ",
]


@pytest.fixture(scope="module")
def all_texts(mirror, prepared):
    """Every context and completion of every prepared split (E2E, WebNLG, DART valid/test: the
    texts our files encode) and of upstream's E2E valid.txt / test.txt (Moses-tokenized)."""
    texts = set(EDGE_TEXTS)
    n = 0
    for path in sorted(prepared.glob("*/*_formatted.jsonl")):
        for pair in files.read_formatted(path):
            texts.update((pair.context, pair.completion, " " + pair.completion))
            n += 1
    for name in ("valid.txt", "test.txt"):
        for pair in U.read_e2e_upstream_txt(mirror / "e2e" / "microsoft-format" / name):
            texts.update((pair.context, pair.completion, " " + pair.completion))
            n += 1
    assert n == 42061 + 4672 + 4693 + 18025 + 2258 + 4928 + 6980 + 12551 + 4672 + 4693
    return sorted(texts)


@pytest.fixture(scope="module")
def our_ids(tok, all_texts):
    return tok.encode_batch(all_texts)


# --- OpenAI's GPT-2 BPE (openai/gpt-2 src/encoder.py), pure Python ---------------------------


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


class OpenAIEncoder:
    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def __init__(self, encoder, merges):
        self.encoder = encoder
        self.byte_encoder = _bytes_to_unicode()
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {}

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
        self.cache[token] = word
        return word

    def encode(self, text):
        ids = []
        for token in self.pat.findall(text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token))
        return ids


def _first_mismatch(texts, got, want):
    for text, g, w in zip(texts, got, want):
        if g != w:
            return f"{text!r}: ours {g} reference {w}"
    return None


def test_vocabulary_size_and_eos(tok, vocab_and_merges):
    vocab, merges = vocab_and_merges
    assert len(tok) == len(vocab) == 50257
    assert len(merges) == 50000
    assert tok.eos_id == 50256 == tok.token_to_id("<|endoftext|>") == vocab["<|endoftext|>"]
    assert tok.decode([50256]) == "<|endoftext|>"


def test_endoftext_in_data_is_plain_text(tok):
    # As in upstream's encoder: a data string never becomes the end-of-text id.
    ids = tok.encode("<|endoftext|>")
    assert 50256 not in ids and tok.decode(ids) == "<|endoftext|>"


def test_known_ids(tok):
    # GPT-2's documented examples (transformers' GPT2Tokenizer docstring).
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" Hello world") == [18435, 995]
    assert tok.encode_batch(["Hello world", " Hello world"]) == [[15496, 995], [18435, 995]]


def test_same_ids_as_transformers_on_every_dataset_text(vocab_and_merges, all_texts, our_ids):
    from transformers import GPT2Tokenizer as HFTokenizer

    vocab, merges = vocab_and_merges
    hf = HFTokenizer(vocab=vocab, merges=merges)  # vocab_file= would silently give an empty one
    assert len(hf) == 50257
    assert hf.encode("Hello world", add_special_tokens=False) == [15496, 995]
    keep = [i for i, t in enumerate(all_texts) if "<|endoftext|>" not in t]  # transformers makes it special
    texts = [all_texts[i] for i in keep]
    # Through its backend: the same tokenizer transformers built, without per-text BatchEncoding cost.
    want = [e.ids for e in hf.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert want[:200] == hf(texts[:200], add_special_tokens=False)["input_ids"]
    got = [our_ids[i] for i in keep]
    assert _first_mismatch(texts, got, want) is None


def test_same_ids_as_openai_pure_python_bpe_on_a_large_sample(tok, vocab_and_merges, all_texts, our_ids):
    vocab, merges = vocab_and_merges
    reference = OpenAIEncoder(vocab, merges)
    ascii_only = [i for i, t in enumerate(all_texts) if t.isascii()]
    edge = set(EDGE_TEXTS)
    picked = [i for i, t in enumerate(all_texts) if not t.isascii() or t in edge] + ascii_only[::8]
    sample = [all_texts[i] for i in picked]
    assert len(all_texts) > 150_000 and len(sample) > 50_000
    want = [reference.encode(t) for t in sample]
    got = [our_ids[i] for i in picked]
    assert _first_mismatch(sample, got, want) is None
    assert [tok.encode(t) for t in sample[:2000]] == want[:2000]


def test_decode_inverts_encode(tok, all_texts, our_ids):
    decoded = tok.decode_batch(our_ids)
    assert _first_mismatch(all_texts, decoded, all_texts) is None
    assert [tok.decode(tok.encode(t)) for t in EDGE_TEXTS] == EDGE_TEXTS


def test_decode_of_a_cut_character_gives_replacement_char(tok):
    ids = tok.encode("🙂")
    assert len(ids) > 1
    assert "\ufffd" in tok.decode(ids[:1])


def test_default_vocab_dir_order(monkeypatch, tmp_path, mirror):
    fake_repo = tmp_path / "repo"
    fake_repo.mkdir()
    monkeypatch.setattr(S, "REPO", fake_repo)
    monkeypatch.delenv("NLG_VOCAB_DIR", raising=False)
    monkeypatch.setenv("NLG_DATA_MIRROR", str(mirror))
    assert default_vocab_dir() == mirror / "gpt2-vocab"
    local = fake_repo / "data" / "gpt2-vocab"
    local.mkdir(parents=True)
    for name in ("encoder.json", "vocab.bpe"):
        os.symlink(mirror / "gpt2-vocab" / name, local / name)
    assert default_vocab_dir() == local
    monkeypatch.setenv("NLG_VOCAB_DIR", str(tmp_path / "explicit"))
    assert default_vocab_dir() == tmp_path / "explicit"


def test_default_vocab_dir_missing_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setattr(S, "REPO", tmp_path / "repo")
    monkeypatch.delenv("NLG_VOCAB_DIR", raising=False)
    monkeypatch.setenv("NLG_DATA_MIRROR", str(tmp_path / "no-mirror"))
    with pytest.raises(FileNotFoundError, match="scripts/create_datasets.sh"):
        default_vocab_dir()


def test_from_dir_errors(tmp_path, vocab_dir):
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        GPT2Tokenizer.from_dir(tmp_path)
    (tmp_path / "encoder.json").write_bytes((vocab_dir / "encoder.json").read_bytes())
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t\nbad line here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.bpe:3: expected a merge"):
        GPT2Tokenizer.from_dir(tmp_path)


def test_wrong_eos_id_is_refused():
    with pytest.raises(ValueError, match="50256"):
        GPT2Tokenizer({"a": 0, "<|endoftext|>": 1}, [])


def test_vocab_path_can_be_a_string(vocab_dir):
    assert GPT2Tokenizer.from_dir(str(vocab_dir)).encode("Hello world") == [15496, 995]
    assert isinstance(default_vocab_dir(), Path)
