"""ROUGE_L as the official E2E scorer computes it (pycocoevalcap `Rouge`), with a fast exact LCS.

Input: PTB-tokenized text (see `ptb.py`), tokens split on single spaces (`str.split(" ")`, as
pycocoevalcap does: an empty text is one empty token). Per segment: LCS with each reference;
P = max over references of LCS / len(hyp), R = max over references of LCS / len(ref) (two
independent maxima, possibly from different references); F = (1 + b^2) P R / (R + b^2 P),
b = 1.2, 0 when P or R is 0; corpus score = mean over segments. `rouge-score` (Google) is not
this metric. LCS lengths come from the bit-parallel algorithm (Allison & Dix 1986, Hyyro 2004),
exact like pycocoevalcap's dynamic programme but O(len(hyp)) big-integer steps per pair.
"""

import numpy as np

BETA = 1.2


def lcs_length(a, b):
    """Length of the longest common subsequence of token lists `a` and `b`."""
    if not a or not b:
        return 0
    masks = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l_segment(hyp, refs):
    """ROUGE_L F of one tokenized hypothesis (str) against tokenized references (list of str)."""
    h = hyp.split(" ")
    prec, rec = [], []
    for ref in refs:
        r = ref.split(" ")
        lcs = lcs_length(r, h)
        prec.append(lcs / float(len(h)))
        rec.append(lcs / float(len(r)))
    p, r = max(prec), max(rec)
    if p != 0 and r != 0:
        return ((1 + BETA**2) * p * r) / float(r + BETA**2 * p)
    return 0.0


def rouge_l(hyps, refs):
    """Corpus ROUGE_L (mean of segment F) of tokenized `hyps` against tokenized `refs`."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
    return float(np.mean(np.array([rouge_l_segment(h, rs) for h, rs in zip(hyps, refs)])))
