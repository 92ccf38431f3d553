"""Batched beam search (lora_nlg.beam) against references: greedy decoding, brute force on a toy
model, transformers' generate, per-input decoding, uncached decoding, Python versions of the
upstream's processors.

Models run in float64 so that batching / padding / caching differences in the last bits cannot
flip a choice between two hypotheses (the search keeps the model's precision when it is >= 32 bit).

Where transformers' rules and upstream's coincide (so `generate` is a reference), checked in the
source of transformers 5.24 (`generation/utils.py`, `_beam_search`):
- beam > 1: transformers applies logits processors to log-probs (after log_softmax, no
  renormalisation), keeps 2 * beam candidates so that a stop token never takes a running slot,
  and stops by a heuristic (`early_stopping`); upstream processes logits before log_softmax and a
  stop token takes its slot. They coincide when no stop token exists (`eos_token_id=None`,
  ``stop_ids=()``), no processor is on (no n-gram ban, repetition penalty 1, min length 0) and
  the length is fixed (`max_new_tokens = eval_len`); then any `length_penalty` agrees (both divide
  by the generated length, which is the same for every final hypothesis) and so do the scores.
- beam 1: transformers' greedy search applies the processors to the raw logits, as upstream does,
  and stops at the stop token: equal with a stop id, `min_new_tokens` = our `min_length`, and the
  n-gram ban and repetition penalty over prompt + generated tokens (our `include_prompt_*`).
"""

import itertools

import pytest
import torch

from lora_nlg.beam import BeamSettings, Hypothesis, apply_repetition_penalty, ban_ngrams_, beam_search, process_logits
from lora_nlg.model import GPT2Config, GPT2LMModel

PROMPTS = [
    [5, 17, 33, 2],
    [9, 8, 7, 6, 5, 4, 3],
    [42],
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    [60, 61],
    [77, 3, 77, 3, 77],
    [12, 99, 0, 45, 45, 45],
]

# Tiny models are many small ops: one thread avoids OpenMP waits (10-100x on a busy machine).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model(tiny_model):
    return tiny_model.double()


@torch.no_grad()
def greedy(model, prompt, eval_len, stop_ids=()):
    """Plain greedy decoding: the whole sequence every step, one prompt, no cache, no padding."""
    ids = list(prompt)
    out = []
    for _ in range(eval_len):
        token = int(model(torch.tensor([ids]))[0, -1].argmax())
        ids.append(token)
        out.append(token)
        if token in stop_ids:
            break
    return out


def _same(a, b):
    assert [h.token_ids for h in a] == [h.token_ids for h in b]
    assert [h.finished for h in a] == [h.finished for h in b]
    assert torch.allclose(
        torch.tensor([h.score for h in a], dtype=torch.float64),
        torch.tensor([h.score for h in b], dtype=torch.float64),
        rtol=1e-10,
        atol=1e-10,
    )


def _count_forwards(model):
    calls = []
    handle = model.transformer.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def _frequent_token(model, prompts, eval_len, position):
    """A token greedy decoding emits at ``position`` of the first prompt: a stop id that fires."""
    return greedy(model, prompts[0], eval_len)[position]


# ----------------------------------------------------------------------------------- references


def test_beam_1_equals_greedy(model):
    stop = _frequent_token(model, PROMPTS, 12, 4)
    s = BeamSettings(beam=1, eval_len=12, stop_ids=(stop,), no_repeat_ngram_size=0, batch_size=3)
    got = beam_search(model, PROMPTS, s)
    want = [greedy(model, p, 12, (stop,)) for p in PROMPTS]
    assert [h.token_ids for h in got] == want
    assert any(h.finished for h in got) and any(not h.finished for h in got)
    assert [h.finished for h in got] == [w[-1] == stop for w in want]


