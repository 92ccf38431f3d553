"""TER as GenerationEval computes it (PyPI `pyter3`), re-implemented exactly and faster.

pyter3's `ter(hyp_words, ref_words)` (not sacrebleu's TER, not tercom): greedy shifts. While
some shift lowers the edit distance: among all candidate shifts take the one with the largest
gain (ties: the lexicographically largest shifted word list, as pyter's `sort()`), apply it,
count one edit. Candidates: every pair of positions i (hypothesis) != j (reference) whose words
are equal, with the longest common run from there; the run is cut out and inserted at index j of
the shortened list. TER = (shifts + Levenshtein distance of the final hypothesis) / len(ref).

Same algorithm, same candidates, same tie-breaking; the edit distances come from the
bit-parallel Levenshtein algorithm (Myers 1999, Hyyro 2001: one big-integer step per hypothesis
word over the whole reference column) instead of pyter's per-cell dynamic programme, resumed
from the cached state of the unchanged prefix and stopped early where the shifted column
rejoins the unshifted one; a candidate list already scored is not scored again.

Corpus TER (GenerationEval `ter_score`): per segment the minimum over its references (an empty
reference scores 1, as GenerationEval), mean over segments.
"""


class _Levenshtein:
    """Edit distance to a fixed reference, for many hypotheses (bit-parallel over the reference)."""

    def __init__(self, ref):
        self.m = len(ref)
        self.peq = {}
        for i, word in enumerate(ref):
            self.peq[word] = self.peq.get(word, 0) | (1 << i)
        self.mask = (1 << self.m) - 1
        self.high = 1 << (self.m - 1) if self.m else 0

    def start(self):
        """State (pv, mv, score) of the empty hypothesis: distance m."""
        return self.mask, 0, self.m

    def step(self, state, word):
        """State after appending `word` to the hypothesis."""
        pv, mv, score = state
        eq = self.peq.get(word, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & self.mask)
        mh = pv & xh
        if ph & self.high:
            score += 1
        elif mh & self.high:
            score -= 1
        ph = ((ph << 1) | 1) & self.mask
        mh = (mh << 1) & self.mask
        return (mh | (~(xv | ph) & self.mask)), ph & xv, score

    def prefix_states(self, words):
        """States after each prefix: states[k] is the state of words[:k]."""
        states = [self.start()]
        for word in words:
            states.append(self.step(states[-1], word))
        return states

    def shifted_distance(self, states, words, start, end):
        """Distance of `words`, which equal the hypothesis of `states` (prefix states) before
        `start` and from `end` on. Resumes at states[start]; at `end`, if the column's vertical
        deltas (pv, mv) equal the hypothesis's there, the rest evolves identically, so the
        result is the hypothesis's distance shifted by the score difference (exact)."""
        pv, mv, score = states[start]
        peq, mask, high = self.peq, self.mask, self.high
        for k in range(start, len(words)):
            if k == end:
                pv_h, mv_h, score_h = states[end]
                if pv == pv_h and mv == mv_h:
                    return states[-1][2] + score - score_h
            eq = peq.get(words[k], 0)
            xv = eq | mv
            xh = (((eq & pv) + pv) ^ pv) | eq
            ph = mv | (~(xh | pv) & mask)
            mh = pv & xh
            if ph & high:
                score += 1
            elif mh & high:
                score -= 1
            ph = ((ph << 1) | 1) & mask
            mh = (mh << 1) & mask
            pv = mh | (~(xv | ph) & mask)
            mv = ph & xv
        return score


def _candidate_shifts(hyp, ref):
    """(hyp start, ref start, length) of every equal-word pair at different positions, with the
    longest matching run from there (pyter `_findpairs`)."""
    ref_positions = {}
    for j, word in enumerate(ref):
        ref_positions.setdefault(word, []).append(j)
    n, m = len(hyp), len(ref)
    for i, word in enumerate(hyp):
        for j in ref_positions.get(word, ()):
            if i == j:
                continue
            length = 1
            while i + length < n and j + length < m and hyp[i + length] == ref[j + length]:
                length += 1
            yield i, j, length


def ter(hyp, ref):
    """pyter3 `ter(hyp, ref)` for token lists; raises ZeroDivisionError on an empty reference."""
    hyp, ref = list(hyp), list(ref)
    lev = _Levenshtein(ref)
    if lev.m == 0:
        raise ZeroDivisionError("TER of an empty reference")
    shifts = 0
    while True:
        states = lev.prefix_states(hyp)
        before = states[-1][2]
        best = None
        seen = set()
        for i, j, length in _candidate_shifts(hyp, ref):
            shifted = hyp[:i] + hyp[i + length :]
            shifted[j:j] = hyp[i : i + length]
            key = tuple(shifted)
            if key in seen:  # the same list from another pair: same gain
                continue
            seen.add(key)
            # shifted[:min(i, j)] and shifted[max(i, j) + length:] are the hypothesis's.
            gain = before - lev.shifted_distance(states, shifted, min(i, j), max(i, j) + length)
            if best is None or (gain, shifted) > best:
                best = (gain, shifted)
        if best is None or best[0] <= 0:
            return (shifts + before) / len(ref)
        shifts += 1
        hyp = best[1]


def _ter_or_one(hyp_words, ref):
    """GenerationEval: 1 for an empty reference ('' or, through pyter's exception, blank)."""
    try:
        return ter(hyp_words, ref.split()) if len(ref) else 1
    except ZeroDivisionError:
        return 1


def segment_ter(hyp, refs):
    """GenerationEval's TER of one segment: min over references of ter(hyp.split(), ref.split());
    an empty reference scores 1."""
    hyp_words = hyp.split()
    return min(_ter_or_one(hyp_words, r) for r in dict.fromkeys(refs))  # a repeated reference once


def corpus_ter(hyps, refs):
    """GenerationEval's corpus TER: mean over segments of `segment_ter`."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
    scores = [segment_ter(h, rs) for h, rs in zip(hyps, refs)]
    return sum(scores) / len(scores)
