"""The training loop of ``gpt2_ft.py``: LoRA (or full) fine-tuning, one process or torchrun + DDP.

One optimizer step, on every rank:

1. take this rank's slice of the next global batch (``BucketBatchSampler`` is given
   ``train_batch_size * grad_acc`` per rank) and cut it into micro-batches of
   ``train_batch_size``, each padded to its own longest sequence;
2. all-reduce the number of loss tokens of the whole global batch, up front;
3. forward and backward every micro-batch, the LM head only at loss positions, with the loss
   ``sum of token losses * world_size / global loss tokens`` (DDP averages gradients over ranks, so
   the gradient is that of the mean token loss of the global batch: 1 rank x batch 8, 2 ranks x
   batch 4 and 1 rank x batch 4 x grad_acc 2 compute the same step); gradients are synchronised
   only on the last micro-batch (``no_sync`` on the others);
4. all-reduce the loss (and any rank's stop request), stop on a non-finite loss, clip, step the
   optimizer and then the schedule, once.

Validation runs every ``eval_interval`` steps and at each epoch end: token-weighted cross-entropy
summed over all ranks' shards, then divided. Checkpoints: ``lora_nlg.trainer_state``.
"""

import contextlib
import dataclasses
import inspect
import math
import os
import shutil
import signal
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from lora_nlg.cli import config_to_dict, parse_config, run_program, save_config
from lora_nlg.data.batching import BucketBatchSampler, FTDataset, collate
from lora_nlg.data.files import locate, read_encoded
from lora_nlg.distributed import DistInfo, all_reduce_sum, barrier, cleanup, gather_objects, init_distributed
from lora_nlg.errors import FormatError
from lora_nlg.lock import FolderLock, LockedError
from lora_nlg.lock import describe as describe_holder
from lora_nlg.methods import apply_adapter, count_trainable, mark_only_adapter_as_trainable
from lora_nlg.methods.peft_backend import PeftAdapter, read_config
from lora_nlg.model import DTYPES, GPT2Config, GPT2LMModel
from lora_nlg.train import state as ts
from lora_nlg.train.config import (
    RESUME_IGNORED,
    RESUME_MUST_MATCH,
    ConfigError,
    TrainConfig,
    check,
    environment_defaults,
    method_config,
)
from lora_nlg.train.log import LOG_FILE, TENSORBOARD_DIR, RunLog
from lora_nlg.train.optim import build_optimizer, build_scheduler
from lora_nlg.weights import layout
from lora_nlg.weights.adapter import apply_adapter_weights
from lora_nlg.weights.backbone import load_pretrained


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; nothing was saved after the last good step."""


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT / SIGTERM: the run stops without a checkpoint after the last one."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _PendingLog:
    """What a run says before its log may be opened (``--overwrite`` replaces the old log only once
    the new run is built): kept, then replayed into the ``RunLog``."""

    def __init__(self):
        self.calls = []

    def warn(self, text: str) -> None:
        self.calls.append(("warn", (text,), {}))

    def event(self, step: int, text: str, **fields) -> None:
        self.calls.append(("event", (step, text), fields))

    def replay(self, log: RunLog) -> None:
        for name, args, kwargs in self.calls:
            getattr(log, name)(*args, **kwargs)


@dataclasses.dataclass
class TrainResult:
    step: int
    epoch: int
    best_val_loss: Optional[float]
    last_checkpoint: Optional[str]
    interrupted_by: Optional[int] = None  # the signal that stopped the run early


def token_loss_sum(model, batch: Dict[str, torch.Tensor], label_smooth: float, autocast) -> torch.Tensor:
    """Sum over the batch's loss positions of the cross-entropy (label-smoothed over the full
    vocabulary, as upstream's ``(1 - eps) * nll + eps * mean(-log p)``); the LM head runs on
    those positions only. A float32 scalar."""
    mask = batch["loss_mask"].bool()
    with autocast():
        logits = model(batch["input_ids"], output_mask=mask)  # (N, V)
    return F.cross_entropy(logits.float(), batch["labels"][mask], label_smoothing=label_smooth, reduction="sum")


def build_model(cfg: TrainConfig, log: RunLog, total_step: Optional[int] = None):
    """``(model, PEFT adapter or None)``: the backbone (pretrained, or random with a warning) with
    the method applied and only its tensors trainable; or, with ``lora_dim 0``, everything trainable.
    ``total_step``: the schedule's length (AdaLoRA's budget schedule needs it)."""
    if cfg.init_checkpoint:
        model = load_pretrained(cfg.init_checkpoint, cfg.model_card)
    else:
        log.warn(
            f"no --init_checkpoint: the {cfg.model_card} backbone is randomly initialised "
            f"(seed {cfg.random_seed}); fine for tests and demos, not for results"
        )
        model = GPT2LMModel(GPT2Config.from_card(cfg.model_card))
    if cfg.seq_len > model.config.n_positions:
        raise ConfigError(f"--seq_len {cfg.seq_len} exceeds the model's {model.config.n_positions} positions")
    peft_adapter = None
    if cfg.peft_config:
        peft_adapter = PeftAdapter(model, read_config(cfg.peft_config), cfg.peft_config, total_step)
    elif cfg.full_fine_tuning:
        for p in model.parameters():
            p.requires_grad = True
    else:
        apply_adapter(model, method_config(cfg))
        mark_only_adapter_as_trainable(model)
    return model.train(), peft_adapter


def shard_batches(lengths: List[int], batch_size: int, world_size: int, rank: int) -> List[List[int]]:
    """Validation batches of this rank: examples sorted by length (little padding), cut into
    batches, dealt out round-robin; every example is scored exactly once over all ranks."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return batches[rank::world_size]


