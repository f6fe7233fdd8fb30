"""The training loop: one `Trainer.step` for every objective, read top to bottom by `train`."""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vlm.atomic_io import atomic_write
from vlm.config import to_dict
from vlm.models.checkpoint import CHECKPOINT_NAME, model_payload, read_checkpoint, resolve_checkpoint, save_checkpoint
from vlm.models.cpu import cpu_class
from vlm.models.precision import autocast, resolve_precision
from vlm.train.config import TrainConfig
from vlm.train.distributed import DistributedEnv
from vlm.train.optim import build_optimizer, build_scheduler, sparse_embedding_gradients
from vlm.train.tasks import build_task


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the last good checkpoint is kept."""


class Trainer:
    """Model + task + optimizer + schedule, and the state a checkpoint must hold to resume exactly."""

    def __init__(self, model: nn.Module, config: TrainConfig, env: DistributedEnv | None = None):
        env = env or DistributedEnv()
        self.config, self.env = config, env
        self.model = model.to(env.device)
        if config.grad_checkpointing:
            model.set_grad_checkpointing(True)
        task = build_task(self.model, config.objective, config, env.rank)
        self.extra = getattr(task, "projections", None)  # distill's learned projections: optimised and saved too
        if config.compile:
            task = torch.compile(task)
        self.task = DistributedDataParallel(task) if env.is_distributed else task
        self.optimizer = build_optimizer(self.model, config, env.device, self.extra)
        if not (env.is_distributed or config.compile):  # DDP and the compiler want dense gradients
            sparse_embedding_gradients(self.model, self.optimizer)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.step_count = 0
        # `auto` resolved once: what this run trains at, recorded in its config.yaml and checkpoint
        self.precision = resolve_precision(config.precision, "train")
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=env.device)

    def autocast(self):
        """The forward's context: bf16 autocast on CUDA; on the CPU the run's precision (fp32: exact and
        reproducible; bf16: autocast, with the losses computed in float32 by the tasks)."""
        if self.env.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return autocast(self.precision)

    def run_info(self) -> dict:
        """What this run actually ran at, and on which class of CPU (`precision: auto` resolves per machine)."""
        return {"precision": self.precision, "cpu_class": cpu_class()}

    def step(self, micro_batches: list[dict]) -> dict[str, torch.Tensor]:
        """One optimizer step over the micro-batches of one batch. Returns device tensors (no host sync)."""
        self.task.train()
        totals: dict[str, torch.Tensor] = {}
        for i, micro in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = self.task.no_sync() if isinstance(self.task, DistributedDataParallel) and not last \
                else contextlib.nullcontext()
            with sync, self.autocast():
                loss, metrics = self.task(micro, self.step_count)
            with sync:
                (loss / len(micro_batches)).backward()
            for name, value in {"loss": loss.detach(), **metrics}.items():
                totals[name] = totals.get(name, 0) + value.float() / len(micro_batches)
        # foreach: one multi-tensor norm and scale, where torch's CPU default loops over the parameters
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip, foreach=True)
        self.nonfinite |= ~torch.isfinite(totals["loss"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step_count += 1
        return {**totals, "grad_norm": grad_norm}

    def state(self, data_state: dict | None = None) -> dict:
        """`data_state`: where the data stands (vlm/train/data.py TrainBatches.state), for an exact resume."""
        payload = model_payload(self.model)
        payload.update(step=self.step_count, train_config=to_dict(self.config),
                       optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                       rng={"torch": torch.get_rng_state()}, run=self.run_info())
        if data_state is not None:
            payload["data"] = data_state
        if self.extra is not None:
            payload["projections"] = self.extra.state_dict()
        return payload

    def load_state(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        if self.extra is not None:
            self.extra.load_state_dict(payload.get("projections", {}))
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.step_count = int(payload["step"])
        torch.set_rng_state(payload["rng"]["torch"])

    def save(self, path: Path, data_state: dict | None = None) -> None:
        """Atomic; refuses to overwrite a good checkpoint with weights a non-finite loss may have spoiled."""
        if bool(self.nonfinite):
            raise TrainingError(f"not saving {path}: a non-finite loss was seen since the last checkpoint")
        save_checkpoint(self.state(data_state), path)


def resolve_resume(resume: str | None, out_dir: Path) -> Path | None:
    """`auto`: this run folder's checkpoint if there is one; a path: that file, or that run folder's."""
    if resume is None:
        return None
    if resume == "auto":
        path = out_dir / CHECKPOINT_NAME
        return path if path.is_file() else None
    read_checkpoint(resume)  # a clear error now rather than deep in the loop
    return resolve_checkpoint(resume)


class StopSignal:
    """SIGTERM / Ctrl-C ask the loop to save and stop at the end of the current step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class MetricsLog:
    """metrics.jsonl in the run folder (rank 0 only), plus TensorBoard when it is installed.

    `start_step`: the step a resumed run continues from. What an interrupted run logged after its last
    checkpoint is logged again by the resumed run, so it is cut first: each step appears once. A run from
    step 0 starts an empty file (the steps an earlier run there logged are not this run's).
    """

    def __init__(self, out_dir: Path, enabled: bool, start_step: int = 0):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tensorboard = None
        if enabled:
            cut_metrics(self.path, start_step)
        if enabled:
            with contextlib.suppress(ImportError):
                from torch.utils.tensorboard import SummaryWriter
                purge = start_step + 1 if start_step else None  # hides the events logged again after a resume
                self.tensorboard = SummaryWriter(out_dir / "tensorboard", purge_step=purge)

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def cut_metrics(path: Path, last_step: int) -> None:
    """Keep the lines of metrics.jsonl up to `last_step` (atomically); a line torn by a crash goes too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            if json.loads(line)["step"] <= last_step:
                kept.append(line + "\n")
    with atomic_write(path, "w") as f:
        f.writelines(kept)


def write_run_config(out_dir: Path, config: TrainConfig, model: nn.Module, run: dict | None = None) -> None:
    """config.yaml: the recipe, the model and `run` (what it ran at: Trainer.run_info)."""
    sections = {"train": to_dict(config), "model": to_dict(model.config), **({"run": run} if run else {})}
    text = yaml.safe_dump(sections, sort_keys=False)
    (out_dir / "config.yaml").write_text(text)


def check_finite(trainer: Trainer, out_dir: Path) -> None:
    if bool(trainer.nonfinite):
        kept = out_dir / CHECKPOINT_NAME
        kept_note = f"the last good checkpoint is {kept}" if kept.is_file() else "no checkpoint was written yet"
        raise TrainingError(f"step {trainer.step_count}: the loss became NaN or infinite; stopping ({kept_note})")
