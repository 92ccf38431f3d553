"""LoRA (Hu et al. 2021) as a wrapper around an existing ``nn.Linear``.

``LoRALinear`` keeps the wrapped layer as ``base_layer`` (untouched) and adds
``scaling * B @ A`` to the output slices it is enabled on. For GPT-2's fused ``c_attn``
(q, k, v stacked along the output) the default enables q and v, like upstream's
``loralib.MergedLinear(enable_lora=[True, False, True])``; the tensors have upstream's layout:

    lora_A: (n_enabled * r, in_features)          A_q stacked on A_v
    lora_B: (n_enabled * out_slice, r)            B_q stacked on B_v

Forward computes ``x A^T`` then multiplies by a (out_features, n_enabled * r) block matrix built
from B with zero rows for disabled slices: a rank-sized product, never a full delta-W per forward.

Merging is explicit and reversible (``merge_lora`` / ``unmerge_lora``, both idempotent); a merged
model computes the same function at the cost of the base model alone.
"""

import dataclasses
import math
from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn

# Where LoRA can go, as (module path inside a block, slice of its output or None for all of it).
# q, k, v are slices 0, 1, 2 of the fused c_attn.
TARGETS = {
    "q": ("attn.c_attn", 0),
    "k": ("attn.c_attn", 1),
    "v": ("attn.c_attn", 2),
    "attn.c_proj": ("attn.c_proj", None),
    "mlp.c_fc": ("mlp.c_fc", None),
    "mlp.c_proj": ("mlp.c_proj", None),
}

# LoRA modules inside a GPT-2 block, and how many output slices each has (q, k, v for c_attn).
MODULE_SLICES = {"attn.c_attn": 3, "attn.c_proj": 1, "mlp.c_fc": 1, "mlp.c_proj": 1}
# Their (in, out) features in units of n_embd.
MODULE_DIMS = {"attn.c_attn": (1, 3), "attn.c_proj": (1, 1), "mlp.c_fc": (1, 4), "mlp.c_proj": (4, 1)}

SCALING_RULES = {
    "alpha/r": lambda alpha, r: alpha / r,  # LoRA paper
    "alpha/sqrt(r)": lambda alpha, r: alpha / math.sqrt(r),  # rsLoRA (Kalajdzievski 2023)
}


@dataclasses.dataclass
class LoRAConfig:
    r: int = 4
    alpha: float = 128.0  # upstream's model default: scale 128 / 4 = 32 (the paper's recipes use 32)
    dropout: float = 0.0
    targets: Tuple[str, ...] = ("q", "v")
    scaling_rule: str = "alpha/r"
    init: str = "kaiming"  # A ~ kaiming-uniform(a=sqrt(5)) as upstream, or "gaussian" (std 1/r)
    bias: str = "none"  # which biases train: none | all | lora_only

    def __post_init__(self):
        self.targets = tuple(self.targets)
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown LoRA target(s) {unknown}; choose from {list(TARGETS)}")
        if self.scaling_rule not in SCALING_RULES:
            raise ValueError(f"unknown scaling rule {self.scaling_rule!r}; choose from {list(SCALING_RULES)}")
        if self.init not in ("kaiming", "gaussian"):
            raise ValueError(f"unknown LoRA init {self.init!r}; choose kaiming or gaussian")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"unknown LoRA bias mode {self.bias!r}; choose none, all or lora_only")
        if type(self.r) is not int or self.r < 1:
            raise ValueError(f"LoRA rank r must be an integer >= 1, got {self.r!r}")
        for name in ("alpha", "dropout"):  # a non-finite alpha is refused where the adapter is used
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"LoRA {name} must be a number, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def scaling(self) -> float:
        return SCALING_RULES[self.scaling_rule](self.alpha, self.r)

    def check_usable(self, source: str) -> "LoRAConfig":
        """Itself, or a ValueError when its scale is no finite number (the model would compute NaN)."""
        if not math.isfinite(self.scaling):
            raise ValueError(
                f"{source}: alpha={self.alpha} gives the LoRA scale {self.scaling}; no model computes with it"
            )
        return self

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "targets": list(self.targets), "scaling": self.scaling}

    @classmethod
    def from_dict(cls, d: dict) -> "LoRAConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


