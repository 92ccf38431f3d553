"""The contract every adapter method keeps, and what is done with it on a whole model.

A method is a config dataclass (``MethodConfig``) and a layer (``AdapterLayer``) that wraps a
block's ``nn.Linear`` and changes the output slices it is enabled on: q, k, v of the fused
``c_attn`` (slices 0, 1, 2 of its output), or a whole module. The layer names its own tensors
(``tensors()``: the keys after the module's name in the adapter file), its settings
(``settings()``, equal in every layer, read back by ``adapter_config_of``), and its update as a
full matrix (``delta_weight()``); ``merge`` / ``unmerge`` fold that update into the base weight
and back, idempotently. Everything else here (apply, freeze, state dict, shapes) is generic.
"""

import dataclasses
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

# Where an adapter can go, as (module path inside a block, slice of its output or None for all of it).
# q, k, v are slices 0, 1, 2 of the fused c_attn.
TARGETS = {
    "q": ("attn.c_attn", 0),
    "k": ("attn.c_attn", 1),
    "v": ("attn.c_attn", 2),
    "attn.c_proj": ("attn.c_proj", None),
    "mlp.c_fc": ("mlp.c_fc", None),
    "mlp.c_proj": ("mlp.c_proj", None),
}
# The adaptable modules of a GPT-2 block, and how many output slices each has (q, k, v for c_attn).
MODULE_SLICES = {"attn.c_attn": 3, "attn.c_proj": 1, "mlp.c_fc": 1, "mlp.c_proj": 1}
# Their (in, out) features in units of n_embd.
MODULE_DIMS = {"attn.c_attn": (1, 3), "attn.c_proj": (1, 1), "mlp.c_fc": (1, 4), "mlp.c_proj": (4, 1)}
BIAS_MODES = ("none", "all", "lora_only")  # which biases train with the adapter


def enabled_slices(targets) -> Dict[str, Tuple[bool, ...]]:
    """Per module path, which output slices are adapted: ``("q", "v")`` -> c_attn (True, False, True)."""
    out: Dict[str, list] = {}
    for t in targets:
        path, slice_ = TARGETS[t]
        if slice_ is None:
            out[path] = [True]
        else:
            out.setdefault(path, [False] * MODULE_SLICES[path])[slice_] = True
    return {path: tuple(e) for path, e in out.items()}


def slice_shapes(targets, n_embd: int) -> Dict[str, Tuple[int, int, int]]:
    """Per module path, (enabled slices, out features of one slice, in features)."""
    out = {}
    for path, enable in enabled_slices(targets).items():
        fan_in, fan_out = MODULE_DIMS[path]
        out[path] = (sum(enable), fan_out * n_embd // len(enable), fan_in * n_embd)
    return out


def check_number(owner: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner} {name} must be a number, got {value!r}")


@dataclasses.dataclass
class MethodConfig:
    """What every method's config has: ``targets`` and ``bias``; subclasses add their settings."""

    name: ClassVar[str]  # the method's name in files and on the command line
    title: ClassVar[str]  # its name in messages
    shape_fields: ClassVar[Tuple[str, ...]] = ()  # the settings that fix its tensors' shapes
    flags: ClassVar[Dict[str, str]] = {}  # field -> the gpt2_ft.py flag that sets it

    def __post_init__(self):
        self.targets = tuple(self.targets)
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown {self.title} target(s) {unknown}; choose from {list(TARGETS)}")
        if self.bias not in BIAS_MODES:
            raise ValueError(f"unknown {self.title} bias mode {self.bias!r}; choose none, all or lora_only")

    def to_dict(self) -> dict:
        return {"method": self.name, **dataclasses.asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: dict) -> "MethodConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def check_usable(self, source: str) -> "MethodConfig":
        """Itself, or a ValueError when the adapter cannot compute a finite update."""
        return self

    def tensor_shapes(self, n_layer: int, n_embd: int) -> Dict[str, Tuple[int, ...]]:
        """Every adapter tensor ``apply_adapter`` makes on a GPT-2 of that size, by arithmetic alone."""
        out = {}
        for path, (n, out_slice, in_features) in slice_shapes(self.targets, n_embd).items():
            shapes = self.layer_shapes(n, out_slice, in_features)
            for i in range(n_layer):
                for name, shape in shapes.items():
                    out[f"transformer.h.{i}.{path}.{name}"] = shape
        return out

    def layer_shapes(self, n: int, out_slice: int, in_features: int) -> Dict[str, Tuple[int, ...]]:
        """The tensors of one layer with ``n`` enabled slices of ``out_slice`` rows."""
        raise NotImplementedError

    def tensor_names(self) -> Tuple[str, ...]:
        return tuple(self.layer_shapes(1, 1, 1))

    def shared(self, model: nn.Module) -> Optional[nn.Module]:
        """A module that every layer of the model shares (VeRA's projections), or None."""
        return None

    def make_layer(self, base: nn.Linear, enable: Sequence[bool], shared: Optional[nn.Module]) -> "AdapterLayer":
        raise NotImplementedError

    def describe(self) -> str:
        """One line for logs: the method and its settings."""
        skip = {"targets", "bias"}
        items = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in self.to_dict().items()
            if k not in skip | {"method"}
        )
        return f"{self.title} {items} on {','.join(self.targets)}"


