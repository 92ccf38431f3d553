"""LoRA (Hu et al. 2021) as a wrapper around an existing ``nn.Linear``.

``LoRALinear`` keeps the wrapped layer as ``base_layer`` (untouched) and adds
``scaling * B @ A`` to the output slices it is enabled on. For GPT-2's fused ``c_attn``
(q, k, v stacked along the output) the default enables q and v, like upstream's
``loralib.MergedLinear(enable_lora=[True, False, True])``; the tensors have upstream's layout:

    lora_A: (n_enabled * r, in_features)          A_q stacked on A_v
    lora_B: (n_enabled * out_slice, r)            B_q stacked on B_v

Forward computes ``x A^T`` then multiplies by a (out_features, n_enabled * r) block matrix built
from B with zero rows for disabled slices: a rank-sized product, never a full delta-W per forward.

Merging is explicit and reversible (``merge`` / ``unmerge``, both idempotent); a merged
model computes the same function at the cost of the base model alone.
"""

import dataclasses
import math
from typing import Sequence, Tuple

import torch
import torch.nn as nn

from lora_nlg.methods.base import AdapterLayer, MethodConfig, check_number

SCALING_RULES = {
    "alpha/r": lambda alpha, r: alpha / r,  # LoRA paper
    "alpha/sqrt(r)": lambda alpha, r: alpha / math.sqrt(r),  # rsLoRA (Kalajdzievski 2023)
}


@dataclasses.dataclass
class LoRAConfig(MethodConfig):
    name = "lora"
    title = "LoRA"
    shape_fields = ("r",)
    flags = {
        "r": "lora_dim",
        "alpha": "lora_alpha",
        "dropout": "lora_dropout",
        "targets": "lora_targets",
        "scaling_rule": "lora_scaling_rule",
    }

    r: int = 4
    alpha: float = 128.0  # upstream's model default: scale 128 / 4 = 32 (the paper's recipes use 32)
    dropout: float = 0.0
    targets: Tuple[str, ...] = ("q", "v")
    scaling_rule: str = "alpha/r"
    init: str = "kaiming"  # A ~ kaiming-uniform(a=sqrt(5)) as upstream, or "gaussian" (std 1/r)
    bias: str = "none"  # which biases train: none | all | lora_only

    def __post_init__(self):
        super().__post_init__()
        if self.scaling_rule not in SCALING_RULES:
            raise ValueError(f"unknown scaling rule {self.scaling_rule!r}; choose from {list(SCALING_RULES)}")
        if self.init not in ("kaiming", "gaussian"):
            raise ValueError(f"unknown LoRA init {self.init!r}; choose kaiming or gaussian")
        if type(self.r) is not int or self.r < 1:
            raise ValueError(f"LoRA rank r must be an integer >= 1, got {self.r!r}")
        for name in ("alpha", "dropout"):  # a non-finite alpha is refused where the adapter is used
            check_number(self.title, name, getattr(self, name))
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
        # No "method" key: LoRA files are as they were before there were other methods.
        return {**dataclasses.asdict(self), "targets": list(self.targets), "scaling": self.scaling}

    def layer_shapes(self, n: int, out_slice: int, in_features: int):
        return {"lora_A": (n * self.r, in_features), "lora_B": (n * out_slice, self.r)}

    def make_layer(self, base: nn.Linear, enable, shared) -> "LoRALinear":
        return LoRALinear(base, self.r, self.alpha, enable, self.dropout, self.scaling_rule, self.init, self.bias)

    def describe(self) -> str:
        return f"LoRA r={self.r} alpha={self.alpha:g} on {','.join(self.targets)}"


class LoRALinear(AdapterLayer):
    """``base_layer(x) + scaling * dropout(x) A^T B^T`` on the enabled output slices.

    ``bias`` only records which biases train with this adapter (``LoRAConfig.bias``), so that the
    layers alone describe the adapter (``adapter_config_of``)."""

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
        super().__init__(base_layer, enable, bias)
        in_features = self.in_features
        self.r, self.alpha, self.scaling_rule, self.init = r, alpha, scaling_rule, init
        self.scaling = SCALING_RULES[scaling_rule](alpha, r)
        n = self.n_enabled
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

    def tensors(self):
        return {"lora_A": self.lora_A, "lora_B": self.lora_B}

    def settings(self) -> dict:
        dropout = self.lora_dropout.p if isinstance(self.lora_dropout, nn.Dropout) else 0.0
        return dict(
            r=self.r, alpha=self.alpha, scaling_rule=self.scaling_rule, dropout=dropout, init=self.init, bias=self.bias
        )

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, enable={list(self.enable)}"


LoRALinear.config_class = LoRAConfig
