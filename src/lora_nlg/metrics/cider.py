"""CIDEr-D as the official E2E scorer computes it (pycocoevalcap `Cider`, the whole set in one call).

Input: PTB-tokenized text, split on whitespace. n = 1..4, sigma = 6.
- Document frequency df(g): number of segments of THIS call whose references contain g; so the
  score of a segment depends on the set it is scored with (score the 630 E2E test MRs together).
- Vector of a text per order n: tf(g) x (log(number of segments) - log(max(1, df(g)))), tf = raw
  count; its norm.
- Similarity with one reference per order: sum over hypothesis n-grams of
  min(v_hyp, v_ref) x v_ref, divided by both norms (when non-zero), times the Gaussian length
  penalty exp(-delta^2 / (2 sigma^2)). pycocoevalcap's `length` counts bigrams (not words):
  delta = bigrams(hyp) - bigrams(ref); kept for parity.
- Segment score = mean over n of the sum over references / number of references x 10;
  corpus score = mean over segments.
"""

import collections
import math

import numpy as np

N = 4
SIGMA = 6.0


def _ngram_counts(text):
    words = text.split()
    counts = {}
    for k in range(1, N + 1):  # pycocoevalcap precook's order: all unigrams, then bigrams, ...
        for ngram in zip(*[words[i:] for i in range(k)]):
            counts[ngram] = counts.get(ngram, 0) + 1
    return counts


def _vector(counts, df, log_n_segments):
    vec = [{} for _ in range(N)]
    norm = [0.0] * N
    length = 0
    for ngram, tf in counts.items():
        n = len(ngram) - 1
        value = float(tf) * (log_n_segments - math.log(max(1.0, df.get(ngram, 0.0))))
        vec[n][ngram] = value
        norm[n] += value**2
        if n == 1:
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def _similarity(hyp, ref):
    (vec_h, norm_h, len_h), (vec_r, norm_r, len_r) = hyp, ref
    delta = float(len_h - len_r)
    val = np.zeros(N)
    for n in range(N):
        for ngram, value in vec_h[n].items():
            value_r = vec_r[n].get(ngram, 0.0)
            val[n] += min(value, value_r) * value_r
        if norm_h[n] != 0 and norm_r[n] != 0:
            val[n] /= norm_h[n] * norm_r[n]
        val[n] *= np.e ** (-(delta**2) / (2 * SIGMA**2))
    return val


def cider_d(hyps, refs):
    """Corpus CIDEr-D of tokenized `hyps` (list of str) against tokenized `refs` (list of lists)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
    ref_counts = [[_ngram_counts(r) for r in rs] for rs in refs]
    df = collections.defaultdict(float)
    for rs in ref_counts:
        for ngram in set(g for counts in rs for g in counts):
            df[ngram] += 1
    log_n = math.log(float(len(refs)))
    scores = []
    for hyp, rs in zip(hyps, ref_counts):
        vec_h = _vector(_ngram_counts(hyp), df, log_n)
        total = np.zeros(N)
        for counts in rs:
            total += _similarity(vec_h, _vector(counts, df, log_n))
        scores.append(np.mean(total) / len(rs) * 10.0)
    return float(np.mean(np.array(scores)))
