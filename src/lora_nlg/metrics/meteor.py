"""METEOR 1.5 from the jar in PyPI `pycocoevalcap`, one JVM per evaluation.

Exactly the official E2E scorer's call (pycocoevalcap `Meteor`):
`java -Xmx2G -jar meteor-1.5.jar - - -stdio -l en -norm`; per segment
`SCORE ||| ref1 ||| ... ||| refN ||| hyp` returns sufficient statistics (METEOR aligns the
hypothesis with each reference and keeps the best-scoring one); `EVAL ||| stats ||| ...` returns
the segment scores and the corpus score computed from the pooled statistics (not a mean of
segment scores). GenerationEval's file mode (`meteor-1.5.jar hyp refs -l en -norm -r N`) gives
the same numbers for the same references (tested). The text is sent as given: the caller
tokenizes (PTB tokens for E2E; nltk word_tokenize for GenerationEval).

Differences from pycocoevalcap's wrapper, none of which changes a score:
- each distinct (hypothesis, references) segment is scored once, then one EVAL per subset
  (WebNLG all / seen / unseen) on the pooled statistics;
- the JVM runs with the C1 compiler and serial GC (`java.SHORT_RUN_FLAGS`, same output,
  half the CPU); `jobs` JVMs can score shares of the segments in parallel;
- lines are streamed by a writer thread instead of one round trip per segment;
- by default METEOR gets a paraphrase table cut down to the entries these texts can use
  (`paraphrase_table.py`), which saves ~10 s of table loading; `paraphrase="full"` uses the
  shipped table as is.
`|||` and line breaks inside a text would break the protocol: they are replaced by a space
(pycocoevalcap deletes `|||` from the hypothesis only).
"""

import concurrent.futures
import os
import re
import shutil
import subprocess
import tempfile
import threading

from . import java
from .paraphrase_table import ParaphraseIndex

METEOR_ARGS = ("-", "-", "-stdio", "-l", "en", "-norm")
_BREAKS = re.compile(r"\|\|\||[\n\r\x0b\x0c\u2028\u2029\x85]")


def _clean(text):
    """pycocoevalcap: hyp.replace('|||', '').replace('  ', ' '); here for every text."""
    return _BREAKS.sub(" ", text).replace("  ", " ")


def paraphrase_table_path():
    return os.path.join(os.path.dirname(java.meteor_jar()), "data", "paraphrase-en.gz")


# METEOR's Normalizer (edu.cmu.meteor.util.Normalizer, English, punctuation kept): its letters and
# digits; every other character can become a token boundary.
_ALNUM = "0-9A-Za-z\u0160\u017d\u0161\u017e\u0178\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u017e"
_ATOM = re.compile(f"[{_ALNUM}]+|.", re.DOTALL)
_JAVA_WHITESPACE = re.compile(r"[ \t\n\r\f]+")  # java.util.StringTokenizer
_CHAR_NORMALIZATION = (
    ("`", "'"),
    ("\u2018", "'"),
    ("\u2019", "'"),
    ("\u201c", '"'),
    ("\u201d", '"'),
    ("''", '"'),
    ("\u2013", "-"),
    ("--", "-"),
)


def meteor_vocabulary(texts):
    """A superset of the tokens METEOR's `-norm` makes of `texts` (normalized, lower-cased).

    The Normalizer maps quotes and dashes (`` ` `` -> `'`, `--` -> `-`, ...), puts spaces around
    punctuation, splits contractions (`don 't`), keeps `.`/`,` inside numbers, drops the dots of
    `U.S.`, splits a final period. So each token it makes is a run of consecutive "atoms" (runs of
    its letters/digits, or single other characters) of one whitespace-separated word, possibly
    without its dots, then lower-cased. This returns every such run of every word, with and
    without dots, as is and lower-cased (Python lower() and casefold()); a test checks it
    contains the jar's own normalizer output on the sample texts."""
    vocab = set()
    for text in texts:
        variants = {text}
        normalized = text
        for old, new in _CHAR_NORMALIZATION:
            normalized = normalized.replace(old, new)
        variants.add(normalized)
        for variant in variants:
            for word in _JAVA_WHITESPACE.split(variant):
                atoms = _ATOM.findall(word)
                for i in range(len(atoms)):
                    run = ""
                    for atom in atoms[i:]:
                        run += atom
                        vocab.add(run)
                        vocab.add(run.replace(".", ""))
    return vocab | {w.lower() for w in vocab} | {w.casefold() for w in vocab}


def default_jobs():
    """JVMs scoring in parallel: 1 on up to 2 cores (the other core computes the other metrics;
    a second JVM adds its start-up to the CPU bill), 2 on more."""
    return 2 if (os.cpu_count() or 1) > 2 else 1