class Trainer:
    """Everything one rank needs to train; ``fit`` runs the loop. See the module docstring."""

    def __init__(self, cfg: TrainConfig, dist_info: DistInfo):
        self.cfg, self.dist = cfg, dist_info
        self.device = dist_info.device
        self.precision = cfg.precision
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("--precision fp16 (--fp16) needs CUDA; on the CPU use --precision bf16 or fp32")
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.ckpt_root = layout.checkpoints_dir(cfg.work_dir)
        self.log = _PendingLog()  # the run log opens once everything is checked (--overwrite)
        self._lock = self._take_work_dir()
        try:
            self._setup()
        except BaseException:
            self.release()
            raise

    def _setup(self) -> None:
        """Check every input and build everything; only then replace an old run (--overwrite)
        and open the run log."""
        cfg = self.cfg
        resume = self._resume_point()
        ts.seed_everything(cfg.random_seed)
        self._build_data()
        self.step, self.epoch = 0, 1  # optimizer steps done; the epoch being run (1-based, as upstream)
        self.best_val_loss = self.last_val_loss = None
        self.last_eval_step = self.last_save_step = None
        self.last_checkpoint = resume[0] if resume else None
        self._build_model(resume[2] if resume else None)
        self._check_token_ids()
        self._build_optimizer()
        self._stop_signal: Optional[int] = None
        self._stop_announced = False
        self._resume_rng = None
        # Under torchrun, a launcher killed with its process group leaves its workers running (they
        # have sessions of their own): they stop, with a checkpoint, when their parent is gone.
        self._launcher = os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else None
        if resume:
            self._load_state(resume[1], resume[0])
        if cfg.overwrite:
            self._clear_old_run()
        pending, self.log = (
            self.log,
            RunLog(cfg.work_dir, self.dist.is_main, self.max_step, start_step=self.step, tensorboard=cfg.tensorboard),
        )
        pending.replay(self.log)
        self._describe()

    def release(self) -> None:
        """Let go of the work dir (the end of ``fit``, or a failed start)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -------------------------------------------------------------------------------- work dir

    def _take_work_dir(self) -> Optional[FolderLock]:
        """Rank 0 locks the work dir (one writer per work dir); every rank learns whether it could."""
        lock, error, previous = None, None, None
        if self.dist.is_main:
            lock = FolderLock(self.cfg.work_dir)
            try:
                previous = lock.acquire()
            except LockedError as e:
                error = str(e)
        errors = [e for e in gather_objects(error) if e]
        if errors:
            raise LockedError(errors[0])
        if previous:
            self.log.warn(f"took over the work dir lock of {describe_holder(previous)}, which is no longer running")
        if self.dist.is_main:
            layout.remove_stale_temp_dirs(self.ckpt_root)
        return lock

    def _resume_point(self):
        """``(folder, trainer state, weights)`` with --resume, else None; refuses to mix a new run
        with an old one."""
        cfg = self.cfg
        if cfg.resume:
            kind = "full" if cfg.full_fine_tuning else ("peft" if cfg.peft_config else "adapter")
            return ts.resume_point(cfg.work_dir, kind, cfg.model_card, cfg.resume_fallback, self.log.warn)
        if not cfg.overwrite and (layout.last_name(cfg.work_dir) or layout.epoch_candidates(cfg.work_dir)):
            raise ConfigError(
                f"{cfg.work_dir} already holds a run ({self.ckpt_root}): pass --resume "
                f"to continue it, --overwrite to replace it, or another --work_dir"
            )
        return None

    def _clear_old_run(self) -> None:
        """--overwrite: the old run's checkpoints, log and TensorBoard events go (the new run has
        checked its inputs and built its model by now)."""
        barrier()
        if self.dist.is_main:
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
            shutil.rmtree(os.path.join(self.cfg.work_dir, TENSORBOARD_DIR), ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.cfg.work_dir, LOG_FILE))
        barrier()

    # -------------------------------------------------------------------------------- builders

    def _build_data(self) -> None:
        """Training and validation sets, each with at least one loss token; the sampler's unit is
        one optimizer step's worth of this rank's examples."""
        cfg, d = self.cfg, self.dist
        self.train_set = self._dataset(cfg.train_data, "--train_data")
        if len(self.train_set) < d.world_size:
            raise FormatError(
                f"{cfg.train_data}: {len(self.train_set)} example(s) cannot give each of {d.world_size} processes a batch"
            )
        self.train_lengths = self.train_set.lengths()
        self.sampler = BucketBatchSampler(
            self.train_lengths, cfg.train_batch_size * cfg.grad_acc, d.world_size, d.rank, seed=cfg.random_seed
        )
        self.valid_set = self.valid_batches = None
        if cfg.valid_data:
            self.valid_set = self._dataset(cfg.valid_data, "--valid_data")
            self.valid_batches = shard_batches(self.valid_set.lengths(), cfg.valid_batch_size, d.world_size, d.rank)
        self.steps_per_epoch = len(self.sampler)
        self.max_step = cfg.max_step if cfg.max_step is not None else cfg.max_epoch * self.steps_per_epoch

    def _dataset(self, path: str, flag: str) -> FTDataset:
        """An encoded file as a dataset; an error when it has no example or no loss token (a loss
        of 0 would mean nothing), a warning for examples without one."""
        cfg = self.cfg
        examples = read_encoded(path)
        if not examples:
            raise FormatError(f"{path}: no examples ({flag})")
        dataset = FTDataset(examples, cfg.seq_len, joint_lm=cfg.obj == "jlm")
        counts = dataset.loss_tokens()
        empty = sum(n == 0 for n in counts)
        if empty == len(counts):
            shortest = min(len(c) for c, _ in examples)
            raise ConfigError(
                f"{flag} {path}: --seq_len {cfg.seq_len} leaves no loss token in any of its {len(counts)} examples "
                f"(the shortest context has {shortest} tokens); raise --seq_len"
            )
        if empty:
            self.log.warn(f"{path}: {empty} of {len(counts)} examples have no loss token at --seq_len {cfg.seq_len}")
        return dataset

    def _check_token_ids(self) -> None:
        """Every token id of the data must be in the model's vocabulary."""
        vocab = self.model.config.vocab_size
        for path, dataset in ((self.cfg.train_data, self.train_set), (self.cfg.valid_data, self.valid_set)):
            if dataset is None:
                continue
            for i, (context, completion) in enumerate(dataset.examples):
                for field, ids in (("context", context), ("completion", completion)):
                    if max(ids) >= vocab:
                        raise FormatError(
                            f"{path}:{locate(path, i)}: field '{field}' holds token id {max(ids)}; the model's "
                            f"vocabulary has ids 0..{vocab - 1}"
                        )

    def _build_model(self, weights) -> None:
        """The model (same seed, same backbone and LoRA init on every rank and in every resumed run),
        with the resumed ``weights`` if any, on the device, under DDP when there is a process group."""
        cfg = self.cfg
        self.model, self.peft = build_model(cfg, self.log, self.max_step)
        self.full = cfg.full_fine_tuning or cfg.save_full
        if weights is not None and self.peft is not None:
            self.peft.load_trained_tensors(weights, "the checkpoint's trainer state")
        elif weights is not None and not cfg.full_fine_tuning:
            apply_adapter_weights(self.model, weights)
        elif weights is not None:
            self.model.load_state_dict(weights, strict=True)
        self.model.to(self.device)
        if cfg.compile:
            self.model.transformer.compile(dynamic=True)  # the body only: the LM head's input size varies
        self.ddp = None
        if torch.distributed.is_initialized():
            # The model's only buffers (LoRA's row index) are equal everywhere: no per-forward sync.
            no_buffer_sync = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
                else {"broadcast_buffers": False}
            )
            self.ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
                **no_buffer_sync,
            )
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def _build_optimizer(self) -> None:
        cfg = self.cfg
        self.optimizer = build_optimizer(
            self.model,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_epislon,
            correct_bias=cfg.correct_bias,
            no_decay_bias=cfg.no_decay_bias,
            fused=self.device.type == "cuda" and self.precision != "fp16",
            loraplus_lr_ratio=cfg.loraplus_lr_ratio,
        )
        self.scheduler = build_scheduler(
            self.optimizer, cfg.scheduler, cfg.warmup_step, self.max_step, cfg.lr, cfg.i_steps, cfg.i_lrs
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    # -------------------------------------------------------------------------------- setup

    def _load_state(self, state: dict, folder: str) -> None:
        cfg = config_to_dict(self.cfg)
        # A setting that did not exist when the checkpoint was written had its default then.
        saved = {**config_to_dict(TrainConfig()), **state["config"]}
        fatal = [k for k in RESUME_MUST_MATCH if saved.get(k) != cfg.get(k)]
        if fatal:
            raise ConfigError(
                f"cannot resume {folder}: "
                + "; ".join(f"--{k} was {saved.get(k)!r}, now {cfg.get(k)!r}" for k in fatal)
            )
        changed = [k for k in cfg if k not in RESUME_IGNORED and saved.get(k) != cfg[k]]
        if changed:
            self.log.warn(
                "resuming with changed settings: " + ", ".join(f"{k} {saved.get(k)!r} -> {cfg[k]!r}" for k in changed)
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        try:
            self.sampler.load_state_dict(state["sampler"])
        except ValueError as e:
            raise ConfigError(
                f"cannot resume {folder}: its data order does not fit this run ({e}; the global batch is "
                f"train_batch_size x grad_acc x processes, and the training data must be the same)"
            ) from None
        self.step, self.epoch = state["step"], state["epoch"]
        self.best_val_loss, self.last_val_loss = state["best_val_loss"], state["last_val_loss"]
        self.last_eval_step = self.last_save_step = self.step
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            self._resume_rng = rngs[self.dist.rank]
        else:
            self.log.warn(
                f"saved by {len(rngs)} processes, resumed by {self.dist.world_size}: the data "
                f"order continues exactly, the random streams (LoRA dropout) do not"
            )
            self._resume_rng = rngs[self.dist.rank % len(rngs)]
        if self.peft is not None:
            self.peft.load_state(state.get("method_state") or {})
        self.log.event(self.step, f"resumed from {folder} at step {self.step} (epoch {self.epoch})")

    def _describe(self) -> None:
        cfg, d = self.cfg, self.dist
        if cfg.platform is not None:
            self.log.warn(f"--platform {cfg.platform} is ignored: torchrun's environment decides how to run")
        if d.is_main:
            save_config(cfg, os.path.join(cfg.work_dir, "config.yaml"))
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "no process group"
        if self.peft is not None:
            kind = f"PEFT {self.peft.config.peft_type.value} from {cfg.peft_config}"
        elif cfg.full_fine_tuning:
            kind = "full fine-tuning"
        else:
            kind = method_config(cfg).describe()
        self.log.say(
            f"{cfg.model_card} | {kind} | {count_trainable(self.model):,} trainable parameters | "
            f"{d.world_size} process(es) on {self.device.type} ({backend}) | {self.precision}\n"
            f"train {len(self.train_set):,} examples, {self.steps_per_epoch:,} steps/epoch of "
            f"{cfg.train_batch_size} x {cfg.grad_acc} x {d.world_size} examples | max_step {self.max_step:,}"
            + (f" | valid {len(self.valid_set):,} examples" if self.valid_set is not None else " | no validation")
        )

    # -------------------------------------------------------------------------------- loop

    def fit(self) -> TrainResult:
        if self._resume_rng is not None:
            ts.restore_rng(self._resume_rng)  # last: nothing may draw random numbers after this
        with self._catch_signals():
            try:
                return self._loop()
            finally:
                self.log.close()
                self.release()

    def _done(self) -> bool:
        return self.step >= self.max_step or (self.cfg.max_epoch is not None and self.epoch > self.cfg.max_epoch)

    def _loop(self) -> TrainResult:
        meter = _Meter()
        stop = False  # a rank got SIGINT / SIGTERM (agreed on by all ranks inside _train_step)
        while not self._done():
            self.sampler.set_epoch(self.epoch - 1)
            for indices in self.sampler:
                loss, stop = self._train_step(indices, meter)
                self.step += 1
                self._after_step(loss, meter)
                if stop or self.step >= self.max_step:
                    break
            if self.sampler.epoch != self.epoch - 1 or self.sampler.step >= self.steps_per_epoch:
                self._end_epoch()
            if stop:
                self._save(f"step-{self.step}", resumable=True, skip_if_saved=True)
                if self._stop_signal == int(signal.SIGHUP) and self._launcher is not None:
                    how = f"the end of its launcher (pid {self._launcher})"
                else:
                    how = f"signal {self._stop_signal}" if self._stop_signal else "a signal to another rank"
                self.log.event(
                    self.step,
                    f"stopped by {how} at step {self.step}; continue with --resume (checkpoint {self.last_checkpoint})",
                )
                return self._result(interrupted=self._stop_signal or int(signal.SIGTERM))
        self._save(f"step-{self.step}", resumable=True, skip_if_saved=True)
        self.log.event(
            self.step,
            f"end of training at step {self.step}; "
            + (
                f"best validation loss {self.best_val_loss:.4f}"
                if self.best_val_loss is not None
                else "no validation ran"
            )
            + f"; last checkpoint {self.last_checkpoint}",
        )
        return self._result()

    def _result(self, interrupted=None) -> TrainResult:
        return TrainResult(self.step, self.epoch, self.best_val_loss, self.last_checkpoint, interrupted)

    def _micro_batches(self, indices: List[int]) -> List[Dict[str, torch.Tensor]]:
        """This rank's examples cut into micro-batches of ``train_batch_size`` (on the CPU)."""
        B = self.cfg.train_batch_size
        return [collate([self.train_set[i] for i in indices[j : j + B]]) for j in range(0, len(indices), B)]

    def _to_device(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if self.device.type == "cuda":
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        return batch

    def _global_sum(self, values: List[float]) -> List[float]:
        """``values`` summed over ranks (without a process group: as they are, no device sync)."""
        if self.ddp is None:
            return values
        return all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=self.device)).tolist()

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision], enabled=self.precision != "fp32")

    def _train_step(self, indices: List[int], meter: "_Meter"):
        """One optimizer step on this rank's examples ``indices``; returns (global mean loss,
        whether any rank asked to stop)."""
        cfg, world = self.cfg, self.dist.world_size
        micro = self._micro_batches(indices)
        n_loss, n_tokens = self._global_sum(
            [sum(float(mb["loss_mask"].sum()) for mb in micro), float(sum(self.train_lengths[i] for i in indices))]
        )
        scale = world / max(n_loss, 1.0)
        model = self.ddp or self.model
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for j, mb in enumerate(micro):
            sync = self.ddp is None or j == len(micro) - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                loss = token_loss_sum(model, self._to_device(mb), cfg.label_smooth, self._autocast)
                extra = self.peft.extra_loss() if self.peft is not None else None
                objective = loss * scale if extra is None else loss * scale + extra / len(micro)
                self.scaler.scale(objective).backward()
            loss_sum += loss.detach()
        if self._launcher is not None and self._stop_signal is None and os.getppid() != self._launcher:
            self._stop_signal = int(signal.SIGHUP)  # torchrun is gone: stop as after a signal
        stop = torch.tensor(1.0 if self._stop_signal is not None else 0.0, dtype=torch.float64, device=self.device)
        total_loss, any_stop = all_reduce_sum(torch.stack([loss_sum, stop])).tolist()
        loss = total_loss / max(n_loss, 1.0)
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"the training loss is {loss} at step {self.step + 1} (epoch {self.epoch}); stopped without "
                f"saving. The last good checkpoint is {self.last_checkpoint or 'none (nothing saved yet)'}. "
                f"Try a lower --lr, --clip 1.0, or --precision bf16 instead of fp16."
            )
        if any_stop > 0 and not self._stop_announced:
            self._stop_announced = True
            self.log.say(
                f"received signal {self._stop_signal or '(on another rank)'}: saving a checkpoint after "
                f"this step, then stopping (send it again to stop at once)"
            )
        self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if cfg.clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.clip))
        elif (self.step + 1) % cfg.log_interval == 0:
            grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None]))
        if grad_norm is not None and not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            # (with fp16 the GradScaler skips such a step and lowers its scale instead)
            raise NonFiniteLoss(
                f"the gradient norm is {grad_norm} at step {self.step + 1} (epoch {self.epoch}); "
                f"stopped without saving. The last good checkpoint is "
                f"{self.last_checkpoint or 'none (nothing saved yet)'}."
            )
        meter.lr = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.peft is not None:
            self.peft.after_backward(self.step)  # after the update, before the gradients go (PEFT's order)
        self.optimizer.zero_grad(set_to_none=True)
        meter.add(loss, n_tokens, grad_norm)
        return loss, any_stop > 0

    def _after_step(self, loss: float, meter: "_Meter") -> None:
        cfg = self.cfg
        self.log.progress(self.step, loss, meter.lr, meter.tokens_per_s)
        if self.step % cfg.log_interval == 0:
            self.log.train(self.step, self.epoch, **meter.flush())
        if self.valid_set is not None and self.step % cfg.eval_interval == 0:
            self._validate()
        if self.step % cfg.save_interval == 0:
            self._save(f"step-{self.step}", resumable=True)

    def _end_epoch(self) -> None:
        done = self.epoch
        self.epoch += 1
        self.sampler.set_epoch(self.epoch - 1)  # the saved sampler state points at the next epoch
        if self.valid_set is not None and self.last_eval_step != self.step:
            self._validate(epoch=done)
        self._save(f"epoch-{done}", resumable=True, epoch=done)

    # ------------------------------------------------------------------------- validation

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation token loss (no label smoothing) over all ranks' shards."""
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for indices in self.valid_batches:
            batch = self._to_device(collate([self.valid_set[i] for i in indices]))
            sums[0] += token_loss_sum(self.model, batch, 0.0, self._autocast)
            sums[1] += batch["loss_mask"].sum()
        self.model.train()
        total, count = all_reduce_sum(sums).tolist()
        return total / max(count, 1.0)

    def _validate(self, epoch: Optional[int] = None) -> None:
        start = time.time()
        loss = self.evaluate()
        self.last_eval_step, self.last_val_loss = self.step, loss
        best = math.isfinite(loss) and (self.best_val_loss is None or loss < self.best_val_loss)
        if best:
            self.best_val_loss = loss
        self.log.valid(self.step, epoch or self.epoch, loss, best, time.time() - start)
        if best:
            self._save(layout.BEST, resumable=False, epoch=epoch)

    # ------------------------------------------------------------------------- checkpoints

    def _save(self, name: str, resumable: bool, epoch: Optional[int] = None, skip_if_saved: bool = False) -> None:
        """Write checkpoint ``name`` (rank 0 writes; every rank takes part: RNG states are gathered)."""
        if skip_if_saved and self.last_save_step == self.step:
            return
        cfg = self.cfg
        if not torch.stack([torch.isfinite(p).all() for p in self.params]).all():  # same on every rank (DDP)
            raise NonFiniteLoss(
                f"the weights are no longer finite at step {self.step}; not saving {name}. "
                f"The last good checkpoint is {self.last_checkpoint or 'none (nothing saved yet)'}."
            )
        rngs = gather_objects(ts.capture_rng()) if resumable else None
        if self.dist.is_main:
            description = {
                "step": self.step,
                "epoch": epoch or self.epoch,
                "max_step": self.max_step,
                "val_loss": self.best_val_loss if name == layout.BEST else self.last_val_loss,
                "best_val_loss": self.best_val_loss,
                "init_checkpoint": os.path.abspath(cfg.init_checkpoint) if cfg.init_checkpoint else None,
                "backbone": "pretrained" if cfg.init_checkpoint else f"random init (seed {cfg.random_seed})",
                "full_fine_tuning": cfg.full_fine_tuning,
                "world_size": self.dist.world_size,
                "global_batch_size": cfg.train_batch_size * cfg.grad_acc * self.dist.world_size,
                "config": config_to_dict(cfg),
            }
            if self.peft is not None:  # no adapter header to hold these: the decoder reads them here
                description.update(model_card=cfg.model_card, model_config=dataclasses.asdict(self.model.config))
            state = None
            if resumable:
                state = {
                    "step": self.step,
                    "epoch": self.epoch,
                    "max_step": self.max_step,
                    "best_val_loss": self.best_val_loss,
                    "last_val_loss": self.last_val_loss,
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                    "sampler": self.sampler.state_dict(),
                    "rng": rngs,
                    "world_size": self.dist.world_size,
                    "config": config_to_dict(cfg),
                }
                if self.peft is not None:
                    state.update(adapter_tensors=self.peft.trained_tensors(), method_state=self.peft.state())
            folder = os.path.join(self.ckpt_root, name)
            ts.write_checkpoint(folder, self.model, description, state, full=self.full, peft=self.peft)
            if resumable:
                layout.write_last(self.ckpt_root, name)
        barrier()
        if resumable:
            self.last_save_step = self.step
            self.last_checkpoint = os.path.join(self.ckpt_root, name)

    # ----------------------------------------------------------------------------- signals

    @contextlib.contextmanager
    def _catch_signals(self):
        """SIGINT / SIGTERM: finish the current step, save a resumable checkpoint, stop. A second
        signal stops at once (no checkpoint)."""

        def handler(signum, frame):  # no printing here: the interrupted code may be writing to stdout
            if self._stop_signal is not None:
                signal.signal(signum, signal.SIG_DFL)
                raise StoppedAtOnce(signum)
            self._stop_signal = signum

        previous = {}
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)


