"""Corpus NIST as the official E2E scorer computes it (mteval-v13a-sig.pl), and its `-p` variant.

Tokens: mteval-v13a (13a) tokenization, lowercased. n = 1..5.
- Information weights from all n-grams of all (non-empty) references of the scored set:
  info(w1..wn) = log2(count(w1..wn-1) / count(w1..wn)); for unigrams log2(total reference
  words / count(w)).
- Per order n: sum over segments of info(g) x min(count in hypothesis, max count in any single
  reference), divided by max(total hypothesis n-grams, 1). NIST = sum over n = 1..5, times
- the length penalty exp(-beta ln^2(c / L)) when c < L, beta = -ln 0.5 / ln^2 1.5, c = total
  hypothesis words. L is where the two variants differ:
    `official` (Perl mteval-v13a-sig, the scorer's default): L = total reference words /
      (non-empty references / segments), i.e. divided by the mean number of references;
    `python` (the scorer's `-p`, pymteval, used in microsoft/LoRA's README): L = sum over
      segments of the mean reference length of that segment. It also tokenizes as pymteval
      (`bleu.pymteval_tokenize`: an empty text is one empty token), lowercases the tokens with
      Python's str.lower (the Perl script: ASCII only), counts len - n + 1 hypothesis n-grams
      per segment even when that is 0 or negative, and keeps empty references.
"""

import collections
import math

from .bleu import LOWERCASE, TOKENIZERS, pymteval_tokenize

MAX_N = 5
BETA = -math.log(0.5) / math.log(1.5) ** 2


def _ref_len_mteval(ref_words):
    """Total reference words / mean number of references per segment (mteval-v13a-sig)."""
    n_refs = sum(len(rs) for rs in ref_words)
    return sum(len(r) for rs in ref_words for r in rs) / (n_refs / len(ref_words))


def _ref_len_pymteval(ref_words):
    """Sum over segments of the segment's mean reference length (pymteval, `-p`)."""
    return sum(sum(len(r) for r in rs) / len(rs) for rs in ref_words)


def _tokens_mteval(text):
    return TOKENIZERS["13a"](LOWERCASE["ascii"](text))


def _tokens_pymteval(text):
    return [w.lower() for w in pymteval_tokenize(text)]


# tokenize: text -> tokens; hyp_ngrams(len, n): the hypothesis n-grams a segment adds to the
# denominator; divisor(total): the denominator (pymteval divides by its total as is, and fails
# on 0); skip_empty_refs: the Perl script's padding references are empty.
NIST_VARIANTS = {
    "official": dict(
        tokenize=_tokens_mteval,
        hyp_ngrams=lambda length, n: max(length - n + 1, 0),
        divisor=lambda total: max(total, 1),
        skip_empty_refs=True,
        reference_length=_ref_len_mteval,
        label="NIST (mteval-v13a-sig: the official E2E default)",
    ),
    "python": dict(
        tokenize=_tokens_pymteval,
        hyp_ngrams=lambda length, n: length - n + 1,
        divisor=lambda total: total or 1,
        skip_empty_refs=False,
        reference_length=_ref_len_pymteval,
        label="NIST -p (pymteval, the scorer's -p, as in microsoft/LoRA's README)",
    ),
}


def _ngrams(words, n):
    return collections.Counter(zip(*[words[i:] for i in range(n)]))


def nist(hyps, refs, variant="official"):
    """Corpus NIST of `hyps` (list of str) against `refs` (list of lists of str; `None` is no
    reference, an empty one is skipped by `official`) as the E2E scorer computes it; `variant`
    in NIST_VARIANTS."""
    spec = NIST_VARIANTS[variant]
    tokenize = spec["tokenize"]
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
    if not hyps:
        raise ValueError("no segment to score")

    hyp_words = [tokenize(h) for h in hyps]
    ref_words = [
        [tokenize(r) for r in rs if r is not None and (r.strip() or not spec["skip_empty_refs"])] for rs in refs
    ]
    for i, rs in enumerate(ref_words):
        if not rs:
            raise ValueError(f"segment {i} has no reference")

    # n-gram counts of every reference, once: ref_ngrams[segment][reference][n]
    ref_ngrams = [[[None] + [_ngrams(r, n) for n in range(1, MAX_N + 1)] for r in rs] for rs in ref_words]
    # Information weights: counts of every n-gram over all references of the set.
    counts = collections.Counter()
    for rs in ref_ngrams:
        for per_order in rs:
            for n in range(1, MAX_N + 1):
                counts.update(per_order[n])
    total_ref_words = sum(len(r) for rs in ref_words for r in rs)

    def info(g):
        context = counts[g[:-1]] if len(g) > 1 else total_ref_words
        return math.log2(context / counts[g])

    info_sum = [0.0] * (MAX_N + 1)
    hyp_ngrams = [0] * (MAX_N + 1)
    for h, rs in zip(hyp_words, ref_ngrams):
        for n in range(1, MAX_N + 1):
            hyp_ngrams[n] += spec["hyp_ngrams"](len(h), n)
            ref_max = collections.Counter()
            for per_order in rs:
                ref_max |= per_order[n]  # element-wise maximum
            for g, c in _ngrams(h, n).items():
                if g in ref_max:
                    info_sum[n] += info(g) * min(c, ref_max[g])
    score = sum(info_sum[n] / spec["divisor"](hyp_ngrams[n]) for n in range(1, MAX_N + 1))

    return score * length_penalty(hyp_ngrams[1], spec["reference_length"](ref_words))


def length_penalty(sys_len, ref_len):
    """NIST brevity penalty for total system length `sys_len` against reference length `ref_len`."""
    ratio = sys_len / ref_len if ref_len else 1.0
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-BETA * math.log(ratio) ** 2)
