"""``gpt2_beam.py``: decode every input of a test file with beam search, write a predictions jsonl.

    python src/gpt2_beam.py --data data/e2e/test_unique.jsonl --init_checkpoint RUN/checkpoints/epoch-5 \\
        --beam 10 --length_penalty 0.9 --no_repeat_ngram_size 4 --eval_len 64 --eos_token_id 628
    torchrun --nproc_per_node=N src/gpt2_beam.py ...     (each rank decodes a disjoint share)

The model: ``--init_checkpoint`` is one of
- our adapter (a checkpoint folder holding ``adapter.safetensors``, or the file itself): applied
  with the method and settings stored in it (LoRA: r, alpha, scaling rule, targets). A ``--method``
  that contradicts the stored method is an error; a ``--lora_alpha`` that contradicts the stored
  alpha is an error unless ``--force`` (then a warning, and the flag wins); a ``--lora_dim`` or
  ``--model_card`` that contradicts it is always an error (the tensors' shapes fix them), and
  ``--lora_*`` flags on a method without them too. The backbone is ``--pretrained_checkpoint``,
  else the ``init_checkpoint`` the adapter names (the backbone it was trained on);
- a ``--method peft`` checkpoint (its ``peft/`` folder, PEFT's own format): loaded by PEFT on the
  backbone its ``checkpoint.json`` names, merged where PEFT can merge;
- upstream's LoRA ``.pt`` (LoRA-only, or its final checkpoint with the backbone inside): upstream
  stores no r or alpha, so ``--lora_dim`` and ``--lora_alpha`` must be given; the backbone is
  ``--pretrained_checkpoint``;
- a full model (a Hugging Face GPT-2 folder, a checkpoint folder holding ``model/``, or a weights
  file): decoded as is, no LoRA.
There is no silent random backbone: without a backbone the program stops, unless
``--random_backbone`` (tests, benchmarks). The adapter is merged into the weights before decoding.

Inputs (``--data``): a ``*_unique.jsonl`` (one line per unique input; output ids are its ids) or
upstream's encoded jsonl (one line per (input, reference) pair; output ids are line numbers from 0,
as upstream's; identical contexts are decoded once and written for each of their lines).

Output: ``<work_dir>/<output_file>``, one line per input sorted by id:
``{"id": int, "token_ids": [generated ids, ending with the stop token if one ended it], "text": str}``
where text is the decoded ids cut at the first stop token and at the first "\\n\\n", stripped.
Written atomically by rank 0, with the resolved configuration beside it (``<name>.config.yaml``).
"""

import dataclasses
import os
import sys
import time
from typing import Dict, List, Literal, Optional, Tuple

import torch

from lora_nlg.atomic import check_writable
from lora_nlg.beam import BeamSettings, beam_search
from lora_nlg.catalog import EOS_ID
from lora_nlg.cli import parse_config, run_program, save_config
from lora_nlg.data.files import degenerate, read_encoded, read_unique, upstream_cut, write_predictions
from lora_nlg.data.tokenizer import GPT2Tokenizer
from lora_nlg.distributed import barrier, cleanup, gather_objects, init_distributed
from lora_nlg.errors import FormatError
from lora_nlg.jsonl import json_records
from lora_nlg.methods import METHODS, LoRAConfig, MethodConfig, apply_adapter, merge_adapter, method_of
from lora_nlg.methods.peft_backend import NAME as PEFT_METHOD
from lora_nlg.methods.peft_backend import load_for_decoding
from lora_nlg.model import DTYPES, GPT2_SIZES, GPT2Config, GPT2LMModel
from lora_nlg.weights.adapter import (
    adapter_config_from_metadata,
    apply_adapter_weights,
    check_adapter_shapes,
    load_adapter,
    model_config_from_metadata,
)
from lora_nlg.weights.backbone import load_pretrained
from lora_nlg.weights.layout import checkpoint_kind, read_description
from lora_nlg.weights.tensors import CheckpointError
from lora_nlg.weights.upstream import lora_config_from_tensors


