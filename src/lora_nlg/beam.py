"""Batched beam search for GPT-2: many inputs x beams per batch, KV cache, exact early stopping.

The search keeps the rules of microsoft/LoRA's ``gpt2_beam.py`` (upstream), so its numbers stay
comparable:

- every step: the logits go through the repetition penalty, the min-length ban and the
  no-repeat-ngram ban (in that order), then ``log_softmax``; a hypothesis' running score is the
  sum of its log-probabilities;
- at the first step every beam holds the same prompt, so only beam 0 expands;
- each step keeps the ``beam`` best of the ``beam x vocab`` continuations. A kept continuation
  that ends with a stop id leaves the beam (its slot stays empty for that step) and is a finished
  candidate scored ``sum_logprob / length ** length_penalty``, where ``length`` counts the
  generated tokens *including* the stop token; per input the best finished candidate is kept, a
  later one replaces it only if strictly better;
- after ``eval_len`` generated tokens the running hypotheses are finished candidates too (length
  ``eval_len``);
- the n-gram ban and the repetition penalty look at the generated tokens only (upstream's rule);
  ``include_prompt_in_ngram`` / ``include_prompt_in_repetition_penalty`` add the prompt
  (transformers' rule).

What is new is only faster, never different in result:

- inputs of different prompt lengths share a batch (left padding, attention mask, positions
  counted over real tokens), and each prompt runs once, not once per beam;
- the KV cache has one row per input, not per hypothesis: the prompt's keys and values once,
  then for each generated position the K keys and values of the K beam slots. The K hypotheses
  of an input run as K query positions of its row, and an attention mask lets hypothesis i see
  the prompt and, at each generated position, the slot its ancestor held then. A beam reorder
  therefore moves a small table of slots (``slot_of``), never keys and values, and the prompt is
  stored and read once per input. The price, K dot products per generated key where one would
  do, is less than the copies a reorder costs (GPT-2 S on a CPU, ``bench/beam_bench.py``: from
  1.5x to 1.9x transformers' speed, against a per-hypothesis cache reordered each step);
- an input stops as soon as no running hypothesis can still beat its best finished one, and then
  leaves the batch (its cache row is dropped). The test is exact, not a heuristic: log-probs are
  <= 0, so a running sum ``s`` can only fall, and the best score any descendant can reach is
  ``s / eval_len ** lp`` for ``lp > 0`` (longest) or ``s / (t + 1) ** lp`` for ``lp <= 0``
  (shortest possible finish). Results equal running all ``eval_len`` steps (``early_stop=False``);
- the n-gram ban and the repetition penalty are tensor operations over all rows at once;
- each step ranks each beam's ``beam`` best tokens rather than all ``beam x vocab`` continuations.
"""

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from lora_nlg.catalog import EOS_ID

NEG_INF = float("-inf")