def _toy_model(vocab=6, seed=3):
    torch.manual_seed(seed)
    model = GPT2LMModel(GPT2Config(vocab_size=vocab, n_positions=16, n_embd=16, n_layer=1, n_head=2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.6)  # peaked distributions: many distinct scores, no near-ties
    return model.eval()


@torch.no_grad()
def brute_force(model, prompt, eval_len, stop, length_penalty):
    """Best (score, tokens) over every sequence: stopped at the first stop token or cut at eval_len."""
    V = model.config.vocab_size
    seqs = torch.tensor(list(itertools.product(range(V), repeat=eval_len)))
    ids = torch.cat([torch.tensor(prompt).expand(len(seqs), -1), seqs], 1)
    logprobs = torch.log_softmax(model(ids)[:, len(prompt) - 1 : -1], -1)  # (S, eval_len, V)
    cum = logprobs.gather(2, seqs[:, :, None])[:, :, 0].cumsum(1)
    best = (float("-inf"), None)
    for seq, c in zip(seqs.tolist(), cum.tolist()):
        n = seq.index(stop) + 1 if stop in seq else eval_len
        score = c[n - 1] / n**length_penalty
        if score > best[0]:
            best = (score, seq[:n])
    return best


@pytest.mark.parametrize("length_penalty", [0.0, 0.9, 3.0, -0.5])
def test_enough_beams_find_the_exact_best_sequence(length_penalty):
    """With beam >= V * (V-1)^(T-1) nothing is ever pruned: beam search must return the exact
    best sequence under the length-normalised score; early stopping must not lose it."""
    model, V, T, stop = _toy_model(), 6, 4, 5
    prompts = [[0, 1, 2], [3], [4, 4, 1, 0, 2]]
    s = BeamSettings(
        beam=V * (V - 1) ** (T - 1),
        eval_len=T,
        length_penalty=length_penalty,
        stop_ids=(stop,),
        no_repeat_ngram_size=0,
        batch_size=3,
    )
    got = beam_search(model, prompts, s)
    kinds = set()
    for prompt, hyp in zip(prompts, got):
        score, tokens = brute_force(model, prompt, T, stop, length_penalty)
        assert hyp.token_ids == tokens
        assert hyp.score == pytest.approx(score, rel=1e-12, abs=1e-12)
        kinds.add((len(tokens), hyp.finished))
    if length_penalty == 3.0:  # a long-favouring penalty: the best is cut at eval_len
        assert (T, False) in kinds
    if length_penalty == 0.0:  # a pure sum favours stopping early
        assert any(finished and n < T for n, finished in kinds)


def test_early_stop_equals_fixed_steps_and_stops_early(model):
    """Stopping an input once nothing can beat its best finished hypothesis gives what running
    all eval_len steps gives (upstream's protocol), for short- and long-favouring penalties; a
    heuristic bound (transformers' default: the current length) differs for some of these."""
    # a stop id on every prompt's greedy path, so that every input has finished hypotheses
    stops = tuple(sorted({greedy(model, p, 3)[2] for p in PROMPTS}))
    for lp, K in itertools.product((0.0, 0.9, 1.5, 2.0), (2, 4)):
        settings = dict(beam=K, eval_len=24, length_penalty=lp, stop_ids=stops, batch_size=len(PROMPTS))
        calls, handle = _count_forwards(model)
        early = beam_search(model, PROMPTS, BeamSettings(**settings, early_stop=True))
        n_early = len(calls)
        calls.clear()
        fixed = beam_search(model, PROMPTS, BeamSettings(**settings, early_stop=False))
        handle.remove()
        _same(early, fixed)
        assert len(calls) == 24  # upstream's protocol: every step
        if lp == 0.0:
            assert n_early < 24


def test_all_inputs_finished_ends_the_loop(model):
    """Greedy with a stop id every input hits: the loop ends at the last stop, not at eval_len."""
    stop = _frequent_token(model, PROMPTS, 12, 1)
    s = BeamSettings(beam=1, eval_len=40, stop_ids=tuple(range(model.config.vocab_size)), batch_size=7)
    calls, handle = _count_forwards(model)
    got = beam_search(model, PROMPTS, s)
    handle.remove()
    assert all(h.finished and len(h.token_ids) == 1 for h in got)
    assert len(calls) == 1  # the prompt's forward only
    del stop


def test_matches_transformers_beam_search(model, hf_tiny_model):
    """beam 4, length penalty 0.8, no stop token, fixed length: equal to transformers' generate."""
    hf = hf_tiny_model.double()
    T, K, lp = 10, 4, 0.8
    got = beam_search(
        model,
        PROMPTS,
        BeamSettings(beam=K, eval_len=T, length_penalty=lp, stop_ids=(), no_repeat_ngram_size=0, batch_size=4),
    )
    for prompt, hyp in zip(PROMPTS, got):
        out = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            num_beams=K,
            max_new_tokens=T,
            do_sample=False,
            length_penalty=lp,
            eos_token_id=None,
            pad_token_id=0,
            early_stopping=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        assert hyp.token_ids == out.sequences[0, len(prompt) :].tolist()
        # transformers keeps its beam scores in float32
        assert hyp.score == pytest.approx(out.sequences_scores[0].item(), rel=1e-6)
        assert not hyp.finished


def test_matches_transformers_greedy_with_processors(model, hf_tiny_model):
    """beam 1 with a stop id, min length, n-gram ban and repetition penalty over the prompt too."""
    hf = hf_tiny_model.double()
    T = 16
    stop = _frequent_token(model, PROMPTS, 12, 3)
    s = BeamSettings(
        beam=1,
        eval_len=T,
        stop_ids=(stop,),
        min_length=3,
        no_repeat_ngram_size=2,
        repetition_penalty=1.3,
        include_prompt_in_ngram=True,
        include_prompt_in_repetition_penalty=True,
        batch_size=4,
    )
    got = beam_search(model, PROMPTS, s)
    for prompt, hyp in zip(PROMPTS, got):
        out = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            num_beams=1,
            do_sample=False,
            max_new_tokens=T,
            eos_token_id=stop,
            pad_token_id=stop,
            min_new_tokens=3,
            no_repeat_ngram_size=2,
            repetition_penalty=1.3,
        )
        assert hyp.token_ids == out[0, len(prompt) :].tolist()