class _Meter:
    """Running numbers between two log lines (all of them global: reduced over ranks)."""

    def __init__(self):
        self.lr = 0.0
        self.tokens_per_s = None
        self._reset()

    def _reset(self):
        self.losses, self.tokens, self.grad_norm = [], 0.0, None
        self.start = self.last = time.perf_counter()

    def add(self, loss: float, tokens: float, grad_norm: Optional[float]) -> None:
        now = time.perf_counter()
        rate = tokens / max(now - self.last, 1e-9)
        self.tokens_per_s = rate if self.tokens_per_s is None else 0.9 * self.tokens_per_s + 0.1 * rate
        self.last = now
        self.losses.append(loss)
        self.tokens += tokens
        if grad_norm is not None:
            self.grad_norm = grad_norm

    def flush(self) -> dict:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = dict(
            loss=sum(self.losses) / max(len(self.losses), 1),
            lr=self.lr,
            grad_norm=self.grad_norm,
            tokens_per_s=self.tokens / elapsed,
            ms_per_step=1000 * elapsed / max(len(self.losses), 1),
        )
        self._reset()
        return out


# --------------------------------------------------------------------------------- entry point


def normalize_launcher_argv(argv: List[str]) -> List[str]:
    """``torch.distributed.launch`` passes ``--local-rank=N`` (PyTorch 2) or ``--local_rank=N``."""
    return ["--local_rank" + a[len("--local-rank") :] if a.startswith("--local-rank") else a for a in argv]


