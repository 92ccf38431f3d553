"""METEOR's English paraphrase table, cut down to the entries a given set of texts can use.

Why: METEOR 1.5 spends ~10 s of every run (on this 2-core machine) parsing `paraphrase-en.gz`
(5.27 M entries) into a trie before scoring anything. The jar itself ships a tool for the same
purpose (`FilterParaphrase`, "Specify the location of the filtered file to the Meteor jar with
the -a option"), but it re-reads the whole table on every call.

Why the scores do not change: an entry is (phrase1, phrase2), both in METEOR's normalized,
lower-cased tokens. `ParaphraseMatcher` uses an entry only where phrase1 occurs in one sentence
and phrase2 in the other; the probability line is never read (`ParaphraseTransducer`); candidate
matches are visited in table order. So keeping every entry whose words all occur in the texts
being scored, in the original order, produces the same matches in the same order. The word set is
`meteor.meteor_vocabulary`: a superset of what METEOR's own normalizer makes of the exact texts
sent to it (tested against the jar's `edu.cmu.meteor.util.Normalizer` on the E2E, WebNLG and
DART samples). Tests also compare METEOR with the cut table against GenerationEval's exact
command with the full table (equal to the last digit), and against the official E2E numbers.

The index (words as ids, built once, ~1 minute; cached under `cache_dir`) makes a cut take well
under a second.
"""

import gzip
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from .cache import default_cache_dir

INDEX_VERSION = 1
_CHUNK = 500_000  # entries parsed at a time while building (bounds memory)


def _index_dir(table_path, cache_dir):
    st = os.stat(table_path)
    key = hashlib.sha256(
        f"{os.path.abspath(table_path)}|{st.st_size}|{st.st_mtime_ns}|{INDEX_VERSION}".encode()
    ).hexdigest()[:16]
    return os.path.join(cache_dir, "meteor-paraphrase", key)


def build_index(table_path, index_dir):
    """Parse the gzipped table (lines: probability, phrase1, phrase2, ...) into `index_dir`:
    vocab.txt (one word per line), ids.npy (word ids, entry after entry, phrase1 then phrase2),
    len1.npy / len2.npy (words per phrase), meta.json. Written to a temporary folder, then renamed."""
    with gzip.open(table_path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) % 3:
        raise ValueError(f"{table_path}: {len(lines)} lines, not a multiple of 3")
    n_entries = len(lines) // 3
    vocab = {}
    ids, len1, len2 = [], [], []
    for start in range(0, n_entries, _CHUNK):
        stop = min(start + _CHUNK, n_entries)
        p1 = lines[3 * start + 1 : 3 * stop : 3]
        p2 = lines[3 * start + 2 : 3 * stop : 3]
        # StringTokenizer splits on " \t\n\r\f"; the table has single spaces only.
        l1 = np.fromiter((p.count(b" ") + 1 for p in p1), dtype=np.int64, count=len(p1))
        l2 = np.fromiter((p.count(b" ") + 1 for p in p2), dtype=np.int64, count=len(p2))
        words = b" ".join(p for pair in zip(p1, p2) for p in pair).split(b" ")
        if len(words) != int(l1.sum() + l2.sum()) or b"" in vocab:
            raise ValueError(f"{table_path}: unexpected whitespace in entries {start}..{stop}")
        for w in dict.fromkeys(words):
            if w not in vocab:
                vocab[w] = len(vocab)
        ids.append(np.fromiter(map(vocab.__getitem__, words), dtype=np.uint32, count=len(words)))
        len1.append(l1)
        len2.append(l2)
    del lines
    if b"" in vocab:
        raise ValueError(f"{table_path}: empty phrase or double space")
    parent = os.path.dirname(index_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".build-")
    try:
        with open(os.path.join(tmp, "vocab.txt"), "wb") as f:
            f.write(b"\n".join(vocab))
        id_dtype = np.uint16 if len(vocab) <= 1 << 16 else np.uint32
        np.save(os.path.join(tmp, "ids.npy"), np.concatenate(ids).astype(id_dtype))
        np.save(os.path.join(tmp, "len1.npy"), np.concatenate(len1).astype(np.uint8))
        np.save(os.path.join(tmp, "len2.npy"), np.concatenate(len2).astype(np.uint8))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(
                {
                    "version": INDEX_VERSION,
                    "table": os.path.abspath(table_path),
                    "entries": n_entries,
                    "words": len(vocab),
                },
                f,
            )
        try:
            os.rename(tmp, index_dir)
        except OSError:
            if not os.path.exists(os.path.join(index_dir, "meta.json")):
                raise
            shutil.rmtree(tmp)  # another process built it first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class ParaphraseIndex:
    """The table as word ids, loaded from the cache (built on first use)."""

    def __init__(self, table_path, cache_dir=None):
        self.table_path = table_path
        self.dir = _index_dir(table_path, cache_dir or default_cache_dir())
        if not os.path.exists(os.path.join(self.dir, "meta.json")):
            build_index(table_path, self.dir)
        with open(os.path.join(self.dir, "vocab.txt"), "rb") as f:
            self.words = f.read().split(b"\n")
        self.word_id = {w.decode("utf-8", "replace"): i for i, w in enumerate(self.words)}
        self.ids = np.load(os.path.join(self.dir, "ids.npy"))
        self.len1 = np.load(os.path.join(self.dir, "len1.npy")).astype(np.int64)
        self.len2 = np.load(os.path.join(self.dir, "len2.npy")).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.len1 + self.len2)[:-1]])

    def select(self, vocabulary):
        """Indices (ascending) of the entries whose words all lie in `vocabulary` (set of str)."""
        inside = np.zeros(len(self.words), dtype=bool)
        known = [self.word_id[w] for w in vocabulary if w in self.word_id]
        if not known:
            return np.zeros(0, dtype=np.int64)
        inside[known] = True
        ok = np.logical_and.reduceat(inside[self.ids], self.starts)
        return np.nonzero(ok)[0]

    def write_subset(self, entries, path):
        """Write the given entries, in table order, as a gzipped table METEOR reads with -a
        (lines: probability, phrase1, phrase2; METEOR never reads the probability: "1")."""
        entries = np.asarray(entries, dtype=np.int64)
        n1, n2 = self.len1[entries], self.len2[entries]
        lengths = n1 + n2
        total = int(lengths.sum())
        # Word ids of the chosen entries, entry after entry.
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        offset = np.arange(total) - first  # position within its entry
        token_ids = self.ids[np.repeat(self.starts[entries], lengths) + offset].astype(np.int64)
        # Pieces: "1\n" before each entry, then word, separator, word, separator, ...
        space, newline, prob = len(self.words), len(self.words) + 1, len(self.words) + 2
        end_of_phrase = (offset == np.repeat(n1 - 1, lengths)) | (offset == np.repeat(lengths - 1, lengths))
        pieces = np.empty(total * 2 + len(entries), dtype=np.int64)
        token_slot = np.arange(total) * 2 + 1 + np.repeat(np.arange(len(entries)), lengths)
        pieces[token_slot] = token_ids
        pieces[token_slot + 1] = np.where(end_of_phrase, newline, space)
        pieces[np.cumsum(2 * lengths + 1) - (2 * lengths + 1)] = prob
        table = np.array(self.words + [b" ", b"\n", b"1\n"], dtype=object)
        with gzip.open(path, "wb", compresslevel=1) as f:
            f.write(b"".join(table[pieces].tolist()))