# ------------------------------------------------------------------------- batching and caching

ALL_ON = dict(beam=3, eval_len=14, length_penalty=0.8, no_repeat_ngram_size=3, repetition_penalty=1.2, min_length=2)


def test_mixed_prompt_lengths_in_one_batch_equal_decoding_each_alone(model):
    stop = _frequent_token(model, PROMPTS, 12, 3)
    together = beam_search(model, PROMPTS, BeamSettings(**ALL_ON, stop_ids=(stop,), batch_size=len(PROMPTS)))
    alone = beam_search(model, PROMPTS, BeamSettings(**ALL_ON, stop_ids=(stop,), batch_size=1))
    _same(together, alone)
    assert len({len(p) for p in PROMPTS}) > 3


def test_cached_equals_uncached(model):
    stop = _frequent_token(model, PROMPTS, 12, 3)
    for include_prompt in (False, True):
        kw = dict(
            ALL_ON,
            stop_ids=(stop,),
            batch_size=4,
            include_prompt_in_ngram=include_prompt,
            include_prompt_in_repetition_penalty=include_prompt,
        )
        _same(
            beam_search(model, PROMPTS, BeamSettings(**kw, use_cache=True)),
            beam_search(model, PROMPTS, BeamSettings(**kw, use_cache=False)),
        )


def test_results_come_back_in_input_order_and_within_eval_len(model):
    s = BeamSettings(beam=2, eval_len=5, stop_ids=(), batch_size=2)
    got = beam_search(model, PROMPTS, s)
    for prompt, hyp in zip(PROMPTS, got):
        _same([hyp], beam_search(model, [prompt], s))
        assert len(hyp.token_ids) == 5 and not hyp.finished


# ------------------------------------------------------------------------------- n-gram ban


def seed_banned_tokens(tokens, n):
    """Upstream's rule (fairseq's): n-grams of the history -> tokens banned after its last n-1."""
    if len(tokens) + 1 < n or len(tokens) < n:
        return set()
    grams = {}
    for gram in zip(*[tokens[i:] for i in range(n)]):
        grams.setdefault(tuple(gram[:-1]), set()).add(gram[-1])
    return grams.get(tuple(tokens[len(tokens) - n + 1 :]), set())