@dataclasses.dataclass
class BeamConfig:
    """Beam-search decoding of GPT-2 (+ LoRA) on data-to-text inputs (upstream's gpt2_beam.py flags)."""

    data: str = ""
    """Inputs: a *_unique.jsonl (id, context_ids per line) or upstream's encoded jsonl."""
    batch_size: int = 10
    """Inputs decoded together (each takes --beam rows)."""
    seq_len: int = 512
    """As upstream: a prompt keeps its last seq_len - eval_len tokens."""
    eval_len: int = 256
    """Most generated tokens per input, the stop token included (the paper's runs use 64)."""
    min_length: int = 0
    """Stop tokens are banned until this many tokens are generated."""
    model_card: Optional[Literal[tuple(GPT2_SIZES)]] = None
    """The GPT-2 size, checked against the adapter and the backbone (default: the adapter's card;
    gpt2.sm, upstream's default, for --random_backbone)."""
    init_checkpoint: Optional[str] = None
    """Our adapter (folder or .safetensors), a --method peft checkpoint, upstream's LoRA .pt, or a full model."""
    method: Optional[Literal[tuple(METHODS) + (PEFT_METHOD,)]] = None
    """The adapter's method (lora, dora, vera, fourierft, peft): checked against the checkpoint's (default:
    whatever it stores)."""
    lora_dim: Optional[int] = None
    """LoRA rank r: required for upstream's .pt (it stores none); must match an adapter's."""
    lora_alpha: Optional[float] = None
    """LoRA alpha: required for upstream's .pt; contradicting an adapter's is an error unless --force."""
    work_dir: Optional[str] = None
    """Folder of the output file (default: $PT_OUTPUT_DIR, else gpt2_model, as upstream)."""
    beam: int = 1
    """Beam size."""
    length_penalty: float = 1.0
    """Finished score = sum of log-probs / (generated tokens incl. the stop token) ** length_penalty."""
    no_repeat_ngram_size: int = 4
    """Ban a repeated n-gram of this size among generated tokens (0: off)."""
    repetition_penalty: float = 1.0
    """CTRL repetition penalty on generated tokens' logits (1.0: off)."""
    eos_token_id: List[int] = dataclasses.field(default_factory=list)
    """Extra stop token ids, added to 50256 as in upstream (628 is "\\n\\n"); repeatable."""
    output_file: str = "beam_prediction.jsonl"
    """Predictions file name, inside --work_dir."""
    pretrained_checkpoint: Optional[str] = None
    """The backbone (Hugging Face GPT-2 folder or weights file); default: the adapter's init_checkpoint."""
    random_backbone: bool = False
    """Decode on a randomly initialised backbone (tests and benchmarks only)."""
    random_seed: Optional[int] = None
    """Seed of --random_backbone's weights (default: the seed of the random backbone the adapter was trained
    on, else 1)."""
    force: bool = False
    """Let --lora_alpha override the adapter's stored alpha (with a warning)."""
    include_prompt_in_ngram: bool = False
    """Count prompt tokens in the n-gram ban (transformers' rule; upstream's counts generated tokens only)."""
    include_prompt_in_repetition_penalty: bool = False
    """Penalise prompt tokens too (transformers' rule; upstream's: generated tokens only)."""
    device: str = "auto"
    """auto (the local rank's GPU if any, else CPU) | cpu | cuda."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Weights and activations (LoRA is merged in fp32 first); scores are always fp32."""
    vocab: Optional[str] = None
    """Folder with encoder.json and vocab.bpe (default: data/gpt2-vocab or the mirror)."""
    platform: str = "local"
    """Accepted for upstream's commands and ignored: torchrun's environment decides."""
    local_rank: Optional[int] = None
    """Accepted for torch.distributed.launch and ignored: LOCAL_RANK decides."""

    def settings(self) -> BeamSettings:
        stop = [EOS_ID] + [i for i in self.eos_token_id if i != EOS_ID]
        return BeamSettings(
            beam=self.beam,
            eval_len=self.eval_len,
            length_penalty=self.length_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            repetition_penalty=self.repetition_penalty,
            min_length=self.min_length,
            stop_ids=tuple(dict.fromkeys(stop)),
            include_prompt_in_ngram=self.include_prompt_in_ngram,
            include_prompt_in_repetition_penalty=self.include_prompt_in_repetition_penalty,
            batch_size=self.batch_size,
        )


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- inputs


def _first_record(path: str) -> Tuple[int, dict]:
    first = next(json_records(path), None)
    if first is None:
        raise ValueError(f"{path}: no inputs")
    return first


def read_inputs(path: str) -> List[Tuple[int, List[int]]]:
    """(output id, prompt ids) per input: a *_unique.jsonl or upstream's encoded jsonl."""
    line_no, item = _first_record(path)
    if "context_ids" in item:
        return [(r["id"], list(r["context_ids"])) for r in read_unique(path)]
    if "context" in item and isinstance(item["context"], list):
        return [(i, list(context)) for i, (context, _) in enumerate(read_encoded(path))]
    raise ValueError(
        f"{path}:{line_no}: expected a *_unique.jsonl line (id, context_ids, ...) or the "
        f"upstream's encoded line (context and completion as token ids); found keys {sorted(item)}"
    )