class LoRALinear(nn.Module):
    """``base_layer(x) + scaling * dropout(x) A^T B^T`` on the enabled output slices.

    ``bias`` only records which biases train with this adapter (``LoRAConfig.bias``), so that the
    layers alone describe the adapter (``lora_config_of``)."""

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        alpha: float,
        enable: Sequence[bool] = (True,),
        dropout: float = 0.0,
        scaling_rule: str = "alpha/r",
        init: str = "kaiming",
        bias: str = "none",
    ):
        super().__init__()
        out_features, in_features = base_layer.weight.shape
        if out_features % len(enable) != 0:
            raise ValueError(f"{out_features} outputs do not split into {len(enable)} slices")
        self.base_layer = base_layer
        self.r, self.alpha, self.scaling_rule, self.init, self.bias = r, alpha, scaling_rule, init, bias
        self.scaling = SCALING_RULES[scaling_rule](alpha, r)
        self.enable = tuple(bool(e) for e in enable)
        self.out_slice = out_features // len(enable)
        n = sum(self.enable)
        w = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(n * r, in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(n * self.out_slice, r, dtype=w.dtype, device=w.device))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Output row -> row of block_diag(B_1..B_n), or the extra zero row for disabled slices.
        rows, j = [], 0
        for e in self.enable:
            rows.append(
                torch.arange(j * self.out_slice, (j + 1) * self.out_slice)
                if e
                else torch.full((self.out_slice,), n * self.out_slice)
            )
            j += e
        self.register_buffer("_rows", torch.cat(rows).to(w.device), persistent=False)
        self.merged = False
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "kaiming"):
        if self.lora_A.device.type == "meta":
            return
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as loralib
        else:
            nn.init.normal_(self.lora_A, std=1.0 / self.r)
        nn.init.zeros_(self.lora_B)

    def _b_full(self) -> torch.Tensor:
        """(out_features, n * r): block-diagonal B with zero rows for disabled slices."""
        n = sum(self.enable)
        block = torch.block_diag(*self.lora_B.split(self.out_slice)) if n > 1 else self.lora_B
        if all(self.enable):
            return block
        return torch.cat([block, block.new_zeros(1, block.shape[1])]).index_select(0, self._rows)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A as a full (out, in) matrix: only for merging, never in forward."""
        return (self._b_full() @ self.lora_A) * self.scaling

    def forward(self, x):
        y = self.base_layer(x)
        if self.merged:
            return y
        a = self.lora_dropout(x) @ self.lora_A.t()  # (..., n * r)
        # y + scaling * a B^T as one addmm: no separate scale and add passes over y.
        out = torch.addmm(
            y.reshape(-1, y.shape[-1]), a.reshape(-1, a.shape[-1]), self._b_full().t(), alpha=self.scaling
        )
        return out.view(y.shape)

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, enable={list(self.enable)}"


def enabled_slices(targets) -> Dict[str, Tuple[bool, ...]]:
    """Per module path, which output slices carry LoRA: ``("q", "v")`` -> c_attn (True, False, True)."""
    out: Dict[str, list] = {}
    for t in targets:
        path, slice_ = TARGETS[t]
        if slice_ is None:
            out[path] = [True]
        else:
            out.setdefault(path, [False] * MODULE_SLICES[path])[slice_] = True
    return {path: tuple(e) for path, e in out.items()}


def lora_shapes(config: LoRAConfig, n_layer: int, n_embd: int) -> Dict[str, Tuple[int, int]]:
    """The shape of every ``lora_A`` / ``lora_B`` that ``apply_lora`` makes on a GPT-2 of that size,
    by arithmetic alone (nothing is allocated)."""
    out = {}
    for path, enable in enabled_slices(config.targets).items():
        fan_in, fan_out = MODULE_DIMS[path]
        n = sum(enable)
        for i in range(n_layer):
            name = f"transformer.h.{i}.{path}"
            out[f"{name}.lora_A"] = (n * config.r, fan_in * n_embd)
            out[f"{name}.lora_B"] = (n * fan_out * n_embd // len(enable), config.r)
    return out


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Wrap the targeted layers of every block of ``model`` (a ``GPT2LMModel``) in place."""
    for block in model.transformer.h:
        for path, enable in enabled_slices(config.targets).items():
            parent_name, _, name = path.rpartition(".")
            parent = block.get_submodule(parent_name)
            base = getattr(parent, name)
            if isinstance(base, LoRALinear):
                raise ValueError(f"{path} already has LoRA")
            lora = LoRALinear(
                base, config.r, config.alpha, enable, config.dropout, config.scaling_rule, config.init, config.bias
            )
            # A new module starts in training mode: follow the wrapped layer, so that LoRA put on a
            # model in eval mode does not drop out.
            setattr(parent, name, lora.train(base.training))
    return model


