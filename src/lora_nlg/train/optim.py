"""AdamW with upstream's conventions, its parameter groups, and its learning-rate schedules.

The optimizer is ``torch.optim.AdamW`` (fused on CUDA); ``AdamW`` below only adjusts the
per-step hyper-parameters it hands to torch so that the update is upstream's (microsoft/LoRA
``examples/NLG/src/optimizer.py``):

- upstream adds ``eps`` to ``sqrt(v)`` *before* bias correction, torch after it;
- without ``--correct_bias`` upstream does no bias correction at all (torch always does).

Both are exact rescalings of torch's update at step t (``bc1 = 1 - beta1^t``,
``bc2 = 1 - beta2^t``): torch's ``lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps')`` equals the
upstream's ``lr * sqrt(bc2) / bc1 * m / (sqrt(v) + eps)`` with ``eps' = eps / sqrt(bc2)``, and the
upstream's uncorrected ``lr * m / (sqrt(v) + eps)`` with, in addition, ``lr' = lr * bc1 / sqrt(bc2)``.
Decoupled weight decay multiplies the weights by ``1 - lr * weight_decay`` as in upstream, but
before the Adam update (torch) rather than after it (upstream); the two differ by
``lr * weight_decay * update``, a second-order term.

Schedules are multipliers of ``--lr`` for ``torch.optim.lr_scheduler.LambdaLR``, stepped once per
optimizer step (upstream stepped per micro-batch under gradient accumulation). ``t`` is the
number of optimizer steps taken so far, so the first step uses ``schedule(0)``.
"""

