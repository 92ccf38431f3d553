"""DoRA (Liu et al. 2024): LoRA's direction, normalised per output row, times a trained magnitude.

On the enabled rows E of the wrapped layer (weight W, LoRA update s B A as in ``lora.py``):

    W'_E = m / ||W_E + s B A||_row * (W_E + s B A)         lora_magnitude m: (rows of E,), init ||W_E||_row

Only the rows of the enabled slices are normalised (q and v of ``c_attn``; k keeps its weights), so a
slice equals DoRA on a separate ``nn.Linear``. As PEFT, the row norm is treated as a constant in the
backward pass (the paper's section 4.3) and the forward never builds W': it is

    y + (g - 1) * (x W_E^T) + g * s * x A^T B^T,   g = m / ||W_E + s B A||_row,

with ``x W_E^T`` read off the base output (``y - bias``) unless dropout is on. ``merge`` writes W'_E
and keeps the norms, so ``unmerge`` restores W_E.
"""

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from lora_nlg.methods.lora import LoRAConfig, LoRALinear


@dataclasses.dataclass
class DoRAConfig(LoRAConfig):
    name = "dora"
    title = "DoRA"

    def to_dict(self) -> dict:
        return {"method": self.name, **super().to_dict()}

    def layer_shapes(self, n: int, out_slice: int, in_features: int):
        return {**super().layer_shapes(n, out_slice, in_features), "lora_magnitude": (n * out_slice,)}

    def make_layer(self, base: nn.Linear, enable, shared) -> "DoRALinear":
        return DoRALinear(base, self.r, self.alpha, enable, self.dropout, self.scaling_rule, self.init, self.bias)

    def describe(self) -> str:
        return "DoRA" + super().describe()[len("LoRA") :]


class DoRALinear(LoRALinear):
    """``LoRALinear`` with a magnitude per enabled output row (see the module docstring)."""

    config_class = DoRAConfig

    def __init__(self, base_layer: nn.Linear, *args, **kwargs):
        super().__init__(base_layer, *args, **kwargs)
        w = base_layer.weight
        self.lora_magnitude = nn.Parameter(torch.empty(len(self._enabled_rows), dtype=w.dtype, device=w.device))
        self._merged_norm = None
        if not w.is_meta:
            with torch.no_grad():
                self.lora_magnitude.copy_(self.weight_norm())

    def tensors(self):
        return {**super().tensors(), "lora_magnitude": self.lora_magnitude}

    def _compact_delta(self) -> torch.Tensor:
        """s B A on the enabled rows only: (rows of E, in)."""
        return (self._b_compact() @ self.lora_A) * self.scaling

    def _b_compact(self) -> torch.Tensor:
        """block_diag(B_1 .. B_n): (rows of E, n * r)."""
        return torch.block_diag(*self.lora_B.split(self.out_slice)) if self.n_enabled > 1 else self.lora_B

    def _base_rows(self) -> torch.Tensor:
        w = self.base_layer.weight
        return w if all(self.enable) else w.index_select(0, self._enabled_rows)

    def weight_norm(self) -> torch.Tensor:
        """||W_E + s B A|| per enabled row, LoRA's tensors taken as constants."""
        return torch.linalg.vector_norm(self._base_rows() + self._compact_delta().detach(), dim=1)

    def forward(self, x):
        y = self.base_layer(x)
        if self.merged:
            return y
        g = self.lora_magnitude / self.weight_norm().detach()
        xd = self.lora_dropout(x)
        lora = (xd @ self.lora_A.t()) @ self._b_compact().t() * self.scaling
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            z = y if all(self.enable) else y.index_select(-1, self._enabled_rows)
            bias = self.base_layer.bias
            if bias is not None:
                z = z - (bias if all(self.enable) else bias.index_select(0, self._enabled_rows))
        else:
            z = F.linear(xd, self._base_rows())
        return self.add_to_slices(y, (g - 1) * z + g * lora)

    def delta_weight(self) -> torch.Tensor:
        """W' - W as a full (out, in) matrix (of the unmerged layer)."""
        w = self._base_rows()
        direction = w + self._compact_delta()
        g = self.lora_magnitude / torch.linalg.vector_norm(direction, dim=1)
        return self.scatter_rows(g[:, None] * direction - w)

    @torch.no_grad()
    def merge(self):
        if self.merged:
            return
        w = self.base_layer.weight
        direction = self._base_rows() + self._compact_delta().to(w.dtype)
        norm = torch.linalg.vector_norm(direction, dim=1)
        new = (self.lora_magnitude / norm)[:, None].to(w.dtype) * direction
        self._write_rows(new)
        self._merged_norm = norm
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if not self.merged:
            return
        w = self.base_layer.weight
        g = (self.lora_magnitude / self._merged_norm)[:, None].to(w.dtype)
        self._write_rows(self._base_rows() / g - self._compact_delta().to(w.dtype))
        self._merged_norm = None
        self.merged = False

    def _write_rows(self, rows: torch.Tensor) -> None:
        w = self.base_layer.weight
        if all(self.enable):
            w.copy_(rows)
        else:
            w.index_copy_(0, self._enabled_rows, rows)
