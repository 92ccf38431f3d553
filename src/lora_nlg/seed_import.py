"""The seed's released LoRA checkpoints (microsoft/LoRA ``gpt2_md_lora_e2e.pt`` and the like) ->
our adapter files.

The seed saved ``{'model_state_dict': {...}}`` with DistributedDataParallel's ``module.`` prefix,
and on the fused c_attn ``lora_A`` (2r, n_embd) = [A_q; A_v] and ``lora_B`` (2 n_embd, r) =
[B_q; B_v] (``loralib.MergedLinear(enable_lora=[True, False, True])``): our layout, so the tensors
carry over unchanged. What the file does not hold is r's meaning, alpha and the model size: the
seed's decoding script assumed alpha 128 while the paper's recipes train with 32, so a silent
default would quietly scale the update 4x. Here r, alpha and the model card are required; r is
checked against the tensors' shapes, and the result stores all three.
"""
import os
from typing import Optional, Sequence

from lora_nlg.adapter_io import write_adapter
from lora_nlg.checkpoint import CheckpointError, load_lora, lora_config_from_tensors
from lora_nlg.lora import LoRAConfig
from lora_nlg.model import GPT2Config


def import_seed(path, out_path, lora_dim: int, lora_alpha: float, model_card: str,
                scaling_rule: str = "alpha/r", lora_dropout: float = 0.0,
                c_attn_targets: Optional[Sequence[str]] = None) -> LoRAConfig:
    """Convert the seed checkpoint ``path`` into our adapter ``out_path``; returns its LoRA config.

    lora_dim, lora_alpha: the ``--lora_dim`` / ``--lora_alpha`` the checkpoint was trained with
    (the paper's E2E, WebNLG and DART models: 4 and 32). model_card: the GPT-2 size it was trained
    on (``gpt2.md`` for ``gpt2_md_lora_e2e.pt``); the LoRA tensors' width is checked against it.
    """
    path = os.fspath(path)
    tensors, metadata = load_lora(path)  # LoRA tensors only, ``module.`` removed
    if metadata is not None:
        raise CheckpointError(f"{path}: already one of our adapters (it carries lora_nlg metadata: "
                              f"r={metadata.get('r')}, alpha={metadata.get('alpha')}); nothing to import")
    cfg = lora_config_from_tensors(tensors, alpha=lora_alpha, dropout=lora_dropout,
                                   scaling_rule=scaling_rule, c_attn_targets=c_attn_targets)
    if cfg.r != lora_dim:
        raise CheckpointError(f"{path}: the LoRA tensors have rank r={cfg.r} (lora_B has {cfg.r} columns), "
                              f"not --lora_dim {lora_dim}")
    model_config = GPT2Config.from_card(model_card)
    layers = {int(k.split(".h.")[1].split(".")[0]) for k in tensors}
    widths = {t.shape[1] for k, t in tensors.items() if k.endswith("lora_A") and "mlp.c_proj" not in k}
    if widths != {model_config.n_embd} or max(layers) + 1 != model_config.n_layer:
        raise CheckpointError(f"{path}: LoRA tensors for n_embd={sorted(widths)} and {max(layers) + 1} layers; "
                              f"model card {model_card} has n_embd={model_config.n_embd} and "
                              f"{model_config.n_layer} layers")
    extra = {"imported_from": {"format": "seed", "file": os.path.basename(path),
                               "note": "r, alpha and model card given at import: the seed stores none"}}
    write_adapter(out_path, tensors, cfg, model_config, extra)
    return cfg
