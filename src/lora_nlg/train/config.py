"""The configuration of ``gpt2_ft.py``: every flag of upstream's script, with its meaning, plus ours.

Flags keep upstream's names and defaults (microsoft/LoRA ``examples/NLG/src/gpt2_ft.py``,
``optimizer.py``, ``gpu.py``) except where noted in a field's help; the paper's command lines run
unchanged under ``torchrun``. ``--config FILE.yaml`` fills any fields first; flags override it.
``check`` rejects contradictory settings with a message that says what to change.
"""

import dataclasses
import math
import os
from typing import List, Literal, Optional

from lora_nlg.catalog import HUB_NAMES, hub_folder
from lora_nlg.errors import InputError
from lora_nlg.methods import METHODS, SCALING_RULES, TARGETS, MethodConfig
from lora_nlg.methods.peft_backend import NAME as PEFT_METHOD
from lora_nlg.model import GPT2_SIZES
from lora_nlg.train.optim import parse_cycle

ModelCard = Literal[tuple(GPT2_SIZES)]
Method = Literal[tuple(METHODS) + (PEFT_METHOD,)]
ScalingRule = Literal[tuple(SCALING_RULES)]

# Resuming: settings that must not change (the checkpoint would not fit, or would not mean the same
# thing), and settings whose change is not worth a word (they choose how to run, not what). Any
# other change is reported and the new value is used.
RESUME_MUST_MATCH = (
    "model_card",
    "init_checkpoint",
    "method",
    "lora_dim",
    "lora_alpha",
    "lora_targets",
    "lora_scaling_rule",
    "vera_r",
    "vera_d_initial",
    "vera_seed",
    "fourierft_n",
    "fourierft_scaling",
    "fourierft_seed",
    "fourierft_init",
    "peft_config",
    "loraplus_lr_ratio",
    "obj",
    "seq_len",
    "random_seed",
)
RESUME_IGNORED = ("resume", "overwrite", "resume_fallback", "local_rank", "platform")


