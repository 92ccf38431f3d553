"""The training step's pieces against upstream: AdamW's update, the schedules, the loss.

References are upstream's formulas (microsoft/LoRA examples/NLG: ``optimizer.py`` AdamW and
schedulers, ``model.py`` label-smoothed loss), restated here from their definitions.
"""

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from lora_nlg.methods import LoRAConfig, apply_adapter, mark_only_adapter_as_trainable
from lora_nlg.model import GPT2Config, GPT2LMModel
from lora_nlg.train.loop import shard_batches, token_loss_sum
from lora_nlg.train.optim import AdamW, build_scheduler, param_groups


def seed_adamw(params, grads_per_step, lr, betas, eps, weight_decay, correct_bias):
    """Upstream's AdamW.step, step by step: eps added to sqrt(v) before bias correction, the bias
    correction only with correct_bias, decoupled weight decay after the update."""
    params = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    b1, b2 = betas
    for t, grads in enumerate(grads_per_step, 1):
        for p, g, m_, v_ in zip(params, grads, m, v):
            m_.mul_(b1).add_(g, alpha=1 - b1)
            v_.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = v_.sqrt().add_(eps)
            step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t) if correct_bias else lr
            p.addcdiv_(m_, denom, value=-step_size)
            if weight_decay > 0:
                p.add_(p, alpha=-lr * weight_decay)
    return params


def run_optimizer(optimizer_cls, params, grads_per_step, **kw):
    params = [torch.nn.Parameter(p.clone()) for p in params]
    opt = optimizer_cls(params, **kw)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(16, 8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)]
    # Gradients of very different sizes: tiny ones are where eps and bias correction matter.
    scales = [1e-1, 1e-3, 1e-6]
    grads = [
        [torch.randn(p.shape, generator=g, dtype=torch.float64) * scales[t % 3] for p in params] for t in range(30)
    ]
    return params, grads


@pytest.mark.parametrize("correct_bias", [True, False])
def test_adamw_matches_the_seeds_update(problem, correct_bias):
    params, grads = problem
    kw = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6)
    ours = run_optimizer(AdamW, params, grads, weight_decay=0.0, correct_bias=correct_bias, **kw)
    ref = seed_adamw(params, grads, weight_decay=0.0, correct_bias=correct_bias, **kw)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # torch's own AdamW is a different update here: the test can tell them apart.
    plain = run_optimizer(torch.optim.AdamW, params, grads, weight_decay=0.0, **kw)
    assert max((a - b).abs().max() for a, b in zip(plain, ref)) > 1e-4


def test_adamw_weight_decay_differs_from_the_seed_only_at_second_order(problem):
    params, grads = problem
    kw = dict(lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, correct_bias=True)
    ours = run_optimizer(AdamW, params, grads, **kw)
    ref = seed_adamw(params, grads, **kw)
    no_decay = seed_adamw(params, grads, **{**kw, "weight_decay": 0.0})
    for a, b, c in zip(ours, ref, no_decay):
        # decay before (torch) or after (upstream) the update: lr * wd * update apart
        assert (a - b).abs().max() < 1e-6
        assert (a - b).abs().max() < 0.01 * (b - c).abs().max()  # decay itself moves them 100x more


def test_adamw_loads_a_state_saved_under_the_old_step_key(problem):
    """Trainer states written before the step count's rename keep it under "seed_step"."""
    params, grads = problem
    a = [torch.nn.Parameter(p.clone()) for p in params]
    opt = AdamW(a, lr=1e-2, correct_bias=False)
    for p, g in zip(a, grads[0]):
        p.grad = g.clone()
    opt.step()
    old = copy.deepcopy(opt.state_dict())
    old["param_groups"] = [
        {("seed_step" if k == "upstream_step" else k): v for k, v in g.items()} for g in old["param_groups"]
    ]
    opt2 = AdamW([torch.nn.Parameter(p.detach().clone()) for p in a], lr=1e-2, correct_bias=False)
    opt2.load_state_dict(old)
    assert opt2.param_groups[0]["upstream_step"] == 1 and "seed_step" not in opt2.param_groups[0]