import math
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from lora_nlg.methods import loraplus


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` computing upstream's AdamW update (see the module docstring).

    correct_bias: upstream's ``--correct_bias`` (False: no bias correction, upstream's default).
    Each param group keeps its own step count under ``"upstream_step"`` (saved in ``state_dict``;
    files saved before the rename have ``"seed_step"`` and load too).
    Not fused when a ``GradScaler`` is used: the scaler then skips ``step`` on overflow, and the
    count stays right.
    """

    def __init__(
        self,
        params,
        lr: float,
        betas=(0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = False,
        fused=None,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
        for group in self.param_groups:
            group.setdefault("correct_bias", correct_bias)
            group.setdefault("upstream_step", 0)

    @torch.no_grad()
    def step(self, closure=None):
        saved = []
        for group in self.param_groups:
            saved.append((group["lr"], group["eps"], group["weight_decay"]))
            t = group["upstream_step"] + 1
            beta1, beta2 = group["betas"]
            bc1, sqrt_bc2 = 1.0 - beta1**t, math.sqrt(1.0 - beta2**t)
            lr_factor = 1.0 if group["correct_bias"] else bc1 / sqrt_bc2
            group["lr"] = group["lr"] * lr_factor
            group["eps"] = group["eps"] / sqrt_bc2
            group["weight_decay"] = group["weight_decay"] / lr_factor  # keeps lr * wd unchanged
        try:
            loss = super().step(closure)
        finally:
            for group, (lr, eps, wd) in zip(self.param_groups, saved):
                group["lr"], group["eps"], group["weight_decay"] = lr, eps, wd
        for group in self.param_groups:
            group["upstream_step"] += 1
        return loss

    def load_state_dict(self, state_dict):
        groups = [
            {("upstream_step" if k == "seed_step" else k): v for k, v in g.items()} for g in state_dict["param_groups"]
        ]
        super().load_state_dict({**state_dict, "param_groups": groups})


def param_groups(model: nn.Module, weight_decay: float, no_decay_bias: bool) -> List[Dict]:
    """Trainable parameters, in one group, or two with ``no_decay_bias``: biases and LayerNorm
    weights get no weight decay (what upstream meant: its name filter ``layer_norm.weight``
    matched nothing in GPT-2, whose LayerNorms are ``ln_1``, ``ln_2``, ``ln_f``)."""
    no_decay_ids = set()
    if no_decay_bias:
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
        no_decay_ids.update(id(p) for n, p in model.named_parameters() if n.endswith(".bias"))
    decay = [p for p in model.parameters() if p.requires_grad and id(p) not in no_decay_ids]
    no_decay = [p for p in model.parameters() if p.requires_grad and id(p) in no_decay_ids]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas,
    eps: float,
    correct_bias: bool,
    no_decay_bias: bool,
    fused: bool = False,
    loraplus_lr_ratio: Optional[float] = None,
) -> AdamW:
    """Upstream's AdamW over ``param_groups``; with ``loraplus_lr_ratio``, LoRA+'s groups
    (``lora_nlg.methods.loraplus``)."""
    groups = param_groups(model, weight_decay, no_decay_bias)
    if not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters: nothing to optimize")
    if loraplus_lr_ratio is not None:
        groups = loraplus.split_groups(model, groups, lr, loraplus_lr_ratio)
    return AdamW(
        groups,
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        weight_decay=weight_decay,
        correct_bias=correct_bias,
        fused=fused or None,
    )


# ------------------------------------------------------------------------------------ schedules


def linear(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup from 0, then linear decay to 0 at ``total`` (upstream's and HF's)."""

    def f(t):
        if t < warmup:
            return t / max(1, warmup)
        return max(0.0, (total - t) / max(1, total - warmup))

    return f


def constant(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup from 0, then constant."""

    def f(t):
        return t / max(1, warmup) if t < warmup else 1.0

    return f


def cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup, then ``0.5 (1 + cos(pi t / total))`` down to 0, as upstream's
    ``CosineAnnealingWarmupRestarts`` (its cosine runs over [0, total], warmup included)."""

    def f(t):
        if t < warmup:
            return t / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))

    return f


def cycle(steps: Sequence[int], lrs: Sequence[float], base_lr: float) -> Callable[[int], float]:
    """Upstream's ``CyclicScheduler``: the learning rate is ``lrs[i]`` at ``steps[i]``, linear in
    between, ``lrs[-1]`` after the last step; returned as a multiplier of ``base_lr``."""

    def f(t):
        for i in range(len(steps) - 1):
            if steps[i] <= t < steps[i + 1]:
                a = min(1.0, max(0.0, (t - steps[i]) / (steps[i + 1] - steps[i] + 1e-6)))
                return (a * lrs[i + 1] + (1.0 - a) * lrs[i]) / base_lr
        return lrs[-1] / base_lr

    return f


SCHEDULES = {"linear": linear, "constant": constant, "cosine": cosine}


def parse_cycle(i_steps: str, i_lrs: str):
    """Upstream's ``--i_steps 0,1000,2000`` / ``--i_lrs 0.00025,...`` strings, checked."""
    try:
        steps = [int(s) for s in str(i_steps).split(",")]
        lrs = [float(s) for s in str(i_lrs).split(",")]
    except ValueError:
        raise ValueError(
            f"--i_steps {i_steps!r} / --i_lrs {i_lrs!r}: expected comma-separated "
            f"integers / numbers, e.g. --i_steps 0,500,1000 --i_lrs 0,2e-4,0"
        ) from None
    if len(steps) != len(lrs) or len(steps) < 2:
        raise ValueError(
            f"--i_steps and --i_lrs need the same number (at least 2) of values, got {len(steps)} and {len(lrs)}"
        )
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"--i_steps {i_steps!r} must increase")
    return steps, lrs


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    warmup: int,
    total: int,
    base_lr: float,
    i_steps: str = "0",
    i_lrs: str = "0.00025",
):
    """A ``LambdaLR`` for ``name`` in linear / constant / cosine / cycle."""
    if name == "cycle":
        steps, lrs = parse_cycle(i_steps, i_lrs)
        fn = cycle(steps, lrs, base_lr)
    elif name in SCHEDULES:
        fn = SCHEDULES[name](warmup, total)
    else:
        raise ValueError(f"unknown scheduler {name!r}; choose from {sorted(SCHEDULES) + ['cycle']}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