def text_of(tokenizer, token_ids: List[int], stop_ids) -> str:
    """Decoded text cut at the first stop token and at the first blank line, stripped (upstream's)."""
    cut = next((i for i, t in enumerate(token_ids) if t in stop_ids), len(token_ids))
    return upstream_cut(tokenizer.decode(token_ids[:cut]))


# -------------------------------------------------------------------------------------- model


def resolve_adapter(cfg: BeamConfig, source: str, tensors, metadata: Optional[dict]) -> MethodConfig:
    """The adapter config to decode with: the stored one, checked against the flags."""
    if metadata is None:
        if cfg.lora_dim is None or cfg.lora_alpha is None:
            raise CheckpointError(
                f"{source}: stores no r or alpha (upstream's checkpoints never did), so the update's "
                f"scale alpha / r is unknown: pass --lora_dim and --lora_alpha exactly as in training "
                f"(the paper's recipes: --lora_dim 4 --lora_alpha 32; upstream's default alpha is 128)"
            )
        lora = lora_config_from_tensors(tensors, alpha=cfg.lora_alpha)
        if lora.r != cfg.lora_dim:
            raise CheckpointError(f"{source}: the LoRA tensors have rank r={lora.r}, --lora_dim says {cfg.lora_dim}")
        return lora.check_usable(source)
    if cfg.method is not None and cfg.method != method_of(metadata):
        raise CheckpointError(
            f"{source}: holds a {method_of(metadata)} adapter; --method {cfg.method} contradicts it. Leave --method out."
        )
    stored = adapter_config_from_metadata(metadata, source)
    card = metadata.get("model_card")
    if cfg.model_card is not None and card is not None and cfg.model_card != card:
        raise CheckpointError(f"{source}: was trained on {card}; --model_card {cfg.model_card} contradicts it")
    if not isinstance(stored, LoRAConfig):
        given = [f"--{k}" for k in ("lora_dim", "lora_alpha") if getattr(cfg, k) is not None]
        if given:
            raise CheckpointError(f"{source}: a {stored.title} adapter has no {' or '.join(given)}; leave it out")
        return stored.check_usable(source)
    if cfg.lora_dim is not None and cfg.lora_dim != stored.r:
        raise CheckpointError(
            f"{source}: stores r={stored.r} (the tensors' rank); --lora_dim {cfg.lora_dim} "
            f"contradicts it. Leave --lora_dim out to use the stored value."
        )
    if cfg.lora_alpha is not None and float(cfg.lora_alpha) != float(stored.alpha):
        if not cfg.force:
            raise CheckpointError(
                f"{source}: stores alpha={stored.alpha:g} (scaling {stored.scaling:g}); --lora_alpha "
                f"{cfg.lora_alpha:g} contradicts it. Leave --lora_alpha out to use the stored value, "
                f"or add --force to decode with {cfg.lora_alpha:g} anyway."
            )
        forced = dataclasses.replace(stored, alpha=float(cfg.lora_alpha))
        _say(
            f"warning: --force: decoding with alpha={forced.alpha:g} (scaling {forced.scaling:g}) instead of "
            f"the stored alpha={stored.alpha:g} (scaling {stored.scaling:g}) of {source}"
        )
        return forced.check_usable(f"--lora_alpha {cfg.lora_alpha}")
    return stored.check_usable(source)


def _random_backbone_seed(cfg: BeamConfig, metadata: Optional[dict], source: str) -> int:
    """The seed of a random backbone: the one the adapter's training drew its random backbone with
    (a --random_seed that contradicts it is an error), else --random_seed (default 1)."""
    trained = None
    if metadata is not None and str(metadata.get("backbone", "")).startswith("random init"):
        trained = (metadata.get("config") or {}).get("random_seed")
    if trained is None:
        return 1 if cfg.random_seed is None else cfg.random_seed
    if cfg.random_seed is not None and cfg.random_seed != trained:
        raise CheckpointError(
            f"{source}: was trained on a random backbone drawn with seed {trained}; --random_seed {cfg.random_seed} "
            f"would decode on other weights. Leave --random_seed out."
        )
    return trained


