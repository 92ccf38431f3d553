"""Any PEFT method, run by PEFT itself on our ``GPT2LMModel`` (``gpt2_ft.py --method peft``).

``peft.get_peft_model`` replaces the targeted ``nn.Linear``s of the model in place (its layers,
its numbers); the model stays ours (output_mask, KV cache, DDP). PEFT's config names our modules:
``c_attn`` (q, k, v together), ``attn.c_proj``, ``c_fc``, ``mlp.c_proj``. Checkpoints hold PEFT's
own adapter folder (``save_pretrained``), and for resuming the trained tensors as they are plus
the method's state. Methods with a per-step call get it from the trainer (``after_backward``):
AdaLoRA's ``update_and_allocate``, and its orthogonal regularisation (``extra_loss``), which PEFT
adds only to a Hugging Face model's ``outputs.loss``.
"""

import copy
import json
import os
import re
from typing import Dict, Optional

import torch
import torch.nn as nn

from lora_nlg.errors import InputError
from lora_nlg.jsonl import read_json

NAME = "peft"  # the method's name on the command line and in checkpoints
ADAPTER_CONFIG = "adapter_config.json"


class PeftConfigError(InputError):
    """A PEFT config that cannot run on our model; the message names the field."""


def read_config(path: str) -> dict:
    """The JSON of a PEFT ``adapter_config.json`` (or any file holding one), checked for what we need."""
    config = read_json(path)
    if not isinstance(config, dict) or "peft_type" not in config:
        raise PeftConfigError(f"{path}: not a PEFT adapter config (an object with peft_type)")
    if not config.get("target_modules"):
        raise PeftConfigError(f"{path}: field 'target_modules' is required (our modules: c_attn, c_proj, c_fc)")
    return config


def _check_targets(model: nn.Module, targets, source: str) -> None:
    """Every name in ``target_modules`` must name modules of ours (PEFT's suffix match)."""
    names = [n for n, _ in model.named_modules()]
    if isinstance(targets, str):
        if targets != "all-linear" and not any(re.fullmatch(targets, n) for n in names):
            raise PeftConfigError(f"{source}: field 'target_modules' {targets!r} matches no module of the model")
        return
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise PeftConfigError(
            f"{source}: field 'target_modules' names {missing}, which the model lacks "
            f"(its adaptable modules: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)"
        )


class PeftAdapter:
    """PEFT's method on ``model`` (changed in place): the wrapper, its hooks and its state."""

    def __init__(self, model: nn.Module, config: dict, source: str, total_step: Optional[int] = None):
        import peft

        _check_targets(model, config["target_modules"], source)
        config = dict(config)
        if config["peft_type"] == "ADALORA" and not config.get("total_step"):
            config["total_step"] = total_step  # the schedule's length: --max_step or the epochs' steps
        config.pop("base_model_name_or_path", None)
        try:
            self.config = peft.PeftConfig.from_peft_type(**config)
        except (TypeError, ValueError, KeyError) as e:
            raise PeftConfigError(f"{source}: PEFT refuses the config: {e}") from None
        try:
            self.peft_model = peft.get_peft_model(model, self.config)
        except (TypeError, ValueError) as e:
            raise PeftConfigError(f"{source}: PEFT cannot apply it to the model: {e}") from None
        self.model = model
        self.tuner = self.peft_model.base_model
        self.adalora = config["peft_type"] == "ADALORA"

    # -------------------------------------------------------------------- training hooks

    def extra_loss(self) -> Optional[torch.Tensor]:
        """AdaLoRA's orthogonal regularisation, ``orth_reg_weight * mean ||P P^T - I||_F`` over its
        A and B (PEFT's ``AdaLoraModel.forward``), to add to the loss once per optimizer step."""
        if not self.adalora:
            return None
        weight = self.tuner.peft_config["default"].orth_reg_weight
        norms = []
        for n, p in self.model.named_parameters():
            if ("lora_A" in n or "lora_B" in n) and "default" in n:
                cov = p @ p.T if "lora_A" in n else p.T @ p
                norms.append(torch.linalg.matrix_norm(cov - torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)))
        return weight * torch.stack(norms).mean() if norms else None

    def after_backward(self, step: int) -> None:
        """The per-step call before the optimizer's ``zero_grad`` (``step``: optimizer steps done)."""
        if self.adalora:
            self.tuner.update_and_allocate(step)

    # -------------------------------------------------------------------- state

    def trained_tensors(self) -> Dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def load_trained_tensors(self, tensors: Dict[str, torch.Tensor], source: str) -> None:
        params = dict(self.model.named_parameters())
        wrong = sorted(set(tensors) ^ {n for n, p in params.items() if p.requires_grad})
        if wrong:
            raise InputError(f"{source}: the PEFT tensors do not fit this config: {wrong[:5]}")
        with torch.no_grad():
            for n, t in tensors.items():
                params[n].copy_(t)

    def state(self) -> dict:
        """What resuming needs beyond the tensors: AdaLoRA's importance averages and rank pattern."""
        if not self.adalora:
            return {}
        allocator = self.tuner.rankallocator
        return {
            "ipt": dict(allocator.ipt),
            "exp_avg_ipt": dict(allocator.exp_avg_ipt),
            "exp_avg_unc": dict(allocator.exp_avg_unc),
            "rank_pattern": self.tuner.peft_config["default"].rank_pattern,
        }

    def load_state(self, state: dict) -> None:
        if self.adalora and state:
            allocator = self.tuner.rankallocator
            for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
                setattr(allocator, key, dict(state[key]))
            self.tuner.peft_config["default"].rank_pattern = state["rank_pattern"]

    def merged_model(self) -> nn.Module:
        """A copy of the model with the adapter merged in by PEFT (for ``--save_full``)."""
        try:
            return copy.deepcopy(self.peft_model).merge_and_unload()
        except (AttributeError, NotImplementedError, ValueError) as e:
            raise InputError(
                f"--save_full: PEFT cannot merge {self.config.peft_type.value} into the weights: {e}"
            ) from None

    def save(self, folder: str, base_model: Optional[str]) -> None:
        """PEFT's adapter folder (``adapter_config.json``, ``adapter_model.safetensors``)."""
        self.peft_model.peft_config["default"].base_model_name_or_path = base_model
        # we never resize the vocabulary; "auto" would ask our config class for from_pretrained
        self.peft_model.save_pretrained(folder, save_embedding_layers=False)


def is_peft_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def load_for_decoding(model: nn.Module, folder: str) -> nn.Module:
    """``model`` with the PEFT adapter of ``folder``, merged where PEFT can merge it."""
    import peft

    with open(os.path.join(folder, ADAPTER_CONFIG), encoding="utf-8") as f:
        config = json.load(f)
    _check_targets(model, config.get("target_modules") or [], folder)
    try:
        wrapped = peft.PeftModel.from_pretrained(model, folder)
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(f"{folder}: PEFT cannot load the adapter on this backbone: {e}") from None
    try:
        return wrapped.merge_and_unload()
    except (AttributeError, NotImplementedError, ValueError):
        return wrapped.base_model.model  # PEFT cannot merge this method: its layers stay
