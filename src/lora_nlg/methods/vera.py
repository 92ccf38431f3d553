"""VeRA (Kopiczko et al. 2024): frozen random A and B shared by every layer, trained scaling vectors.

Every enabled slice j of every layer adds

    lambda_b_j * (B[:out] @ (lambda_d_j * (A[:, :in] x)))        vera_lambda_d: (slices, r)   init d_initial
                                                                 vera_lambda_b: (slices * out,)   init 0

where A (r, in_max) and B (out_max, r) are drawn once for the whole model, as PEFT does:
kaiming-uniform from ``torch.Generator().manual_seed(seed)``, A first, in_max / out_max the
largest dims over the targeted slices. The adapter file holds only the vectors; the seed is in its
metadata and rebuilds A and B exactly.
"""

import dataclasses
import math
from typing import Tuple

import torch
import torch.nn as nn

from lora_nlg.methods.base import AdapterLayer, MethodConfig, check_number, slice_shapes


def kaiming_uniform(shape, generator: torch.Generator) -> torch.Tensor:
    """PEFT's ``_kaiming_init``: uniform in +-sqrt(6 / fan_in), fan_in = shape[1]."""
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
    return torch.empty(shape, device="cpu").uniform_(-bound, bound, generator=generator)


@dataclasses.dataclass
class VeRAConfig(MethodConfig):
    name = "vera"
    title = "VeRA"
    shape_fields = ("r",)
    flags = {
        "r": "vera_r",
        "d_initial": "vera_d_initial",
        "seed": "vera_seed",
        "dropout": "lora_dropout",
        "targets": "lora_targets",
    }

    r: int = 256  # PEFT's default; the paper's E2E runs use 1024
    d_initial: float = 0.1
    seed: int = 0  # of A and B (PEFT's projection_prng_key)
    dropout: float = 0.0
    targets: Tuple[str, ...] = ("q", "v")
    bias: str = "none"

    def __post_init__(self):
        super().__post_init__()
        if type(self.r) is not int or self.r < 1:
            raise ValueError(f"VeRA rank r must be an integer >= 1, got {self.r!r}")
        if type(self.seed) is not int or not 0 <= self.seed < 2**63:
            raise ValueError(f"VeRA seed must be an integer >= 0, got {self.seed!r}")
        for name in ("d_initial", "dropout"):
            check_number(self.title, name, getattr(self, name))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VeRA dropout must be in [0, 1), got {self.dropout!r}")

    def layer_shapes(self, n: int, out_slice: int, in_features: int):
        return {"vera_lambda_d": (n, self.r), "vera_lambda_b": (n * out_slice,)}

    def shared(self, model: nn.Module) -> "VeRAProjections":
        shapes = slice_shapes(self.targets, model.config.n_embd).values()
        out_max = max(out for _, out, _ in shapes)
        in_max = max(in_ for _, _, in_ in shapes)
        return VeRAProjections(self.r, in_max, out_max, self.seed).to(model.transformer.wte.weight.device)

    def make_layer(self, base: nn.Linear, enable, shared) -> "VeRALinear":
        return VeRALinear(base, enable, shared, self.d_initial, self.dropout, self.bias)


class VeRAProjections(nn.Module):
    """The frozen A (r, in_max) and B (out_max, r): buffers, not saved (the seed rebuilds them)."""

    def __init__(self, r: int, in_max: int, out_max: int, seed: int):
        super().__init__()
        self.r, self.seed = r, seed
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("vera_A", kaiming_uniform((r, in_max), generator), persistent=False)
        self.register_buffer("vera_B", kaiming_uniform((out_max, r), generator), persistent=False)


class VeRALinear(AdapterLayer):
    config_class = VeRAConfig

    def __init__(self, base_layer: nn.Linear, enable, projections: VeRAProjections, d_initial, dropout, bias):
        super().__init__(base_layer, enable, bias)
        if projections.vera_A.shape[1] < self.in_features or projections.vera_B.shape[0] < self.out_slice:
            raise ValueError(f"VeRA's projections {tuple(projections.vera_B.shape)} are too small for this layer")
        self.projections = projections
        self.d_initial = d_initial
        w = base_layer.weight
        self.vera_lambda_d = nn.Parameter(
            torch.full((self.n_enabled, projections.r), float(d_initial), dtype=w.dtype, device=w.device)
        )
        self.vera_lambda_b = nn.Parameter(torch.zeros(self.n_enabled * self.out_slice, dtype=w.dtype, device=w.device))
        self.vera_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def tensors(self):
        return {"vera_lambda_d": self.vera_lambda_d, "vera_lambda_b": self.vera_lambda_b}

    def settings(self) -> dict:
        dropout = self.vera_dropout.p if isinstance(self.vera_dropout, nn.Dropout) else 0.0
        p = self.projections
        return dict(r=p.r, seed=p.seed, d_initial=self.d_initial, dropout=dropout, bias=self.bias)

    def _a_b(self):
        p = self.projections
        return p.vera_A[:, : self.in_features], p.vera_B[: self.out_slice]

    def forward(self, x):
        y = self.base_layer(x)
        if self.merged:
            return y
        a, b = self._a_b()
        h = self.vera_dropout(x) @ a.t()  # (..., r): one A for every slice
        u = (h.unsqueeze(-2) * self.vera_lambda_d) @ b.t()  # (..., slices, out)
        return self.add_to_slices(y, u.flatten(-2) * self.vera_lambda_b)

    def delta_weight(self) -> torch.Tensor:
        a, b = self._a_b()
        lambda_b = self.vera_lambda_b.view(self.n_enabled, self.out_slice, 1)
        rows = (lambda_b * b) @ (self.vera_lambda_d.unsqueeze(-1) * a)  # (slices, out, in)
        return self.scatter_rows(rows.flatten(0, 1))
