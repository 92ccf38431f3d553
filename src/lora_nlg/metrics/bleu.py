"""Corpus BLEU exactly as the official scripts compute it.

All: n = 1..4, hypothesis n-gram counts clipped by the maximum count in any single reference,
brevity penalty with the reference length closest to the hypothesis length (ties to the
shorter), sums over the corpus; all but `pymteval`: no smoothing (a zero n-gram precision gives
0). They differ:

| variant            | script                                         | tokens     | case            | empty reference               | scale  |
|--------------------|------------------------------------------------|------------|-----------------|-------------------------------|--------|
| `mteval`           | mteval-v13a-sig.pl (official E2E scorer)       | 13a        | ASCII lowercase | ignored (padding)             | 0..1   |
| `multi-bleu-detok` | multi-bleu-detok.perl (GenerationEval)         | 13a        | as is           | a length-0 reference (counts) | 0..100 |
| `multi-bleu`       | multi-bleu.perl (WebNLG 2017 challenge)        | whitespace | as is           | a length-0 reference (counts) | 0..100 |
| `multi-bleu-lc`    | multi-bleu.perl -lc                            | whitespace | lowercase       | a length-0 reference (counts) | 0..100 |
| `pymteval`         | e2e-metrics pymteval BLEUScore (scorer's `-p`) | pymteval   | Python lower()  | one empty token (counts)      | 0..1   |

13a: the mteval-v13a tokenization (`&quot;` etc. unescaped, punctuation split off, `.`/`,` split
unless next to a digit), sacrebleu's `Tokenizer13a`. The mteval scripts lowercase with Perl
`tr/A-Z/a-z/` (ASCII only: `É` stays). `None` as a reference always means "no reference".
`pymteval` (the E2E scorer's `-p`, used by microsoft/LoRA) differs in three more ways: its
tokenizer (a Python port of the 13a rules) makes an empty text one empty token; the n-gram
totals of a hypothesis are len - n + 1 even when that is 0 or negative (short outputs lower the
denominator); zero counts are floored (hits 1e-15, totals 1e-9) instead of giving 0, and the
brevity penalty also applies when the lengths are equal (exp(0) = 1: no change).
sacrebleu's BLEU gives the same numbers (`tokenize='13a'`, `smooth_method='none'`, padding
`None`/`''` as above; tested); statistics are computed here once per segment so that subsets
(WebNLG all / seen / unseen) and NIST reuse them.
"""

import collections
import dataclasses
import math
import re

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

MAX_N = 4
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_TOKENIZER_13A = Tokenizer13a()

# e2e-metrics metrics/pymteval.py NGramScore.tokenize: the mteval-v13a rules, in order.
_PYMTEVAL_ENTITIES = (
    ("<skipped>", ""),
    ("-\n", ""),
    ("\n", " "),
    ("&quot;", '"'),
    ("&amp;", "&"),
    ("&lt;", "<"),
    ("&gt;", ">"),
)
_PYMTEVAL_RULES = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 "),  # punctuation
        (r"([^0-9])([\.,])", r"\1 \2 "),  # period and comma unless preceded by a digit
        (r"([\.,])([^0-9])", r" \1 \2"),  # period and comma unless followed by a digit
        (r"([0-9])(-)", r"\1 \2 "),  # dash after a digit
        (r"\s+", " "),
    )
)


def pymteval_tokenize(text):
    """Tokens as pymteval makes them (before lowercasing): `"" -> [""]`, one empty token."""
    for old, new in _PYMTEVAL_ENTITIES:
        text = text.replace(old, new)
    text = " " + text + " "
    for pattern, repl in _PYMTEVAL_RULES:
        text = pattern.sub(repl, text)
    return text.strip().split(" ")


# ngram_totals: "ngrams" = the n-grams there are (max(len - n + 1, 0)), "length" = len - n + 1
# (pymteval). floor: pymteval's floors of zero counts (see the module docstring), else None.
BLEU_VARIANTS = {
    "mteval": dict(
        tokenize="13a", lowercase="ascii", count_empty_refs=False, scale=1.0, ngram_totals="ngrams", floor=None
    ),
    "multi-bleu-detok": dict(
        tokenize="13a", lowercase=None, count_empty_refs=True, scale=100.0, ngram_totals="ngrams", floor=None
    ),
    "multi-bleu": dict(
        tokenize="whitespace", lowercase=None, count_empty_refs=True, scale=100.0, ngram_totals="ngrams", floor=None
    ),
    "multi-bleu-lc": dict(
        tokenize="whitespace",
        lowercase="unicode",
        count_empty_refs=True,
        scale=100.0,
        ngram_totals="ngrams",
        floor=None,
    ),
    "pymteval": dict(
        tokenize="pymteval",
        lowercase="tokens",
        count_empty_refs=True,
        scale=1.0,
        ngram_totals="length",
        floor=(1e-15, 1e-9),
    ),
}
TOKENIZERS = {
    "13a": lambda text: _TOKENIZER_13A(text.rstrip()).split(),
    "whitespace": str.split,
    "pymteval": pymteval_tokenize,
}
# Applied to the text before tokenizing; "tokens": to each token after (pymteval).
LOWERCASE = {
    "ascii": lambda text: text.translate(_ASCII_LOWER),
    "unicode": str.lower,
    "tokens": lambda text: text,
    None: lambda text: text,
}