class AdapterLayer(nn.Module):
    """``base_layer`` (kept untouched) plus an update on the enabled output slices.

    Subclasses set their tensors as attributes named as ``tensors()`` says and implement
    ``forward``, ``delta_weight`` and ``settings``."""

    config_class: ClassVar[type]

    def __init__(self, base_layer: nn.Linear, enable: Sequence[bool], bias: str):
        super().__init__()
        out_features, in_features = base_layer.weight.shape
        if out_features % len(enable) != 0:
            raise ValueError(f"{out_features} outputs do not split into {len(enable)} slices")
        self.base_layer = base_layer
        self.enable = tuple(bool(e) for e in enable)
        self.bias = bias
        self.out_slice = out_features // len(enable)
        self.in_features = in_features
        self.n_enabled = sum(self.enable)
        rows = [torch.arange(i * self.out_slice, (i + 1) * self.out_slice) for i, e in enumerate(self.enable) if e]
        # The output rows the update writes, in the order of the stacked per-slice tensors.
        self.register_buffer("_enabled_rows", torch.cat(rows).to(base_layer.weight.device), persistent=False)
        self.merged = False

    # ------------------------------------------------------------------ what each method defines

    def tensors(self) -> Dict[str, nn.Parameter]:
        """The adapter's trained tensors, by their name in the adapter file."""
        raise NotImplementedError

    def settings(self) -> dict:
        """The config fields this layer was built with (not ``targets``)."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """The update as a full (out, in) matrix, zero on disabled slices: merging adds it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared

    def scatter_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(n_enabled * out_slice, ...) rows of the enabled slices -> (out_features, ...), zeros elsewhere."""
        if all(self.enable):
            return rows
        full = rows.new_zeros((len(self.enable) * self.out_slice,) + tuple(rows.shape[1:]))
        return full.index_copy(0, self._enabled_rows, rows)

    def add_to_slices(self, y: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """``y`` (..., out_features) plus ``update`` (..., n_enabled * out_slice) on the enabled slices."""
        if all(self.enable):
            return y + update
        return y.index_add(-1, self._enabled_rows, update)

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

    def materialize(self) -> None:
        """Make meta adapter tensors real zeros (a skeleton whose backbone is on the meta device)."""
        for name, t in self.tensors().items():
            if t.is_meta:
                setattr(self, name, nn.Parameter(torch.zeros(t.shape)))


# ------------------------------------------------------------------------- a model's adapter


def apply_adapter(model: nn.Module, config: MethodConfig) -> nn.Module:
    """Wrap the targeted layers of every block of ``model`` (a ``GPT2LMModel``) in place."""
    shared = config.shared(model)
    for block in model.transformer.h:
        for path, enable in enabled_slices(config.targets).items():
            parent_name, _, name = path.rpartition(".")
            parent = block.get_submodule(parent_name)
            base = getattr(parent, name)
            if isinstance(base, AdapterLayer):
                raise ValueError(f"{path} already has an adapter")
            layer = config.make_layer(base, enable, shared)
            # A new module starts in training mode: follow the wrapped layer, so that an adapter put
            # on a model in eval mode does not drop out.
            setattr(parent, name, layer.train(base.training))
    return model


def adapter_layers(model: nn.Module) -> List[Tuple[str, AdapterLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AdapterLayer)]


def adapter_config_of(model: nn.Module) -> MethodConfig:
    """The config that ``model``'s adapter layers have: one method, the same settings and the same
    targets in every block (a ValueError says what differs)."""
    by_block: Dict[str, set] = {}
    settings = set()
    for name, m in adapter_layers(model):
        block, _, path = name.partition(".h.")[2].partition(".")
        settings.add((type(m).config_class, tuple(sorted(m.settings().items()))))
        by_block.setdefault(block, set()).update(
            t for t, (p, s) in TARGETS.items() if p == path and (s is None or m.enable[s])
        )
    if not settings:
        raise ValueError("the model has no adapter layers")
    if len(settings) > 1:
        differ = sorted((c.name, dict(s)) for c, s in settings)
        raise ValueError(f"the adapter layers differ in their method or settings: {differ}")
    if len({frozenset(t) for t in by_block.values()}) > 1:
        raise ValueError(f"the adapter covers different targets in different blocks: {by_block}")
    config_class, fields = settings.pop()
    targets = next(iter(by_block.values()))
    return config_class(**dict(fields), targets=tuple(t for t in TARGETS if t in targets))


def mark_only_adapter_as_trainable(model: nn.Module, bias: str = "none") -> None:
    """Freeze everything but the adapter's tensors (and biases per ``bias``), by type, not by name."""
    for p in model.parameters():
        p.requires_grad = False
    for _, m in adapter_layers(model):
        for t in m.tensors().values():
            t.requires_grad = True
        if bias == "lora_only" and m.base_layer.bias is not None:
            m.base_layer.bias.requires_grad = True
    if bias == "all":
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.requires_grad = True


def adapter_state_dict(model: nn.Module, bias: str = "none") -> Dict[str, torch.Tensor]:
    """Only the adapter's tensors (and biases per ``bias``), keyed like upstream:
    ``transformer.h.0.attn.c_attn.lora_A``."""
    out = {}
    for name, m in adapter_layers(model):
        for key, t in m.tensors().items():
            out[f"{name}.{key}"] = t.detach()
        if bias == "lora_only" and m.base_layer.bias is not None:
            out[f"{name}.bias"] = m.base_layer.bias.detach()
    if bias == "all":
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                out[name.replace(".base_layer.", ".")] = p.detach()
    return out


def merge_adapter(model: nn.Module) -> nn.Module:
    for _, m in adapter_layers(model):
        m.merge()
    return model


def unmerge_adapter(model: nn.Module) -> nn.Module:
    for _, m in adapter_layers(model):
        m.unmerge()
    return model


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