def test_ngram_ban_equals_the_seed_rule_on_random_histories():
    g = torch.Generator().manual_seed(0)
    V = 7
    for n in (1, 2, 3, 4):
        for L in (0, 1, 3, 8, 20):
            seq = torch.randint(0, V, (12, L), generator=g)
            pad = torch.randint(0, L + 1, (12,), generator=g)  # left padding of each row
            valid = torch.arange(L)[None, :] >= pad[:, None]
            seq = torch.where(valid, seq, 3)  # pad id: any token; it must not count
            logits = torch.randn(12, V, generator=g, dtype=torch.float64)
            out = ban_ngrams_(logits.clone(), seq, valid, n)
            for row in range(12):
                want = seed_banned_tokens(seq[row, pad[row] :].tolist(), n)
                assert set(torch.isinf(out[row]).nonzero()[:, 0].tolist()) == want, (n, L, row)
                kept = [v for v in range(V) if v not in want]
                assert torch.equal(out[row, kept], logits[row, kept])


def _repeats(tokens, n, start=0):
    """Whether an n-gram ending at index >= start occurred before."""
    grams = list(zip(*[tokens[i:] for i in range(n)]))
    return any(g in grams[:i] for i, g in enumerate(grams) if i + n - 1 >= start)


def test_no_repeat_ngram_changes_the_result_and_bans_repeats(model):
    plain = beam_search(model, PROMPTS, BeamSettings(beam=3, eval_len=16, stop_ids=(), batch_size=7))
    banned = beam_search(
        model, PROMPTS, BeamSettings(beam=3, eval_len=16, stop_ids=(), no_repeat_ngram_size=2, batch_size=7)
    )
    assert any(_repeats(h.token_ids, 2) for h in plain)
    assert not any(_repeats(h.token_ids, 2) for h in banned)
    assert [h.token_ids for h in plain] != [h.token_ids for h in banned]


@torch.no_grad()
def test_no_repeat_ngram_with_the_prompt(model):
    """Upstream's rule ignores the prompt; transformers' rule also bans n-grams of the prompt.

    Prompts ``[x, z, 3, x]`` after which greedy decoding says z: the bigram (x, z) is in the
    prompt, so only upstream's rule lets the output start with z."""
    V = model.config.vocab_size
    prompts = []
    for x in range(0, V, 5):
        ids = torch.tensor([[x, z, 3, x] for z in range(V)])
        nxt = model(ids)[:, -1].argmax(-1)
        prompts += [[x, z, 3, x] for z in (nxt == torch.arange(V)).nonzero()[:, 0].tolist()]
    assert prompts
    s = dict(beam=1, eval_len=10, stop_ids=(), no_repeat_ngram_size=2, batch_size=8)
    seed_rule = beam_search(model, prompts, BeamSettings(**s))
    with_prompt = beam_search(model, prompts, BeamSettings(**s, include_prompt_in_ngram=True))
    for q, a, b in zip(prompts, seed_rule, with_prompt):
        assert a.token_ids[0] == q[1] and b.token_ids[0] != q[1]
        assert not _repeats(a.token_ids, 2)
        assert not _repeats(q + b.token_ids, 2, start=len(q))


# ------------------------------------------------------------------------ repetition penalty


def seed_repetition_penalty(logits, history, penalty):
    """Upstream's loop (without its debug prints): per row, per distinct earlier token."""
    logits = logits.clone()
    for i in range(logits.shape[0]):
        for token in set(history[i]):
            if logits[i, token] < 0:
                logits[i, token] *= penalty
            else:
                logits[i, token] /= penalty
    return logits


def test_repetition_penalty_equals_the_seed_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 11, generator=g, dtype=torch.float64)
    seq = torch.randint(0, 11, (6, 9), generator=g)
    valid = torch.arange(9)[None, :] >= torch.tensor([0, 0, 2, 5, 9, 1])[:, None]
    for penalty in (1.5, 0.7):
        got = apply_repetition_penalty(logits, seq, valid, penalty)
        want = seed_repetition_penalty(logits, [s[v].tolist() for s, v in zip(seq, valid)], penalty)
        assert torch.equal(got, want)