def lora_modules(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def lora_config_of(model: nn.Module) -> LoRAConfig:
    """The ``LoRAConfig`` that ``model``'s ``LoRALinear`` layers have: one r, alpha, rule, dropout,
    init and bias mode, and the same targets in every block (a ValueError says what differs)."""
    by_block: Dict[str, set] = {}
    settings = set()
    for name, m in lora_modules(model):
        block, _, path = name.partition(".h.")[2].partition(".")
        dropout = m.lora_dropout.p if isinstance(m.lora_dropout, nn.Dropout) else 0.0
        settings.add((m.r, m.alpha, m.scaling_rule, dropout, m.init, m.bias))
        by_block.setdefault(block, set()).update(
            t for t, (p, s) in TARGETS.items() if p == path and (s is None or m.enable[s])
        )
    if not settings:
        raise ValueError("the model has no LoRA layers")
    if len(settings) > 1:
        raise ValueError(f"the LoRA layers differ in (r, alpha, scaling rule, dropout, init, bias): {sorted(settings)}")
    if len({frozenset(t) for t in by_block.values()}) > 1:
        raise ValueError(f"LoRA covers different targets in different blocks: {by_block}")
    r, alpha, rule, dropout, init, bias = settings.pop()
    targets = next(iter(by_block.values()))
    return LoRAConfig(
        r=r,
        alpha=alpha,
        dropout=dropout,
        targets=tuple(t for t in TARGETS if t in targets),
        scaling_rule=rule,
        init=init,
        bias=bias,
    )


def mark_only_lora_as_trainable(model: nn.Module, bias: str = "none") -> None:
    """Freeze everything but LoRA's A and B (and biases per ``bias``), by type, not by name."""
    for p in model.parameters():
        p.requires_grad = False
    for _, m in lora_modules(model):
        m.lora_A.requires_grad = True
        m.lora_B.requires_grad = True
        if bias == "lora_only" and m.base_layer.bias is not None:
            m.base_layer.bias.requires_grad = True
    if bias == "all":
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.requires_grad = True


def lora_state_dict(model: nn.Module, bias: str = "none") -> Dict[str, torch.Tensor]:
    """Only the LoRA tensors (and biases per ``bias``), keyed like upstream:
    ``transformer.h.0.attn.c_attn.lora_A``."""
    out = {}
    for name, m in lora_modules(model):
        out[f"{name}.lora_A"] = m.lora_A.detach()
        out[f"{name}.lora_B"] = m.lora_B.detach()
        if bias == "lora_only" and m.base_layer.bias is not None:
            out[f"{name}.bias"] = m.base_layer.bias.detach()
    if bias == "all":
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                out[name.replace(".base_layer.", ".")] = p.detach()
    return out


def merge_lora(model: nn.Module) -> nn.Module:
    for _, m in lora_modules(model):
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    for _, m in lora_modules(model):
        m.unmerge()
    return model


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
