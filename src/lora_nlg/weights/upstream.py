"""Upstream's released LoRA checkpoints (microsoft/LoRA ``gpt2_md_lora_e2e.pt`` and the like) ->
our adapter files.

Upstream saved ``{'model_state_dict': {...}}`` with DistributedDataParallel's ``module.`` prefix,
and on the fused c_attn ``lora_A`` (2r, n_embd) = [A_q; A_v] and ``lora_B`` (2 n_embd, r) =
[B_q; B_v] (``loralib.MergedLinear(enable_lora=[True, False, True])``): our layout, so the tensors
carry over unchanged. What the file does not hold is r's meaning, alpha and the model size, so r,
alpha and the model card are required (docs/UPSTREAM.md: a silent default scales the update 4x);
r is checked against the tensors' shapes, and the result stores all three.
"""

import os
import re
from typing import Dict, Optional, Sequence

import torch

from lora_nlg.methods import TARGETS, LoRAConfig
from lora_nlg.model import GPT2Config
from lora_nlg.weights.adapter import load_adapter, write_adapter
from lora_nlg.weights.tensors import CheckpointError


def import_upstream(
    path,
    out_path,
    lora_dim: int,
    lora_alpha: float,
    model_card: str,
    scaling_rule: str = "alpha/r",
    lora_dropout: float = 0.0,
    c_attn_targets: Optional[Sequence[str]] = None,
) -> LoRAConfig:
    """Convert the upstream checkpoint ``path`` into our adapter ``out_path``; returns its LoRA config.

    lora_dim, lora_alpha: the ``--lora_dim`` / ``--lora_alpha`` the checkpoint was trained with
    (the paper's E2E, WebNLG and DART models: 4 and 32). model_card: the GPT-2 size it was trained
    on (``gpt2.md`` for ``gpt2_md_lora_e2e.pt``); the LoRA tensors' width is checked against it.
    """
    path = os.fspath(path)
    tensors, metadata = load_adapter(path)  # LoRA tensors only, ``module.`` removed
    if metadata is not None:
        raise CheckpointError(
            f"{path}: already one of our adapters (it carries lora_nlg metadata: "
            f"r={metadata.get('r')}, alpha={metadata.get('alpha')}); nothing to import"
        )
    cfg = lora_config_from_tensors(
        tensors, alpha=lora_alpha, dropout=lora_dropout, scaling_rule=scaling_rule, c_attn_targets=c_attn_targets
    )
    if cfg.r != lora_dim:
        raise CheckpointError(
            f"{path}: the LoRA tensors have rank r={cfg.r} (lora_B has {cfg.r} columns), not --lora_dim {lora_dim}"
        )
    model_config = GPT2Config.from_card(model_card)
    layers = {int(k.split(".h.")[1].split(".")[0]) for k in tensors}
    widths = {t.shape[1] for k, t in tensors.items() if k.endswith("lora_A") and "mlp.c_proj" not in k}
    if widths != {model_config.n_embd} or max(layers) + 1 != model_config.n_layer:
        raise CheckpointError(
            f"{path}: LoRA tensors for n_embd={sorted(widths)} and {max(layers) + 1} layers; "
            f"model card {model_card} has n_embd={model_config.n_embd} and "
            f"{model_config.n_layer} layers"
        )
    extra = {
        "imported_from": {
            "format": "seed",
            "file": os.path.basename(path),
            "note": "r, alpha and model card given at import: upstream stores none",
        }
    }
    write_adapter(out_path, tensors, cfg, model_config, extra)
    return cfg


def lora_config_from_tensors(
    tensors: Dict[str, torch.Tensor],
    alpha: float,
    dropout: float = 0.0,
    scaling_rule: str = "alpha/r",
    c_attn_targets: Optional[Sequence[str]] = None,
) -> LoRAConfig:
    """The ``LoRAConfig`` (r and targets) that LoRA tensors without metadata (upstream's) imply.

    alpha cannot be read off the tensors: pass the value used in training (the paper's recipes use
    32, upstream's model default is 128). On the fused ``c_attn``, ``lora_A`` is (n * r, n_embd)
    for n enabled slices of q, k, v: n = 3 is q, k, v; n = 2 is taken as q, v (upstream's
    ``enable_lora=[True, False, True]``); n = 1 is ambiguous. ``c_attn_targets`` overrides.
    """
    key_re = re.compile(r"(?:.*\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.lora_([AB])")
    by_layer: Dict[int, Dict[str, Dict[str, torch.Tensor]]] = {}
    odd = []
    for key, t in tensors.items():
        m = key_re.fullmatch(key)
        if m is None:
            odd.append(key)
            continue
        by_layer.setdefault(int(m.group(1)), {}).setdefault(m.group(2), {})[m.group(3)] = t
    if odd or not by_layer:
        raise CheckpointError(f"not GPT-2 LoRA tensors (h.<i>.<module>.lora_A/B): {odd or 'none given'}")
    layouts = {i: sorted(mods) for i, mods in by_layer.items()}
    if len({tuple(v) for v in layouts.values()}) > 1:
        raise CheckpointError(f"LoRA covers different modules in different layers: {layouts}")
    ranks, slices = set(), {}
    for i, mods in by_layer.items():
        for module, ab in mods.items():
            if set(ab) != {"A", "B"}:
                raise CheckpointError(
                    f"h.{i}.{module}: lora_A and lora_B must come together, found only lora_{''.join(ab)}"
                )
            r = ab["B"].shape[1]
            if r < 1 or ab["A"].shape[0] % r:
                raise CheckpointError(
                    f"h.{i}.{module}: lora_A {tuple(ab['A'].shape)} and lora_B "
                    f"{tuple(ab['B'].shape)} do not share a rank r"
                )
            ranks.add(r)
            slices.setdefault(module, set()).add(ab["A"].shape[0] // r)
    if len(ranks) > 1:
        raise CheckpointError(f"LoRA tensors of different ranks {sorted(ranks)}")
    targets = []
    for module, ns in slices.items():
        if len(ns) > 1:
            raise CheckpointError(f"{module}: different numbers of LoRA slices across layers {sorted(ns)}")
        n = ns.pop()
        if module != "attn.c_attn":
            if n != 1:
                raise CheckpointError(f"{module}: lora_A holds {n} * r rows; a plain layer has r")
            targets.append(module)
        elif c_attn_targets is not None:
            if len(c_attn_targets) != n or not set(c_attn_targets) <= {"q", "k", "v"}:
                raise CheckpointError(f"c_attn_targets {list(c_attn_targets)} do not fit {n} LoRA slices on c_attn")
            targets.extend(c_attn_targets)
        elif n == 1:
            raise CheckpointError(
                "LoRA on one slice of c_attn: q, k or v cannot be told from the "
                "shapes; pass c_attn_targets=('q',) (or k, v)"
            )
        else:
            targets.extend(("q", "v") if n == 2 else ("q", "k", "v"))
    order = list(TARGETS)
    return LoRAConfig(
        r=ranks.pop(),
        alpha=alpha,
        dropout=dropout,
        scaling_rule=scaling_rule,
        targets=tuple(sorted(targets, key=order.index)),
    )
