"""An adapter merged into its backbone, written as a plain Hugging Face GPT-2 folder.

``config.json`` + ``model.safetensors`` that ``transformers.GPT2LMHeadModel.from_pretrained``
loads with no PEFT and no code of ours: W + scaling * B A in every adapted layer, Conv1D layout,
LM head tied to the token embedding. The tokenizer is GPT-2's own (``openai-community/gpt2``).
"""

import os
from typing import Optional

from lora_nlg.methods import apply_adapter
from lora_nlg.model import GPT2LMModel
from lora_nlg.weights.adapter import apply_adapter_weights, read_adapter
from lora_nlg.weights.backbone import load_pretrained, save_pretrained
from lora_nlg.weights.tensors import CheckpointError

# What LoRA depends on (an adapter imported with only a model card does not know vocab_size).
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd")


def model_with_adapter(adapter_path, pretrained: Optional[str] = None) -> GPT2LMModel:
    """The backbone ``pretrained`` (default: the adapter's ``init_checkpoint``) with the adapter's
    LoRA on it, unmerged, in eval mode; an error if the backbone is not the one it was trained on."""
    tensors, metadata, lora_config, model_config = read_adapter(adapter_path)
    lora_config.check_usable(str(adapter_path))
    pretrained = pretrained or metadata.get("init_checkpoint")
    if not pretrained:
        raise CheckpointError(
            f"{adapter_path}: the adapter does not name its backbone (init_checkpoint); pass --pretrained PATH"
        )
    if not os.path.exists(pretrained):
        raise CheckpointError(f"{adapter_path}: its backbone {pretrained} does not exist here; pass --pretrained PATH")
    model = load_pretrained(pretrained)
    differ = {
        k: (getattr(model.config, k), getattr(model_config, k))
        for k in SHAPE_FIELDS
        if getattr(model.config, k) != getattr(model_config, k)
    }
    if differ:
        raise CheckpointError(
            f"{pretrained}: not the backbone of {adapter_path} (field: backbone's value, adapter's value): {differ}"
        )
    apply_adapter(model, lora_config)
    apply_adapter_weights(model, tensors)
    return model.eval()


def export_merged(adapter_path, folder, pretrained: Optional[str] = None) -> GPT2LMModel:
    """Write backbone + adapter as one plain GPT-2 folder; returns the (unmerged) model."""
    model = model_with_adapter(adapter_path, pretrained)
    save_pretrained(model, folder)  # merges into the written weights, leaves ``model`` as it is
    return model
