"""GPT-2 in one file, read top to bottom.

Names follow GPT-2 (``wte``, ``wpe``, ``h``, ``c_attn``, ``c_proj``, ``c_fc``, ``ln_f``) so that
checkpoints map one to one (``lora_nlg.weights.backbone``). Linear layers are ``nn.Linear`` (weight
``(out, in)``); GPT-2's original ``Conv1D`` stores the transpose, the loader converts.

What it adds to GPT-2:
- attention is ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU);
- the KV cache is preallocated and supports rows of different lengths (left padding plus an
  attention mask), which batched beam search needs;
- ``output_mask`` computes the LM head only where a loss is taken (the LM head is about a third of
  GPT-2 S's forward FLOPs and context tokens carry no loss), and the last block too: its
  queries start at the first selected column, its ``c_proj`` and MLP run on the selected
  positions only (context tokens only give keys and values there).
"""

import dataclasses
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# Model cards. ``gpt2.tiny`` is for tests and CPU demos.
GPT2_SIZES = {
    "gpt2.tiny": dict(n_layer=4, n_head=4, n_embd=128),
    "gpt2.sm": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2.md": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2.lg": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2.xl": dict(n_layer=48, n_head=25, n_embd=1600),
}

# --precision names -> parameter / autocast dtypes.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    # Dropout is off by default: the paper's recipe has no backbone dropout (LoRA has its own).
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    resid_pdrop: float = 0.0

    @classmethod
    def from_card(cls, model_card: str, **overrides) -> "GPT2Config":
        if model_card not in GPT2_SIZES:
            raise ValueError(f"unknown model card {model_card!r}; choose from {sorted(GPT2_SIZES)}")
        return cls(**{**GPT2_SIZES[model_card], **overrides})

    @property
    def model_card(self) -> Optional[str]:
        """The card whose shape this config has, or None for a custom shape."""
        for card, shape in GPT2_SIZES.items():
            if all(getattr(self, k) == v for k, v in shape.items()):
                return card
        return None


class KVCache:
    """Preallocated keys and values of every layer for incremental decoding.

    ``k`` and ``v`` are ``(n_layer, B, n_head, max_len, head_dim)``; ``length`` positions are
    filled. Rows of different prompt lengths share one cache: prompts are left-padded and the
    model's ``attention_mask`` hides the padding.
    """

    def __init__(self, config: GPT2Config, batch_size: int, max_len: int, device=None, dtype=None):
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store ``k, v`` (B, nh, T, hs) after the filled part; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} needed")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search): row i becomes old row ``index[i]``."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)


class Attention(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v fused
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, attn_mask=None, cache: Optional[KVCache] = None, layer: int = 0, output_mask=None):
        """(B, T, C); or with a boolean ``output_mask`` (B, T), the (N, C) outputs at its N positions."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, T_past + T, hs)
        t0 = 0
        if output_mask is not None:
            # Queries from the first selected column on; keys and values of every position.
            t0 = int(output_mask.any(0).byte().argmax())
            q = q[:, :, t0:]
            if attn_mask is None:  # causal, shifted: query t0 + i sees keys 0 .. t0 + i
                attn_mask = torch.ones(T - t0, T, dtype=torch.bool, device=x.device).tril(t0)
            else:
                attn_mask = attn_mask[..., t0:, :]
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None,
            dropout_p=self.attn_pdrop if self.training else 0.0,
        )
        y = y.transpose(1, 2)  # (B, T - t0, nh, hs)
        y = y.reshape(B, T, C) if output_mask is None else y[output_mask[:, t0:]].view(-1, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        # GPT-2 uses the tanh approximation of GELU, not the erf form.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, cache=None, layer=0, output_mask=None):
        """(B, T, C); or with a boolean ``output_mask`` (B, T), the (N, C) outputs at its N positions."""
        a = self.attn(self.ln_1(x), attn_mask, cache, layer, output_mask)
        x = x + a if output_mask is None else x[output_mask] + a
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        cache: Optional[KVCache] = None,
        output_mask=None,
        visibility=None,
    ):
        """Hidden states (B, T, C); or, with a boolean ``output_mask`` (B, T), those of its N
        positions (N, C) in row-major order, the last block computing no others.

        input_ids: (B, T) new tokens. attention_mask: (B, T_past + T), 1 for real tokens and 0 for
        padding, covering the cached positions too; None means no padding to hide (right padding
        needs none: causal attention never looks ahead). visibility, instead of it: a boolean
        (B, 1, T, T_past + T), which keys each query sees, used as is (beam search runs the
        hypotheses of an input as the T queries of one row); position_ids are then required.
        position_ids: (B, T); by default counted over the real tokens of ``attention_mask``, or
        ``T_past + arange(T)`` without one.
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if visibility is not None:
            if position_ids is None or attention_mask is not None:
                raise ValueError("visibility needs position_ids, and replaces attention_mask")
            attn_mask = visibility.bool()
        else:
            if position_ids is None:
                if attention_mask is not None:
                    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past : past + T]
                else:
                    position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
            attn_mask = None
            if attention_mask is not None or past > 0:
                attn_mask = self._attention_bias_mask(attention_mask, B, T, past, input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        last = len(self.h) - 1
        for i, block in enumerate(self.h):
            x = block(x, attn_mask, cache, i, output_mask if i == last else None)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    @staticmethod
    def _attention_bias_mask(attention_mask, B, T, past, device):
        """Boolean (B, 1, T, past + T) mask: causal, padding hidden.

        Every query also sees itself, so a padding query (left padding) attends to something and
        produces finite values instead of NaN; no real token ever attends to padding.
        """
        q_pos = torch.arange(past, past + T, device=device)[:, None]
        k_pos = torch.arange(past + T, device=device)[None, :]
        mask = (k_pos <= q_pos)[None, None]  # (1, 1, T, past + T)
        if attention_mask is not None:
            keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, past + T)
            mask = (mask & keep) | (k_pos == q_pos)[None, None]
        return mask.expand(B, 1, T, past + T)


class GPT2LMModel(nn.Module):
    """GPT-2 with its LM head tied to the token embedding (upstream's ``GPT2LMModel``)."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.transformer.wte.weight)  # (..., V)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, output_mask=None, visibility=None):
        """Logits (B, T, V); or, with a boolean ``output_mask`` (B, T), logits (N, V) of the N
        selected positions in row-major order, so the LM head runs only where a loss is taken.
        Arguments: ``GPT2Model.forward``."""
        return self.lm_logits(self.transformer(input_ids, attention_mask, position_ids, cache, output_mask, visibility))

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.transformer.wte.weight
        return KVCache(self.config, batch_size, max_len, device=p.device, dtype=p.dtype)