def test_repetition_penalty_changes_the_result(model):
    def distinct(hyps):
        return sum(len(set(h.token_ids)) for h in hyps)

    plain = beam_search(model, PROMPTS, BeamSettings(beam=3, eval_len=16, stop_ids=(), batch_size=7))
    penalised = beam_search(
        model, PROMPTS, BeamSettings(beam=3, eval_len=16, stop_ids=(), repetition_penalty=3.0, batch_size=7)
    )
    assert [h.token_ids for h in plain] != [h.token_ids for h in penalised]
    assert distinct(penalised) > distinct(plain)


# ------------------------------------------------------------------------ min length, stop ids


def test_min_length_changes_the_result(model):
    stops = tuple(sorted({greedy(model, p, 2)[1] for p in PROMPTS}))
    base = dict(beam=3, eval_len=16, stop_ids=stops, batch_size=7)
    plain = beam_search(model, PROMPTS, BeamSettings(**base))
    short = [h for h in plain if h.finished and len(h.token_ids) <= 4]
    assert short, "the case must have a hypothesis that stops before the minimum length"
    longer = beam_search(model, PROMPTS, BeamSettings(**base, min_length=4))
    for h in longer:
        assert not set(h.token_ids[:4]) & set(stops)
        assert len(h.token_ids) >= 5
    assert [h.token_ids for h in plain] != [h.token_ids for h in longer]


def test_several_stop_ids(model):
    """Greedy: adding a stop id cuts each output at that id's first occurrence."""
    first = _frequent_token(model, PROMPTS, 12, 6)
    one = beam_search(model, PROMPTS, BeamSettings(beam=1, eval_len=16, stop_ids=(first,), batch_size=7))
    tokens = [t for h in one for t in h.token_ids[:-1] if t != first]
    second = max(set(tokens), key=tokens.count)
    two = beam_search(model, PROMPTS, BeamSettings(beam=1, eval_len=16, stop_ids=(first, second), batch_size=7))
    changed = 0
    for a, b in zip(one, two):
        cut = next((i + 1 for i, t in enumerate(a.token_ids) if t in (first, second)), len(a.token_ids))
        assert b.token_ids == a.token_ids[:cut]
        changed += b.token_ids != a.token_ids
    assert changed > 0
    # beam > 1: every hypothesis ends with one of the stop ids or at eval_len
    for h in beam_search(model, PROMPTS, BeamSettings(beam=4, eval_len=16, stop_ids=(first, second), batch_size=7)):
        assert (h.finished and h.token_ids[-1] in (first, second)) or len(h.token_ids) == 16
        assert not set(h.token_ids[:-1]) & {first, second}


def test_stop_id_outside_the_vocabulary_is_ignored(model):
    s = dict(beam=2, eval_len=6, batch_size=7, min_length=2)
    _same(
        beam_search(model, PROMPTS, BeamSettings(**s, stop_ids=(50256,))),
        beam_search(model, PROMPTS, BeamSettings(**s, stop_ids=())),
    )


def test_process_logits_order_is_the_seeds():
    """Repetition penalty before the bans: a banned token stays -inf whatever the penalty."""
    logits = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    gen = torch.tensor([[2, 1, 2]])
    prompt, mask = torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.bool)
    s = BeamSettings(no_repeat_ngram_size=2, repetition_penalty=2.0, min_length=5, stop_ids=(3,))
    out = process_logits(logits, gen, prompt, mask, 3, s, torch.tensor([3]))
    # rp: token 1 (-2 -> -4), token 2 (3 -> 1.5); min length bans 3; the bigram (2, 1) bans 1
    assert out.tolist() == [[1.0, float("-inf"), 1.5, float("-inf")]]


def test_settings_validate():
    with pytest.raises(ValueError):
        BeamSettings(beam=0)
    with pytest.raises(ValueError):
        BeamSettings(repetition_penalty=0.0)
    assert Hypothesis([1], 0.0, True).finished