@dataclasses.dataclass(frozen=True)
class BleuStats:
    """Corpus BLEU with the numbers multi-bleu prints."""

    score: float  # on the variant's scale (0..1 for mteval, 0..100 otherwise)
    precisions: tuple  # n-gram precisions in percent, n = 1..4
    bp: float
    hyp_len: int
    ref_len: int


def tokenize(text, variant):
    """Tokens of `text` as `variant` scores them (lowercased as the script does)."""
    spec = BLEU_VARIANTS[variant]
    words = TOKENIZERS[spec["tokenize"]](LOWERCASE[spec["lowercase"]](text))
    return [w.lower() for w in words] if spec["lowercase"] == "tokens" else words


def _ngrams(words, n):
    return collections.Counter(zip(*[words[i:] for i in range(n)]))


def segment_statistics(hyp_words, refs_words):
    """(hyp_len, closest ref_len, correct[1..4], total[1..4]) of one segment (token lists)."""
    hyp_len = len(hyp_words)
    ref_len = min((len(r) for r in refs_words), key=lambda n: (abs(n - hyp_len), n))
    correct, total = [0] * MAX_N, [0] * MAX_N
    for n in range(1, MAX_N + 1):
        ref_max = collections.Counter()
        for r in refs_words:
            for g, c in _ngrams(r, n).items():
                if c > ref_max[g]:
                    ref_max[g] = c
        for g, c in _ngrams(hyp_words, n).items():
            total[n - 1] += c
            if g in ref_max:
                correct[n - 1] += min(c, ref_max[g])
    return hyp_len, ref_len, correct, total


def corpus_statistics(hyps, refs, variant="multi-bleu-detok"):
    """Per-segment statistics (see `segment_statistics`) of `hyps` (list of str) against `refs`
    (list of lists of str, any lengths)."""
    spec = BLEU_VARIANTS[variant]
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
    out = []
    for i, (hyp, rs) in enumerate(zip(hyps, refs)):
        kept = [r for r in rs if r is not None and (spec["count_empty_refs"] or r.strip())]
        if not kept:
            raise ValueError(f"segment {i} has no reference")
        hyp_words = tokenize(hyp, variant)
        hyp_len, ref_len, correct, total = segment_statistics(hyp_words, [tokenize(r, variant) for r in kept])
        if spec["ngram_totals"] == "length":
            total = [len(hyp_words) - n + 1 for n in range(1, MAX_N + 1)]
        out.append((hyp_len, ref_len, correct, total))
    return out


def score_statistics(stats, variant="multi-bleu-detok"):
    """BleuStats of summed segment statistics, as multi-bleu.perl / mteval-v13a compute it."""
    hyp_len = sum(s[0] for s in stats)
    ref_len = sum(s[1] for s in stats)
    correct = [sum(s[2][k] for s in stats) for k in range(MAX_N)]
    total = [sum(s[3][k] for s in stats) for k in range(MAX_N)]
    precisions = tuple(100.0 * c / t if t else 0.0 for c, t in zip(correct, total))
    floor = BLEU_VARIANTS[variant]["floor"]
    if floor is not None:  # pymteval BLEUScore.bleu(): never 0, no special case
        bp = math.exp(1.0 - ref_len / (hyp_len or 1e-5)) if hyp_len <= ref_len else 1.0
        score = bp * math.exp(
            sum(math.log(max(c, floor[0]) / max(t, floor[1])) for c, t in zip(correct, total)) / MAX_N
        )
    elif hyp_len == 0 or ref_len == 0:
        bp, score = (0.0 if ref_len else 1.0), 0.0
    else:
        bp = math.exp(min(0.0, 1.0 - ref_len / hyp_len))
        score = 0.0 if not all(correct) else bp * math.exp(sum(math.log(c / t) for c, t in zip(correct, total)) / MAX_N)
    return BleuStats(
        score=score * BLEU_VARIANTS[variant]["scale"], precisions=precisions, bp=bp, hyp_len=hyp_len, ref_len=ref_len
    )


def bleu_stats(hyps, refs, variant="multi-bleu-detok"):
    """Corpus BLEU of `hyps` against `refs` as `variant` (BLEU_VARIANTS) computes it."""
    if not hyps:
        raise ValueError("no segment to score")
    return score_statistics(corpus_statistics(hyps, refs, variant), variant)


def bleu(hyps, refs, variant="multi-bleu-detok"):
    """Corpus BLEU as a float on the variant's scale; see `bleu_stats`."""
    return bleu_stats(hyps, refs, variant).score
