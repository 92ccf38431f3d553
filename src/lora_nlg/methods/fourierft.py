"""FourierFT (Gao et al. 2024): a few trained coefficients of the update's 2-D spectrum.

Every enabled slice (out, in) of every layer adds ``x dW^T`` with

    dW = scaling * real(ifft2(F)),   F zero but at n_frequency entries, which hold the trained spectrum

The entries are PEFT's: ``randperm(out * in, generator=manual_seed(seed))[:n_frequency]`` read as
(row, column), the same in every layer of that shape. The spectrum starts ``randn`` (PEFT's and the
paper's default) or at zero. The file holds the spectra; the seed is in its metadata.
"""

import dataclasses
import functools
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from lora_nlg.methods.base import AdapterLayer, MethodConfig, check_number

INITS = ("randn", "zeros")


@functools.lru_cache(maxsize=16)
def frequencies(out_features: int, in_features: int, n: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of the ``n`` trained spectral entries of an (out, in) update."""
    index = torch.randperm(out_features * in_features, generator=torch.Generator().manual_seed(seed), device="cpu")[:n]
    return index // in_features, index % in_features


@dataclasses.dataclass
class FourierFTConfig(MethodConfig):
    name = "fourierft"
    title = "FourierFT"
    shape_fields = ("n_frequency",)
    flags = {
        "n_frequency": "fourierft_n",
        "scaling": "fourierft_scaling",
        "seed": "fourierft_seed",
        "init": "fourierft_init",
        "targets": "lora_targets",
    }

    n_frequency: int = 1000
    scaling: float = 150.0  # PEFT's default; the paper's E2E runs use 300
    seed: int = 777  # of the entries (PEFT's random_loc_seed)
    init: str = "randn"
    targets: Tuple[str, ...] = ("q", "v")
    bias: str = "none"

    def __post_init__(self):
        super().__post_init__()
        if type(self.n_frequency) is not int or self.n_frequency < 1:
            raise ValueError(f"FourierFT n_frequency must be an integer >= 1, got {self.n_frequency!r}")
        if type(self.seed) is not int or not 0 <= self.seed < 2**63:
            raise ValueError(f"FourierFT seed must be an integer >= 0, got {self.seed!r}")
        check_number(self.title, "scaling", self.scaling)
        if self.init not in INITS:
            raise ValueError(f"unknown FourierFT init {self.init!r}; choose from {list(INITS)}")

    def check_usable(self, source: str) -> "FourierFTConfig":
        if not torch.isfinite(torch.tensor(float(self.scaling))):
            raise ValueError(f"{source}: FourierFT scaling={self.scaling}; no model computes with it")
        return self

    def layer_shapes(self, n: int, out_slice: int, in_features: int):
        return {"fourierft_spectrum": (n, self.n_frequency)}

    def make_layer(self, base: nn.Linear, enable, shared) -> "FourierFTLinear":
        return FourierFTLinear(base, enable, self.n_frequency, self.scaling, self.seed, self.init, self.bias)


class FourierFTLinear(AdapterLayer):
    config_class = FourierFTConfig

    def __init__(self, base_layer: nn.Linear, enable, n_frequency: int, scaling: float, seed: int, init, bias):
        super().__init__(base_layer, enable, bias)
        if n_frequency > self.out_slice * self.in_features:
            raise ValueError(
                f"FourierFT n_frequency={n_frequency} exceeds the {self.out_slice} x {self.in_features} entries of "
                f"the layer's spectrum"
            )
        self.n_frequency, self.scaling, self.seed, self.init = n_frequency, scaling, seed, init
        rows, cols = frequencies(self.out_slice, self.in_features, n_frequency, seed)
        device = base_layer.weight.device
        self.register_buffer("_freq_rows", rows.to(device), persistent=False)
        self.register_buffer("_freq_cols", cols.to(device), persistent=False)
        shape = (self.n_enabled, n_frequency)
        spectrum = torch.randn(shape, device=device) if init == "randn" else torch.zeros(shape, device=device)
        self.fourierft_spectrum = nn.Parameter(spectrum)

    def tensors(self):
        return {"fourierft_spectrum": self.fourierft_spectrum}

    def settings(self) -> dict:
        return dict(n_frequency=self.n_frequency, scaling=self.scaling, seed=self.seed, init=self.init, bias=self.bias)

    def _slice_deltas(self) -> torch.Tensor:
        """(slices * out, in): every slice's dW, computed in float32 (or float64) as ifft2 needs."""
        spectrum = self.fourierft_spectrum
        dtype = torch.float64 if spectrum.dtype == torch.float64 else torch.float32
        dense = spectrum.new_zeros((self.n_enabled, self.out_slice, self.in_features), dtype=dtype)
        dense[:, self._freq_rows, self._freq_cols] = spectrum.to(dtype)
        return (torch.fft.ifft2(dense).real * self.scaling).flatten(0, 1)

    def forward(self, x):
        y = self.base_layer(x)
        if self.merged:
            return y
        delta = self._slice_deltas()
        return self.add_to_slices(y, F.linear(x, delta.to(x.dtype)))

    def delta_weight(self) -> torch.Tensor:
        return self.scatter_rows(self._slice_deltas())