def train(cfg: TrainConfig) -> TrainResult:
    """Check ``cfg``, join the process group if launched by torchrun, train, leave the group."""
    cfg = check(cfg)
    dist_info = init_distributed(cfg.device)
    try:
        return Trainer(cfg, dist_info).fit()
    finally:
        cleanup()


def _main(argv: List[str]) -> int:
    cfg = parse_config(TrainConfig, argv, prog="gpt2_ft.py", defaults=environment_defaults())
    try:
        result = train(cfg)
    except NonFiniteLoss as e:
        _say_once(f"gpt2_ft.py: error: {e}")
        return 1
    except StoppedAtOnce as e:
        _say_once(
            f"gpt2_ft.py: stopped at once by a second signal ({e.signum}); nothing saved after the last "
            f"checkpoint: continue with --resume"
        )
        return 128 + e.signum
    return 128 + int(result.interrupted_by) if result.interrupted_by else 0


def _say_once(text: str) -> None:
    """Every rank meets the same bad input or loss: rank 0 says it."""
    if os.environ.get("RANK", "0") == "0":
        print(text, file=sys.stderr)


def _end_torchrun() -> None:
    """After a failure already explained in one line: end the torchrun agent that launched this
    worker, so that its summary of the failed workers (a traceback) does not bury that line. The
    other workers meet the same error and end by themselves."""
    if not os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return
    if "torchrun" in command or "torch.distributed.run" in command:
        sys.stderr.flush()
        os.kill(parent, signal.SIGKILL)


def main(argv: Optional[List[str]] = None) -> int:
    """``gpt2_ft.py``. Exit status: 0 done, 1 non-finite loss, 2 a bad input (file, flag, work dir),
    128 + signal number when stopped by SIGINT / SIGTERM (after saving; 129: torchrun was killed)."""
    argv = normalize_launcher_argv(sys.argv[1:] if argv is None else list(argv))
    code = run_program("gpt2_ft.py", _main, argv, quiet=os.environ.get("RANK", "0") != "0")
    if code in (1, 2):
        _end_torchrun()
    return code