def _backbone(cfg: BeamConfig, metadata: Optional[dict], card: Optional[str], source: str) -> GPT2LMModel:
    if cfg.random_backbone:
        if cfg.pretrained_checkpoint:
            raise ValueError("--random_backbone and --pretrained_checkpoint exclude each other")
        if metadata is not None and ("model_config" in metadata or metadata.get("model_card")):
            config = model_config_from_metadata(metadata, source)
        else:
            config = GPT2Config.from_card(card or "gpt2.sm")
        seed = _random_backbone_seed(cfg, metadata, source)
        torch.manual_seed(seed)  # then the model, as training does: the same weights
        _say(
            f"warning: --random_backbone: randomly initialised weights (seed {seed}); "
            f"the output means nothing beyond tests and timing"
        )
        return GPT2LMModel(config).eval()
    path = cfg.pretrained_checkpoint
    if path is None and metadata is not None:
        path = metadata.get("init_checkpoint")
        if path and not os.path.exists(path):
            raise CheckpointError(
                f"{source}: its backbone {path} (init_checkpoint in its metadata) does not "
                f"exist here; pass --pretrained_checkpoint with the same GPT-2 weights"
            )
    if not path:
        raise CheckpointError(
            f"{source}: no backbone: the checkpoint names none and --pretrained_checkpoint is not given. "
            f"LoRA on a random GPT-2 decodes garbage (upstream did that silently); pass "
            f"--pretrained_checkpoint (e.g. pretrained_checkpoints/gpt2-medium) or, for tests only, --random_backbone"
        )
    return load_pretrained(path, card)


def _peft_model(cfg: BeamConfig, folder: str) -> GPT2LMModel:
    """A --method peft checkpoint: the backbone its checkpoint.json names, PEFT's adapter on it."""
    if cfg.method not in (None, PEFT_METHOD):
        raise CheckpointError(f"{folder}: holds a PEFT adapter; --method {cfg.method} contradicts it")
    if cfg.lora_dim is not None or cfg.lora_alpha is not None:
        raise CheckpointError(f"{folder}: a PEFT adapter stores its own settings; leave --lora_dim / --lora_alpha out")
    description = read_description(os.path.dirname(os.path.normpath(folder)))
    card = cfg.model_card or description.get("model_card")
    model = _backbone(cfg, description or None, card, folder)
    model = load_for_decoding(model, folder)
    _say(f"PEFT adapter from {folder}: applied by PEFT")
    return model


def load_decoding_model(cfg: BeamConfig, device, dtype=torch.float32) -> GPT2LMModel:
    """Backbone + LoRA (merged), on ``device`` in ``dtype``, in eval mode."""
    if cfg.init_checkpoint is None:
        if cfg.lora_dim or cfg.lora_alpha is not None:
            raise ValueError("--lora_dim / --lora_alpha without --init_checkpoint: there is no LoRA to load")
        model = _backbone(cfg, None, cfg.model_card, "--pretrained_checkpoint")
    else:
        kind, path = checkpoint_kind(cfg.init_checkpoint)
        if kind == "full":
            if cfg.lora_dim or cfg.lora_alpha is not None:
                _say(f"warning: {path} is a full model without LoRA tensors: --lora_dim / --lora_alpha ignored")
            if cfg.pretrained_checkpoint or cfg.random_backbone:
                raise ValueError(f"{path} is a full model: --pretrained_checkpoint / --random_backbone do not apply")
            model = load_pretrained(path, cfg.model_card)
        elif kind == "peft":
            model = _peft_model(cfg, path)
        else:
            tensors, metadata = load_adapter(path)
            adapter = resolve_adapter(cfg, path, tensors, metadata)
            if metadata is not None:  # its description must fit its tensors before anything is built from it
                check_adapter_shapes(tensors, adapter, model_config_from_metadata(metadata, path), path)
            card = cfg.model_card or (metadata or {}).get("model_card")
            model = _backbone(cfg, metadata, card, path)
            if hasattr(adapter, "dropout"):
                adapter = dataclasses.replace(adapter, dropout=0.0)
            apply_adapter(model, adapter)
            apply_adapter_weights(model, tensors)
            merge_adapter(model)  # decoding then costs what the plain model costs
            if isinstance(adapter, LoRAConfig) and adapter.name == "lora":
                what = (
                    f"LoRA from {path}: r={adapter.r}, alpha={adapter.alpha:g}, {adapter.scaling_rule} -> scaling "
                    f"{adapter.scaling:g}, targets {','.join(adapter.targets)}"
                )
            else:
                what = f"{adapter.title} from {path}: {adapter.describe()}"
            _say(what + "; merged into the weights")
    return model.to(device=device, dtype=dtype).eval()


# ---------------------------------------------------------------------------------------- run