class _Jvm:
    """One `meteor-1.5.jar -stdio` process; stderr goes to a file so no pipe can fill up."""

    def __init__(self, paraphrase_file, stderr_path):
        args = list(METEOR_ARGS) + (["-a", paraphrase_file] if paraphrase_file else [])
        self.stderr = open(stderr_path, "w+b")
        # The shipped 5 M-entry table is parsed faster with the default JIT (C2).
        command = java.java_command("-jar", java.meteor_jar(), *args, short_run=paraphrase_file is not None)
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)

    def readline(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            err = self.stderr.read().decode("utf-8", "replace")
            raise RuntimeError(f"METEOR stopped (exit {self.proc.returncode}): {err[-2000:]}")
        return line.decode("utf-8").strip()

    def send(self, line):
        self.proc.stdin.write(line.encode("utf-8"))
        self.proc.stdin.flush()

    def score(self, segments):
        """Statistics of each (hyp, refs) segment. A writer thread sends the SCORE lines while
        this thread reads, so neither pipe fills up."""

        def write():
            try:
                for hyp, rs in segments:
                    # Never strip: an empty hypothesis is the empty field after the last |||.
                    self.proc.stdin.write(("SCORE ||| " + " ||| ".join(rs) + " ||| " + hyp + "\n").encode("utf-8"))
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        stats = [self.readline() for _ in segments]
        writer.join()
        return stats

    def evaluate(self, stats):
        """Corpus score of the pooled statistics (the segment scores it also prints are skipped)."""
        self.send("EVAL ||| " + " ||| ".join(stats) + "\n")
        for _ in stats:
            self.readline()
        return float(self.readline())

    def close(self):
        try:
            if self.proc.poll() is None:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.stderr.close()


class MeteorJob:
    """METEOR started now, scored in the background; `result()` waits for the scores.

    The constructor cuts the paraphrase table (in the calling thread, ~1 s) and starts the
    JVM(s); the caller can compute other metrics while METEOR scores. Arguments as
    `meteor_subsets`; `index` reuses an already loaded ParaphraseIndex.
    """

    def __init__(self, hyps, refs, subsets=None, paraphrase="filtered", cache_dir=None, jobs=None, index=None):
        if len(hyps) != len(refs):
            raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
        for i, rs in enumerate(refs):
            if not rs:
                raise ValueError(f"segment {i} has no reference")
        if paraphrase not in ("filtered", "full"):
            raise ValueError(f"paraphrase must be 'filtered' or 'full', not {paraphrase!r}")
        self.subsets = subsets if subsets is not None else {"all": list(range(len(hyps)))}
        # Distinct segments, each scored once.
        self.keys = [(_clean(h), tuple(_clean(r) for r in rs)) for h, rs in zip(hyps, refs)]
        self.unique = {}
        for i in sorted(set(i for idx in self.subsets.values() for i in idx)):
            self.unique.setdefault(self.keys[i], len(self.unique))
        segments = list(self.unique)
        if not segments:
            raise ValueError("no segment to score")
        self.tmpdir = tempfile.mkdtemp(prefix="lora-nlg-meteor-")
        self.jvms, self.pool = [], None
        try:
            table = None
            if paraphrase == "filtered":
                index = index or ParaphraseIndex(paraphrase_table_path(), cache_dir)
                table = os.path.join(self.tmpdir, "paraphrase-subset.gz")
                vocabulary = meteor_vocabulary([t for h, rs in segments for t in (h, *rs)])
                index.write_subset(index.select(vocabulary), table)
            jobs = max(1, min(jobs or default_jobs(), len(segments)))
            for k in range(jobs):
                self.jvms.append(_Jvm(table, os.path.join(self.tmpdir, f"stderr{k}.txt")))
            # Contiguous shares of the segments, scored in parallel; EVAL on the first JVM.
            bounds = [len(segments) * k // jobs for k in range(jobs + 1)]
            self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
            self.parts = [
                self.pool.submit(jvm.score, segments[bounds[k] : bounds[k + 1]]) for k, jvm in enumerate(self.jvms)
            ]
        except BaseException:
            self.close()
            raise

    def result(self):
        """dict subset name -> corpus METEOR (blocks until scored); releases the JVMs."""
        try:
            stats = [line for part in self.parts for line in part.result()]
            for jvm in self.jvms[1:]:
                jvm.close()
            return {
                name: self.jvms[0].evaluate([stats[self.unique[self.keys[i]]] for i in idx])
                for name, idx in self.subsets.items()
            }
        finally:
            self.close()

    def close(self):
        for jvm in self.jvms:
            jvm.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def meteor_subsets(hyps, refs, subsets=None, paraphrase="filtered", cache_dir=None, jobs=None):
    """Corpus METEOR of each subset.

    hyps: list of str; refs: list of lists of str (one list per hypothesis, >= 1 reference);
    subsets: dict name -> list of segment indices (default {"all": every segment}).
    paraphrase: "filtered" (default: same scores, faster) or "full".
    jobs: JVMs scoring shares of the segments in parallel (default `default_jobs()`); the
    pooled statistics are evaluated by one of them.
    Returns dict name -> float.
    """
    return MeteorJob(hyps, refs, subsets, paraphrase, cache_dir, jobs).result()


def meteor(hyps, refs, paraphrase="filtered", cache_dir=None, jobs=None):
    """Corpus METEOR 1.5 (`-l en -norm`) of `hyps` against `refs`; see `meteor_subsets`."""
    return meteor_subsets(hyps, refs, None, paraphrase, cache_dir, jobs)["all"]
