"""What a training run shows and records, on rank 0 only (other ranks get a silent ``RunLog``).

- a tqdm bar on a terminal (not in a file): step, loss, learning rate, tokens/s, ETA;
- a line every ``--log_interval`` steps and at each validation, on stdout;
- ``<work_dir>/log.jsonl``: one JSON object per logged training interval (``"kind": "train"``:
  step, epoch, loss, ppl, lr, grad_norm, tokens_per_s, ms_per_step), validation
  (``"kind": "valid"``: step, epoch, loss, ppl, best) and event (``"kind": "event"``);
- TensorBoard events in ``<work_dir>/tensorboard``: train/loss, train/lr, train/grad_norm,
  train/tokens_per_s, valid/loss, valid/ppl.

A resumed run first drops the records after the step it resumes from (the killed run's steps that
are about to be redone), in log.jsonl and, through ``purge_step``, in TensorBoard.
"""

import json
import math
import os
import sys
import time
from typing import Optional

from tqdm.auto import tqdm

from lora_nlg.atomic import atomic_write

LOG_FILE = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _drop_after(path: str, step: int) -> None:
    """Keep the records of ``path`` up to ``step`` (a half-written last line is dropped too)."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    with atomic_write(path) as f:
        f.writelines(kept)


class RunLog:
    def __init__(self, work_dir: str, enabled: bool, total_steps: int, start_step: int = 0, tensorboard: bool = True):
        self.enabled = enabled
        self.bar = None
        self.writer = None
        self.file = None
        if not enabled:
            return
        os.makedirs(work_dir, exist_ok=True)
        path = os.path.join(work_dir, LOG_FILE)
        _drop_after(path, start_step)
        self.file = open(path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(work_dir, TENSORBOARD_DIR), purge_step=start_step + 1)
        # The bar on a terminal only: a file (a redirect, run.sh's logs) gets whole lines, no \r.
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5,
            file=sys.stderr,
            disable=not sys.stderr.isatty(),
        )

    def _record(self, record: dict) -> None:
        self.file.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")
        self.file.flush()

    def say(self, text: str) -> None:
        """A line for people (on stdout, around the bar)."""
        if self.enabled:
            tqdm.write(text, file=sys.stdout)

    def warn(self, text: str) -> None:
        if self.enabled:
            tqdm.write(f"warning: {text}", file=sys.stderr)
            self._record({"kind": "event", "step": 0, "warning": text})

    def event(self, step: int, text: str, **fields) -> None:
        if self.enabled:
            self.say(text)
            self._record({"kind": "event", "step": step, "message": text, **fields})

    def progress(self, step: int, loss: float, lr: float, tokens_per_s: Optional[float]) -> None:
        """Advance the bar to ``step`` (called after every optimizer step)."""
        if self.enabled:
            postfix = {"loss": f"{loss:.3f}", "lr": f"{lr:.3g}"}
            if tokens_per_s:
                postfix["tok/s"] = f"{tokens_per_s:,.0f}"
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(step - self.bar.n)

    def train(
        self,
        step: int,
        epoch: int,
        loss: float,
        lr: float,
        grad_norm: Optional[float],
        tokens_per_s: float,
        ms_per_step: float,
    ) -> None:
        if not self.enabled:
            return
        ppl = math.exp(min(loss, 50.0))
        norm = "" if grad_norm is None else f" | grad norm {grad_norm:.3g}"
        self.say(
            f"| epoch {epoch:3d} step {step:>8d} | lr {lr:.3g} | ms/step {ms_per_step:7.1f} "
            f"| tokens/s {tokens_per_s:9.0f} | loss {loss:6.3f} | ppl {ppl:8.2f}{norm}"
        )
        self._record(
            {
                "kind": "train",
                "step": step,
                "epoch": epoch,
                "loss": loss,
                "ppl": ppl,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tokens_per_s,
                "ms_per_step": ms_per_step,
            }
        )
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/tokens_per_s", tokens_per_s, step)
            if grad_norm is not None:
                self.writer.add_scalar("train/grad_norm", grad_norm, step)

    def valid(self, step: int, epoch: int, loss: float, best: bool, seconds: float) -> None:
        if not self.enabled:
            return
        ppl = math.exp(min(loss, 50.0))
        self.say("-" * 100)
        self.say(
            f"| validation at step {step:>8d} (epoch {epoch}) | {seconds:5.1f}s | valid loss {loss:.4f} "
            f"| valid ppl {ppl:.3f}{' | best so far' if best else ''}"
        )
        self.say("-" * 100)
        self._record({"kind": "valid", "step": step, "epoch": epoch, "loss": loss, "ppl": ppl, "best": best})
        if self.writer is not None:
            self.writer.add_scalar("valid/loss", loss, step)
            self.writer.add_scalar("valid/ppl", ppl, step)
            self.writer.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self.file.close()