def run(cfg: BeamConfig) -> Optional[str]:
    """Decode ``cfg.data``; rank 0 writes the predictions and returns their path."""
    if not cfg.data:
        raise ValueError("--data is required")
    settings = cfg.settings()
    out_path = check_writable(os.path.join(cfg.work_dir or os.getenv("PT_OUTPUT_DIR", "gpt2_model"), cfg.output_file))
    check_writable(os.path.splitext(out_path)[0] + ".config.yaml")
    tokenizer = GPT2Tokenizer.from_dir(cfg.vocab)  # now, not after the decoding
    info = init_distributed(cfg.device)
    try:
        inputs = read_inputs(cfg.data)
        # Identical prompts are decoded once (upstream's encoded file repeats each input per reference).
        keep = cfg.seq_len - cfg.eval_len
        if keep < 1:
            raise ValueError(f"--seq_len {cfg.seq_len} leaves no room for a prompt with --eval_len {cfg.eval_len}")
        prompts: Dict[tuple, List[int]] = {}
        cut = 0
        for out_id, ids in inputs:
            cut += len(ids) > keep
            prompts.setdefault(tuple(ids[-keep:]), []).append(out_id)
        unique = list(prompts)
        if info.is_main:
            if cut:
                _say(f"warning: {cut} prompt(s) longer than seq_len - eval_len = {keep} tokens keep their last {keep}")
            _say(f"{len(inputs)} inputs, {len(unique)} distinct prompts; rank share: {info.world_size} rank(s)")
        model = load_decoding_model(cfg, info.device, DTYPES[cfg.precision])
        vocab = model.config.vocab_size
        for out_id, ids in inputs:
            if max(ids) >= vocab:
                raise FormatError(
                    f"{cfg.data}: input {out_id}: token id {max(ids)} of its prompt is outside the model's "
                    f"vocabulary (ids 0..{vocab - 1})"
                )
        order = sorted(range(len(unique)), key=lambda i: -len(unique[i]))
        mine = order[info.rank :: info.world_size]  # similar lengths on every rank
        start = time.time()

        def progress(done, total):
            if info.is_main:
                _say(f"rank 0: {done}/{total} prompts, {time.time() - start:.1f}s")

        hyps = beam_search(model, [list(unique[i]) for i in mine], settings, progress=progress)
        shares = gather_objects([(i, h.token_ids) for i, h in zip(mine, hyps)])
        path = None
        if info.is_main:
            path = _write(cfg, out_path, tokenizer, unique, prompts, shares, settings.stop_ids)
            _say(f"wrote {path} ({len(inputs)} lines) in {time.time() - start:.1f}s of decoding")
        barrier()
        return path
    finally:
        cleanup()


def _write(cfg: BeamConfig, path: str, tokenizer, unique, prompts, shares, stop_ids) -> str:
    decoded: Dict[int, List[int]] = {}
    for share in shares:
        for i, token_ids in share:
            if i in decoded:
                raise RuntimeError(f"prompt {i} was decoded by two ranks")
            decoded[i] = token_ids
    if len(decoded) != len(unique):
        raise RuntimeError(f"{len(unique) - len(decoded)} prompts were not decoded by any rank")
    stop = set(stop_ids)
    rows = []
    for i, prompt in enumerate(unique):
        text = text_of(tokenizer, decoded[i], stop)
        rows.extend((out_id, decoded[i], text) for out_id in prompts[prompt])
    rows.sort(key=lambda row: row[0])
    write_predictions(path, rows)
    warning = degenerate([text for _, _, text in rows])
    if warning:
        _say(f"WARNING: {path}: {warning}")
    save_config(cfg, os.path.splitext(path)[0] + ".config.yaml")
    return path


def merge_repeated_flags(argv: List[str], flag: str = "--eos_token_id") -> List[str]:
    """Upstream's ``--eos_token_id`` is argparse ``append``: ``--eos_token_id 628 --eos_token_id 198``
    means both; turn repeats into one ``--eos_token_id 628 198``."""
    values, rest, i = [], [], 0
    seen = False
    while i < len(argv):
        a = argv[i]
        if a == flag:
            seen = True
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            continue
        if a.startswith(flag + "="):
            seen = True
            values.append(a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    return rest + ([flag] + values if seen else [])


def _main(argv: List[str]) -> int:
    run(parse_config(BeamConfig, merge_repeated_flags(argv), prog="gpt2_beam.py"))
    return 0


def main(argv=None) -> int:
    return run_program("gpt2_beam.py", _main, argv, quiet=os.environ.get("RANK", "0") != "0")
