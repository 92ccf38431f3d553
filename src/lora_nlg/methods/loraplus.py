"""LoRA+ (Hayou et al. 2024): lora_B learns ``ratio`` times faster than lora_A.

An optimizer setting, not a layer: every parameter group is split in two, lora_B and every 1-dim
adapter tensor (DoRA's magnitude, biases) at ``lr * ratio``, the rest at ``lr``, each keeping its
group's weight decay; the grouping rule is ``peft.optimizers.create_loraplus_optimizer``'s.
"""

from typing import Dict, List

import torch.nn as nn


def fast(name: str, p) -> bool:
    """Whether a parameter learns at the raised rate (PEFT's rule: ``lora_B`` in its name, or 1-dim)."""
    return "lora_B" in name or p.ndim == 1


def split_groups(model: nn.Module, groups: List[Dict], lr: float, ratio: float) -> List[Dict]:
    """``groups`` (each a dict with ``params``) split into A-like at ``lr`` and B-like at ``lr * ratio``."""
    names = {id(p): n for n, p in model.named_parameters()}
    if not any("lora_B" in names[id(p)] for g in groups for p in g["params"]):
        raise ValueError("LoRA+ needs lora_B tensors to train, and the model has none")
    out = []
    for group in groups:
        for rate, keep in ((lr, False), (lr * ratio, True)):
            params = [p for p in group["params"] if fast(names[id(p)], p) == keep]
            if params:
                out.append({**group, "params": params, "lr": rate})
    return out