def test_adamw_state_round_trips_through_state_dict(problem):
    params, grads = problem
    a = [torch.nn.Parameter(p.clone()) for p in params]
    opt = AdamW(a, lr=1e-2, correct_bias=False)
    for grads_t in grads[:5]:
        for p, g in zip(a, grads_t):
            p.grad = g.clone()
        opt.step()
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt2 = AdamW(b, lr=1e-2, correct_bias=False)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if read from a file: no shared tensors
    assert opt2.param_groups[0]["upstream_step"] == 5
    for grads_t in grads[5:10]:
        for p, q, g in zip(a, b, grads_t):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        opt2.step()
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def test_no_decay_bias_groups_biases_and_layer_norms():
    model = GPT2LMModel(GPT2Config.from_card("gpt2.tiny", vocab_size=64, n_positions=32))
    decay, no_decay = param_groups(model, 0.01, no_decay_bias=True)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in no_decay["params"]} == {
        n for n in names.values() if n.endswith(".bias") or ".ln_" in n
    }
    assert len(param_groups(model, 0.01, no_decay_bias=False)) == 1
    apply_adapter(model, LoRAConfig(r=2))
    mark_only_adapter_as_trainable(model)
    (group,) = param_groups(model, 0.01, no_decay_bias=True)  # LoRA: only A and B train
    assert sum(p.numel() for p in group["params"]) == 4 * (2 * 2 * 128 + 2 * 128 * 2)


def lrs(name, warmup, total, steps, **kw):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_scheduler(opt, name, warmup, total, 0.1, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_follow_the_seed():
    # get_linear_schedule_with_warmup(500 -> 4, 10): t / warmup, then (total - t) / (total - warmup)
    assert lrs("linear", 4, 10, 12) == pytest.approx(
        [0.1 * x for x in (0, 0.25, 0.5, 0.75, 1, 5 / 6, 4 / 6, 0.5, 2 / 6, 1 / 6, 0, 0)]
    )
    assert lrs("constant", 2, 10, 5) == pytest.approx([0, 0.05, 0.1, 0.1, 0.1])
    # CosineAnnealingWarmupRestarts: warmup, then 0.5 (1 + cos(pi t / total)) over [0, total]
    assert lrs("cosine", 2, 8, 10) == pytest.approx(
        [0, 0.05] + [0.1 * 0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(2, 9)] + [0]
    )
    # CyclicScheduler: linear between (i_steps, i_lrs) points (with its 1e-6 in the denominator)
    got = lrs("cycle", 0, 4, 6, i_steps="0,2,4", i_lrs="0.0,0.2,0.1")
    assert got == pytest.approx([0, 0.1, 0.2, 0.15, 0.1, 0.1], rel=1e-5)


def seed_loss(model, batch, label_smooth):
    """Upstream's GPT2LMModel loss: full-vocabulary logits at every position, then
    (1 - eps) * nll + eps * mean(-log p), masked; here summed (the trainer divides)."""
    logits = model(batch["input_ids"])  # (B, T, V)
    logprobs = F.log_softmax(logits.float(), dim=-1)
    nll = -logprobs.gather(-1, batch["labels"].unsqueeze(-1)).squeeze(-1)
    smooth = -logprobs.mean(dim=-1)
    loss = (1.0 - label_smooth) * nll + label_smooth * smooth if label_smooth > 0 else nll
    return (loss * batch["loss_mask"]).sum()


@pytest.mark.parametrize("label_smooth", [0.0, 0.1])
def test_loss_at_completion_positions_equals_the_seeds_full_logit_loss(label_smooth):
    torch.manual_seed(0)
    model = GPT2LMModel(GPT2Config.from_card("gpt2.tiny", vocab_size=300, n_positions=32))
    apply_adapter(model, LoRAConfig(r=2, alpha=8))
    with torch.no_grad():
        for _, m in model.named_modules():
            if hasattr(m, "lora_B"):
                m.lora_B.normal_()
    ids = torch.randint(0, 300, (3, 12))
    lengths = [12, 9, 7]
    mask = torch.zeros(3, 12)
    for b, (n, start) in enumerate(zip(lengths, [5, 3, 2])):
        mask[b, start : n - 1] = 1.0
    batch = dict(input_ids=ids, labels=torch.roll(ids, -1, dims=1), loss_mask=mask)
    ours = token_loss_sum(model, batch, label_smooth, contextlib.nullcontext)
    ours.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    ref = seed_loss(model, batch, label_smooth)
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for g, p in zip(grads, [p for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_validation_shards_score_every_example_once():
    lengths = [5, 3, 9, 1, 7, 7, 2, 8, 4, 6, 10]
    shards = [shard_batches(lengths, 2, 3, r) for r in range(3)]
    seen = sorted(i for shard in shards for batch in shard for i in batch)
    assert seen == list(range(len(lengths)))
    assert all(len(batch) <= 2 for shard in shards for batch in shard)
