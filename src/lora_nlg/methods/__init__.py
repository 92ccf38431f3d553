"""Adapter methods, one file each, behind the contract of ``base.py``; ``METHODS`` names them."""

from lora_nlg.methods.base import (
    MODULE_DIMS,
    MODULE_SLICES,
    TARGETS,
    AdapterLayer,
    MethodConfig,
    adapter_config_of,
    adapter_layers,
    adapter_state_dict,
    apply_adapter,
    count_trainable,
    enabled_slices,
    mark_only_adapter_as_trainable,
    merge_adapter,
    unmerge_adapter,
)
from lora_nlg.methods.dora import DoRAConfig
from lora_nlg.methods.fourierft import FourierFTConfig
from lora_nlg.methods.lora import SCALING_RULES, LoRAConfig, LoRALinear
from lora_nlg.methods.vera import VeRAConfig

# Every native method, by its name in files and flags.
METHODS = {c.name: c for c in (LoRAConfig, DoRAConfig, VeRAConfig, FourierFTConfig)}


def method_of(metadata: dict) -> str:
    """The method an adapter file's metadata names (files without one are LoRA's)."""
    return metadata.get("method", LoRAConfig.name)


__all__ = [
    "MODULE_DIMS",
    "MODULE_SLICES",
    "TARGETS",
    "SCALING_RULES",
    "METHODS",
    "AdapterLayer",
    "MethodConfig",
    "LoRAConfig",
    "DoRAConfig",
    "VeRAConfig",
    "FourierFTConfig",
    "LoRALinear",
    "adapter_config_of",
    "adapter_layers",
    "adapter_state_dict",
    "apply_adapter",
    "count_trainable",
    "enabled_slices",
    "mark_only_adapter_as_trainable",
    "merge_adapter",
    "method_of",
    "unmerge_adapter",
]