@dataclasses.dataclass
class TrainConfig:
    """Fine-tune GPT-2 with LoRA (or fully) on encoded data-to-text data.

    One process: `python src/gpt2_ft.py ...`; several: `torchrun --nproc_per_node=N src/gpt2_ft.py ...`.
    """

    # ---- data
    train_data: Optional[str] = None
    """Training data, encoded jsonl ({"context": [ids], "completion": [ids]} per line). Required."""
    valid_data: Optional[str] = None
    """Validation data, same format (upstream required it; without it no validation runs and no best
    checkpoint is kept)."""
    train_batch_size: int = 8
    """Training examples per process per micro-batch (global batch = this x processes x grad_acc)."""
    valid_batch_size: int = 4
    """Validation examples per process per batch."""
    grad_acc: int = 1
    """Micro-batches per optimizer step (gradient accumulation)."""
    seq_len: int = 512
    """Longest sequence (context + completion); longer examples are cut as FTDataset does. Batches are
    padded only to their own longest example."""
    obj: Literal["clm", "jlm"] = "clm"
    """Training objective: clm = loss on completion tokens only; jlm = loss on context and completion."""

    # ---- model
    model_card: ModelCard = "gpt2.md"
    """GPT-2 size."""
    init_checkpoint: Optional[str] = None
    """Pretrained GPT-2: a Hugging Face folder or weights file (.safetensors/.bin/.pt). Without it the
    backbone is randomly initialised (tests and demos only; a warning says so)."""
    lora_dim: int = 4
    """LoRA rank r; 0 trains the full model instead. (Upstream's script defaulted to 0; its model
    config, and this project, to 4.)"""
    lora_alpha: float = 128.0
    """LoRA alpha: the update is scaled by alpha / r (see --lora_scaling_rule). The paper's recipes use 32."""
    lora_dropout: float = 0.0
    """Dropout on LoRA's input (the backbone has none)."""
    lora_targets: List[str] = dataclasses.field(default_factory=lambda: ["q", "v"])
    """Where LoRA goes, any of: q k v attn.c_proj mlp.c_fc mlp.c_proj (q, k, v are slices of the fused
    c_attn)."""
    lora_scaling_rule: ScalingRule = "alpha/r"
    """LoRA scaling: alpha/r (the LoRA paper) or alpha/sqrt(r) (rsLoRA); DoRA's too."""

    # ---- adapter method (lora_nlg/methods/: one file each)
    method: Method = "lora"
    """lora | dora (--lora_* flags) | vera (--vera_*) | fourierft (--fourierft_*) | peft (any PEFT method,
    --peft_config). Every method goes on --lora_targets; --lora_dim 0 (full fine-tuning) is for lora only."""
    vera_r: int = 256
    """VeRA: rank of the shared random A and B (PEFT's default; the VeRA paper's E2E runs use 1024)."""
    vera_d_initial: float = 0.1
    """VeRA: the initial value of every scaling vector d (b starts at 0)."""
    vera_seed: int = 0
    """VeRA: seed of the shared A and B (PEFT's projection_prng_key), stored in the adapter."""
    fourierft_n: int = 1000
    """FourierFT: trained spectral coefficients per adapted slice (the paper's E2E runs: 1000)."""
    fourierft_scaling: float = 150.0
    """FourierFT: the update's scale (PEFT's default; the paper's E2E runs use 300)."""
    fourierft_seed: int = 777
    """FourierFT: seed of the coefficients' positions (PEFT's random_loc_seed), stored in the adapter."""
    fourierft_init: Literal["randn", "zeros"] = "randn"
    """FourierFT: initial coefficients, randn (the paper's, PEFT's default) or zeros (starts at the backbone)."""
    peft_config: Optional[str] = None
    """--method peft: a PEFT adapter_config.json (peft_type and its settings; target_modules naming our modules:
    c_attn, attn.c_proj, c_fc, mlp.c_proj...)."""
    loraplus_lr_ratio: Optional[float] = None
    """LoRA+: lora_B (and 1-dim adapter tensors) learn at --lr x this ratio, lora_A at --lr, as
    peft.optimizers.create_loraplus_optimizer (lora, dora, peft LoRA-type methods; off by default)."""

    # ---- optimization (upstream's AdamW and schedules; see lora_nlg.optim)
    lr: float = 0.00001
    """Peak learning rate (the paper's recipes use 0.0002)."""
    weight_decay: float = 0.01
    """Decoupled weight decay."""
    correct_bias: bool = False
    """Adam bias correction (upstream's default is off; the paper's commands turn it on)."""
    adam_epislon: float = 1e-6
    """Adam epsilon, added to sqrt(v) before bias correction as in upstream (sic: upstream's spelling)."""
    no_decay_bias: bool = False
    """No weight decay on biases and LayerNorm weights."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.98
    """Adam beta2."""
    scheduler: Literal["linear", "cosine", "constant", "cycle"] = "linear"
    """Learning-rate schedule, stepped once per optimizer step."""
    warmup_step: int = 0
    """Optimizer steps of linear warmup from 0."""
    i_steps: str = "0"
    """--scheduler cycle: comma-separated optimizer steps where the learning rate is given (upstream's)."""
    i_lrs: str = "0.00025"
    """--scheduler cycle: the learning rates at --i_steps, linear in between (upstream's)."""
    max_step: Optional[int] = None
    """Stop after this many optimizer steps (also the length of the schedule)."""
    max_epoch: Optional[int] = None
    """Stop after this many epochs; without --max_step the schedule spans them all."""
    clip: float = 0.0
    """Clip the gradient's global norm to this; 0 = no clipping."""
    label_smooth: float = 0.0
    """Label smoothing over the full vocabulary (training loss only; validation loss is plain cross-
    entropy)."""
    random_seed: int = 10
    """Seed of every random number generator (model init, LoRA init and dropout, data order)."""

    # ---- precision and speed
    precision: Optional[Literal["fp32", "bf16", "fp16"]] = None
    """Autocast precision: fp32, bf16 (CUDA or CPU) or fp16 (CUDA only, with a GradScaler). Weights and
    optimizer state stay fp32; on CUDA, fp32 matrix products use TF32. (default: fp32, or fp16 with --fp16)"""
    fp16: bool = False
    """Upstream's flag: the same as --precision fp16 (native autocast, no apex)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = the local rank's GPU when CUDA is available, else the CPU."""
    compile: bool = False
    """torch.compile the transformer body (dynamic shapes: batches differ in length). The first steps
    and the first validation are slow while it compiles; it pays off on CUDA."""

    # ---- intervals, outputs
    log_interval: int = 100
    """Optimizer steps between log lines (log.jsonl, TensorBoard, console)."""
    eval_interval: int = 2000
    """Optimizer steps between validations (there is one at each epoch end too)."""
    save_interval: int = 500
    """Optimizer steps between checkpoints (there is one at each epoch end and at the end too)."""
    work_dir: str = "gpt2_model"
    """Output folder: config.yaml, log.jsonl, tensorboard/, checkpoints/ (default: $PT_OUTPUT_DIR, else
    gpt2_model)."""
    resume: bool = False
    """Continue from the work dir's last checkpoint (exactly: weights, optimizer, schedule, data order,
    random state). Starts from step 0 if there is none yet."""
    resume_fallback: bool = True
    """With --resume, when the checkpoint that checkpoints/last names is missing or damaged: resume from
    the newest complete one (a warning names what was skipped and why); false: stop with an error."""
    overwrite: bool = False
    """Start afresh in a work dir that already holds checkpoints: they are deleted only once the new run
    has checked its inputs and built its model."""
    save_full: bool = False
    """Also write the full merged model (Hugging Face folder model/) in every checkpoint; always on
    when --lora_dim 0."""
    tensorboard: bool = True
    """Write TensorBoard events to work_dir/tensorboard."""

    # ---- upstream launcher flags, accepted so old command lines run
    platform: Optional[str] = None
    """Accepted and ignored (upstream's k8s/philly/azure/local switch): torchrun's environment decides."""
    local_rank: Optional[int] = None
    """Accepted and ignored (torch.distributed.launch passes it): the LOCAL_RANK environment variable
    decides."""

    def __post_init__(self):
        self.lora_targets = list(self.lora_targets)

    @property
    def resolved_precision(self) -> str:
        return "fp16" if self.fp16 else (self.precision or "fp32")

    @property
    def full_fine_tuning(self) -> bool:
        return self.method == "lora" and self.lora_dim == 0


def method_config(cfg: TrainConfig) -> Optional[MethodConfig]:
    """The native method's config that the flags describe (its ``flags`` name them); None for full
    fine-tuning and for --method peft."""
    if cfg.full_fine_tuning or cfg.method == PEFT_METHOD:
        return None
    config_class = METHODS[cfg.method]
    values = {field: getattr(cfg, flag) for field, flag in config_class.flags.items()}
    return config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class ConfigError(InputError):
    """A contradictory or impossible configuration; the message says which flags and why."""


def check(cfg: TrainConfig) -> TrainConfig:
    """Reject impossible or contradictory settings; fill ``precision`` from ``--fp16``."""
    problems = []
    if not cfg.train_data:
        problems.append("--train_data is required")
    if cfg.fp16 and cfg.precision not in (None, "fp16"):
        problems.append(f"--fp16 contradicts --precision {cfg.precision} (--fp16 means --precision fp16)")
    for name in ("train_batch_size", "valid_batch_size", "grad_acc", "log_interval", "eval_interval", "save_interval"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.seq_len < 2:
        problems.append(f"--seq_len must be at least 2, got {cfg.seq_len}")
    if cfg.lora_dim < 0:
        problems.append(f"--lora_dim must be >= 0 (0 = full fine-tuning), got {cfg.lora_dim}")
    if cfg.method != "lora" and cfg.lora_dim == 0:
        problems.append(f"--lora_dim 0 (full fine-tuning) with --method {cfg.method}: full fine-tuning has no method")
    if (cfg.method == PEFT_METHOD) != bool(cfg.peft_config):
        problems.append("--method peft needs --peft_config FILE.json, and --peft_config needs --method peft")
    if cfg.loraplus_lr_ratio is not None:
        if not 0.0 < cfg.loraplus_lr_ratio < math.inf:
            problems.append(f"--loraplus_lr_ratio must be a number > 0, got {cfg.loraplus_lr_ratio}")
        if cfg.method not in ("lora", "dora", PEFT_METHOD) or cfg.full_fine_tuning:
            problems.append(f"--loraplus_lr_ratio needs LoRA's A and B (--method lora, dora or peft), not {cfg.method}")
    if cfg.method == "fourierft" and cfg.lora_dropout > 0:
        problems.append(f"--lora_dropout {cfg.lora_dropout} with --method fourierft: FourierFT has no dropout")
    if cfg.lora_dim == 0 and cfg.lora_dropout > 0:
        problems.append(
            f"--lora_dropout {cfg.lora_dropout} with --lora_dim 0: full fine-tuning has no LoRA to drop out"
        )
    if not 0.0 <= cfg.lora_dropout < 1.0:
        problems.append(f"--lora_dropout must be in [0, 1), got {cfg.lora_dropout}")
    unknown = [t for t in cfg.lora_targets if t not in TARGETS]
    if unknown or (cfg.lora_dim > 0 and not cfg.lora_targets):
        problems.append(f"--lora_targets {cfg.lora_targets}: choose one or more of {list(TARGETS)}")
    if not 0.0 <= cfg.label_smooth < 1.0:
        problems.append(f"--label_smooth must be in [0, 1), got {cfg.label_smooth}")
    if not 0.0 <= cfg.clip < math.inf:
        problems.append(f"--clip must be >= 0 (0 = no clipping), got {cfg.clip}")
    if not 0.0 < cfg.lr <= 1.0:
        problems.append(f"--lr must be a learning rate in (0, 1], got {cfg.lr}")
    if not 0.0 <= cfg.weight_decay < math.inf:
        problems.append(f"--weight_decay must be >= 0, got {cfg.weight_decay}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            problems.append(f"--{name} must be in [0, 1), got {getattr(cfg, name)}")
    if not 0.0 < cfg.adam_epislon < math.inf:
        problems.append(f"--adam_epislon must be > 0, got {cfg.adam_epislon}")
    if cfg.lora_dim > 0 and not 0.0 < cfg.lora_alpha < math.inf:
        problems.append(f"--lora_alpha must be a number > 0, got {cfg.lora_alpha}")
    if not 0 <= cfg.random_seed < 2**32:
        problems.append(f"--random_seed must be in [0, 2**32), got {cfg.random_seed}")
    if cfg.max_step is None and cfg.max_epoch is None and cfg.scheduler != "cycle":
        problems.append("give --max_step or --max_epoch (or both: training stops at whichever comes first)")
    if cfg.max_step is not None and cfg.max_step < 1:
        problems.append(f"--max_step must be at least 1, got {cfg.max_step}")
    if cfg.max_epoch is not None and cfg.max_epoch < 1:
        problems.append(f"--max_epoch must be at least 1, got {cfg.max_epoch}")
    if cfg.warmup_step < 0:
        problems.append(f"--warmup_step must be >= 0, got {cfg.warmup_step}")
    if cfg.scheduler == "cycle":
        if cfg.warmup_step:
            problems.append("--warmup_step has no effect with --scheduler cycle: put the warmup in --i_steps / --i_lrs")
        try:
            steps, _ = parse_cycle(cfg.i_steps, cfg.i_lrs)
            if cfg.max_step is not None and cfg.max_step != steps[-1]:
                problems.append(
                    f"--scheduler cycle ends at --i_steps' last value {steps[-1]}, but --max_step "
                    f"is {cfg.max_step}: leave --max_step out (upstream set it from --i_steps) "
                    f"or make them agree"
                )
        except ValueError as e:
            problems.append(str(e))
        if cfg.lr <= 0:
            problems.append("--scheduler cycle needs --lr > 0 (the learning rates are --i_lrs; --lr is their unit)")
    if cfg.init_checkpoint:
        name = os.path.basename(os.path.normpath(cfg.init_checkpoint))
        owner = next((card for card in HUB_NAMES if hub_folder(card) == name), None)
        if owner is not None and owner != cfg.model_card:
            problems.append(
                f"--model_card {cfg.model_card} contradicts --init_checkpoint {cfg.init_checkpoint} (the pretrained "
                f"{owner}, perhaps from --config): pass --model_card {owner}, or --init_checkpoint none for a random "
                f"{cfg.model_card} backbone"
            )
    if not problems and cfg.method in METHODS and not cfg.full_fine_tuning:
        try:
            method_config(cfg)
        except ValueError as e:
            problems.append(f"--method {cfg.method}: {e}")
    if cfg.resume and cfg.overwrite:
        problems.append("--resume continues the work dir's run, --overwrite starts a new one: choose one")
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    if cfg.scheduler == "cycle" and cfg.max_step is None:
        cfg.max_step = parse_cycle(cfg.i_steps, cfg.i_lrs)[0][-1]
    cfg.precision = cfg.resolved_precision
    cfg.fp16 = cfg.precision == "fp16"
    return cfg


def environment_defaults() -> dict:
    """Defaults upstream took from the environment: ``PT_OUTPUT_DIR`` for the work dir."""
    return {"work_dir": os.environ["PT_OUTPUT_DIR"]} if os.environ.get("PT_OUTPUT_DIR") else {}