@dataclasses.dataclass
class BeamSettings:
    beam: int = 1
    """Hypotheses kept per input."""
    eval_len: int = 64
    """Most generated tokens per input, the stop token included."""
    length_penalty: float = 1.0
    """Finished score = sum of log-probs / length ** length_penalty."""
    no_repeat_ngram_size: int = 0
    """Ban any n-gram of this size from occurring twice (0: off)."""
    repetition_penalty: float = 1.0
    """CTRL penalty on the logits of tokens already present (1.0: off)."""
    min_length: int = 0
    """Stop ids are banned until this many tokens are generated."""
    stop_ids: Tuple[int, ...] = (EOS_ID,)
    """Token ids that end a hypothesis (empty: only eval_len ends them)."""
    include_prompt_in_ngram: bool = False
    """Count prompt tokens in the n-gram ban (transformers' rule; upstream's: generated only)."""
    include_prompt_in_repetition_penalty: bool = False
    """Penalise prompt tokens too (transformers' rule; upstream's: generated only)."""
    batch_size: int = 10
    """Inputs per batch (each takes ``beam`` rows)."""
    use_cache: bool = True
    """Keep keys and values (False recomputes the whole sequence every step: for tests)."""
    early_stop: bool = True
    """Stop an input once nothing can beat its best finished hypothesis (False: upstream's
    fixed ``eval_len`` steps; same result)."""

    def __post_init__(self):
        self.stop_ids = tuple(int(i) for i in self.stop_ids)
        for name in ("beam", "eval_len", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.no_repeat_ngram_size < 0 or self.min_length < 0:
            raise ValueError("no_repeat_ngram_size and min_length must be >= 0")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


@dataclasses.dataclass
class Hypothesis:
    token_ids: List[int]
    """Generated tokens; the last one is the stop token when ``finished``."""
    score: float
    """sum of log-probs / len(token_ids) ** length_penalty."""
    finished: bool
    """Ended with a stop id (False: cut at ``eval_len``)."""


# ----------------------------------------------------------------------------------------------
# Logit processors: every row at once, no Python loop over hypotheses.


def ngram_repeats(seq: torch.Tensor, valid: torch.Tensor, n: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(tokens, hit), both (R, L - n + 1): row r must not generate ``tokens[r, j]`` where
    ``hit[r, j]``, since that would repeat an n-gram of ``seq``; None when nothing can repeat.

    seq: (R, L) token ids; valid: (R, L) bool, False on left padding. Every earlier n-gram whose
    first n-1 tokens equal the last n-1 tokens of the row bans its last token.
    """
    R, L = seq.shape
    if n < 1 or L < n:
        return None
    grams = seq.unfold(1, n, 1)  # (R, L - n + 1, n)
    suffix = seq[:, L - n + 1 :]  # (R, n - 1): what the next token would extend
    hit = (grams[:, :, :-1] == suffix[:, None, :]).all(-1)  # (R, L - n + 1)
    hit &= valid[:, : L - n + 1]  # with left padding, a valid first token means a valid n-gram
    return grams[:, :, -1], hit


def ban_ngrams_(logits: torch.Tensor, seq: torch.Tensor, valid: torch.Tensor, n: int) -> torch.Tensor:
    """Set to -inf, in place, the logits (R, V) of the tokens ``ngram_repeats`` bans.

    A scatter of the (R, L - n + 1) candidates: a (R, V) mask and ``masked_fill`` cost more on a
    CPU (for 80 rows of GPT-2's vocabulary) than the rest of the step's bookkeeping together.
    """
    repeats = ngram_repeats(seq, valid, n)
    if repeats is not None:
        tokens, hit = repeats
        # min with +inf keeps a logit, min with -inf bans it
        src = logits.new_full(hit.shape, float("inf")).masked_fill_(hit, NEG_INF)
        logits.scatter_reduce_(1, tokens, src, reduce="amin")
    return logits


def apply_repetition_penalty(
    logits: torch.Tensor, seq: torch.Tensor, valid: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL (Keskar et al. 2019): a logit of a token present in ``seq`` is multiplied by
    ``penalty`` if negative, divided by it otherwise. logits: (R, V); seq, valid: (R, L)."""
    R, V = logits.shape
    if seq.shape[1] == 0 or penalty == 1.0:
        return logits
    seen = torch.zeros(R, V + 1, dtype=torch.bool, device=logits.device)
    seen.scatter_(1, torch.where(valid, seq, V), True)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen[:, :V], penalised, logits)


def process_logits(logits, gen, prompt, prompt_mask, t: int, s: BeamSettings, stop: torch.Tensor):
    """Upstream's order: repetition penalty, min length, n-gram ban. logits: (R, V) float32, the
    step's own (the bans change them in place); gen: (R, >= t) generated tokens; prompt,
    prompt_mask: (R, P) left-padded prompts. Returns the processed logits."""
    ones = torch.ones_like(gen[:, :t], dtype=torch.bool)

    def history(with_prompt):
        if with_prompt:
            return torch.cat([prompt, gen[:, :t]], 1), torch.cat([prompt_mask, ones], 1)
        return gen[:, :t], ones

    if s.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(
            logits, *history(s.include_prompt_in_repetition_penalty), s.repetition_penalty
        )
    if t < s.min_length and stop.numel():
        logits.index_fill_(1, stop, NEG_INF)
    if s.no_repeat_ngram_size > 0:
        ban_ngrams_(logits, *history(s.include_prompt_in_ngram), s.no_repeat_ngram_size)
    return logits


# ----------------------------------------------------------------------------------------------
# The search


def _device(model):
    return model.transformer.wte.weight.device


def left_pad(prompts, device=None, pad_id: int = 0):
    """(ids, mask), both (N, P): the prompts right-aligned, ``pad_id`` before them, mask True on
    the real tokens."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, P - len(p) :] = True
    return ids.to(device), mask.to(device)


class _Finished:
    """Each input's best finished hypothesis so far: score, tokens, length, ended by a stop token."""

    def __init__(self, N: int, T: int, dtype, device):
        self.score = torch.full((N,), NEG_INF, dtype=dtype, device=device)
        self.tokens = torch.zeros(N, T, dtype=torch.long, device=device)
        self.length = torch.zeros(N, dtype=torch.long, device=device)
        self.stopped = torch.zeros(N, dtype=torch.bool, device=device)

    def offer(self, alive, t: int, values, token, origin, gen, is_stop, T: int, lp: float) -> None:
        """The step-``t`` candidates (n, K) that end here (a stop token, or every one at the
        ``T`` cap) replace an input's best when they score higher."""
        length = t + 1
        done_now = (is_stop | torch.isfinite(values)) if length == T else is_stop
        fin = torch.where(done_now, values / length**lp, NEG_INF)
        top, k = fin.max(dim=1)  # first of equal maxima: upstream's strict ">" in topk order
        better = top > self.score[alive]
        if bool(better.any()):
            who = alive[better]
            src = origin[better, k[better]]
            self.score[who] = top[better]
            self.tokens[who, :t] = gen[src, :t]
            self.tokens[who, t] = token[better, k[better]]
            self.length[who] = length
            self.stopped[who] = is_stop[better, k[better]]

    def settled(self, alive, top_running, t: int, T: int, lp: float, early_stop: bool):
        """(n,) inputs that are done: nothing left running or, with ``early_stop``, nothing
        running can beat the best finished (the most a running sum can become is itself over the
        largest length penalty divisor still possible)."""
        if early_stop:
            denom = float(T) ** lp if lp > 0 else float(t + 2) ** lp
            return (top_running / denom <= self.score[alive]) | torch.isinf(top_running)
        return torch.isinf(top_running)

    def hypotheses(self) -> List[Hypothesis]:
        score, tokens = self.score.cpu(), self.tokens.cpu()
        length, stopped = self.length.tolist(), self.stopped.tolist()
        return [Hypothesis(tokens[i, : length[i]].tolist(), float(score[i]), stopped[i]) for i in range(len(length))]


def _step_logits(model, t: int, gen, slot_of, alive, cache, prompt_mask, prompt_len, row_prompt, row_mask):
    """The forward of step ``t`` > 0: logits (n * K, V) of every running hypothesis' next token."""
    n, K = alive.numel(), gen.shape[0] // alive.numel()
    if cache is None:  # recompute every position (tests)
        step_mask = torch.cat([row_mask, row_mask.new_ones(row_mask.shape[0], t)], 1)
        ids = torch.cat([row_prompt, gen[:, :t]], 1)
        last = torch.zeros_like(step_mask)
        last[:, -1] = True
        return model(ids, attention_mask=step_mask, output_mask=last)
    # hypothesis i sees its input's prompt and, at each generated position, its ancestor's slot
    slots = torch.arange(K, device=gen.device)
    sees = (slot_of[:, :t].view(n, K, t, 1) == slots).view(n, K, t * K)
    P = prompt_mask.shape[1]
    mask = torch.cat([prompt_mask[alive, None, :].expand(n, K, P), sees], 2)  # (n, K, P + t*K)
    position = (prompt_len[alive] + t - 1)[:, None].expand(n, K)
    return model(gen[:, t - 1].view(n, K), visibility=mask[:, None], position_ids=position, cache=cache).view(n * K, -1)


@torch.no_grad()
def search_batch(model, prompts: Sequence[Sequence[int]], s: BeamSettings) -> List[Hypothesis]:
    """Beam search for every prompt of one batch (one forward per step for all inputs x beams)."""
    device = _device(model)
    N, K, V, T = len(prompts), s.beam, model.config.vocab_size, s.eval_len
    lp = s.length_penalty
    prompt, prompt_mask = left_pad(prompts, device)  # (N, P)
    P = prompt.shape[1]
    if P + T > model.config.n_positions:
        raise ValueError(
            f"prompt of {P} tokens + eval_len {T} exceeds the model's {model.config.n_positions} positions"
        )
    # A stop id outside the vocabulary (50256 with a toy model) can never be generated.
    stop = torch.tensor([i for i in s.stop_ids if 0 <= i < V], dtype=torch.long, device=device)
    best = _Finished(N, T, torch.promote_types(model.transformer.wte.weight.dtype, torch.float32), device)

    alive = torch.arange(N, device=device)  # original index of each input still searching (n,)
    # The cache has one row per input (see the module docstring): the prompt, then K slots per
    # generated position; slot_of[row, s] is the slot that computed position s of the row's
    # hypothesis (its ancestor's then), so a reorder moves this small table, never the cache.
    cache = model.new_cache(N, P + K * (T - 1)) if s.use_cache else None
    slots = torch.arange(K, device=device)
    prompt_len = prompt_mask.sum(1)  # (N,) real tokens
    last = torch.zeros(N, P, dtype=torch.bool, device=device)
    last[:, -1] = True
    # Step 0: one row per input; the prompt's last position gives the first token's logits.
    logits = model(prompt, attention_mask=prompt_mask, cache=cache, output_mask=last)  # (N, V)
    gen = torch.zeros(N, T, dtype=torch.long, device=device)  # rows: inputs, later inputs x beams
    slot_of = torch.zeros(N, T, dtype=torch.long, device=device)
    row_prompt, row_mask = prompt, prompt_mask
    run = None  # (n, K) running sums; -inf marks an empty slot
    nan = torch.zeros((), dtype=torch.bool, device=device)

    for t in range(T):
        if t > 0:
            logits = _step_logits(model, t, gen, slot_of, alive, cache, prompt_mask, prompt_len, row_prompt, row_mask)
        # float32 at least (float64 stays float64: the tests compare against brute force)
        logits = process_logits(
            logits.to(torch.promote_types(logits.dtype, torch.float32)), gen, row_prompt, row_mask, t, s, stop
        )
        logprobs = F.log_softmax(logits, dim=-1)  # (rows, V)
        nan = nan | torch.isnan(logprobs).any()  # checked once, at the end: no sync per step
        n = alive.numel()
        if t == 0:
            cand = logprobs  # only beam 0 expands: all beams hold the same prompt
            if V < K:  # fewer tokens than beams: the extra slots start empty
                cand = torch.cat([cand, cand.new_full((n, K - V), NEG_INF)], 1)
            values, index = torch.topk(cand, K, dim=1)  # (n, K), sorted
            origin = torch.arange(n, device=device)[:, None].expand(n, K)  # row of each new hypothesis
            token = torch.where(index < V, index, 0)
        else:
            # The K best of K x V continuations are among each beam's K best tokens (a beam's
            # running sum adds the same to all its tokens): rank K x K candidates, not K x V.
            k1 = min(K, V)
            top_lp, top_token = torch.topk(logprobs, k1, dim=1)  # (n * K, k1)
            cand = (run[:, :, None] + top_lp.view(n, K, k1)).view(n, K * k1)
            values, index = torch.topk(cand, K, dim=1)  # (n, K), sorted
            origin = torch.arange(n, device=device)[:, None] * K + index // k1
            token = top_token.view(n, K * k1).gather(1, index)
        is_stop = torch.isin(token, stop) & torch.isfinite(values)
        best.offer(alive, t, values, token, origin, gen, is_stop, T, lp)
        if t + 1 == T:
            break
        values = values.masked_fill(is_stop, NEG_INF)
        keep = ~best.settled(alive, values.max(dim=1).values, t, T, lp, s.early_stop)
        if not bool(keep.any()):
            break
        rows = origin[keep].reshape(-1)  # beam reorder and dropping done inputs in one gather
        gen = gen.index_select(0, rows)
        gen[:, t] = token[keep].reshape(-1)
        slot_of = slot_of.index_select(0, rows)
        slot_of[:, t] = slots.repeat(rows.numel() // K)  # position t: computed next step, in the row's slot
        if cache is not None and not bool(keep.all()):
            cache.reorder(keep.nonzero()[:, 0])  # done inputs leave the cache
        run = values[keep]
        alive = alive[keep]
        row_prompt = prompt[alive].repeat_interleave(K, 0)
        row_mask = prompt_mask[alive].repeat_interleave(K, 0)
    if bool(nan):
        raise ValueError(
            "the model gave NaN logits (non-finite weights, or an fp16 overflow): no output would mean anything"
        )
    return best.hypotheses()


def beam_search(
    model,
    prompts: Sequence[Sequence[int]],
    settings: BeamSettings,
    progress: Optional[Callable[[int, int], None]] = None,
) -> List[Hypothesis]:
    """Decode every prompt (lists of token ids); results in the order of ``prompts``.

    Prompts are sorted by length (longest first) and decoded ``settings.batch_size`` at a time, so
    a batch holds similar lengths and little padding. ``progress(done, total)`` after each batch.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every input needs at least one token")
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: List[Optional[Hypothesis]] = [None] * len(prompts)
    try:
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start : start + settings.batch_size]
            for i, hyp in zip(chunk, search_batch(model, [prompts[i] for i in chunk], settings)):
                out[i] = hyp
            if progress is not None:
                progress(min(start + settings.batch_size, len(order)), len(order))
    finally:
        model.train(was_training)
    return out
