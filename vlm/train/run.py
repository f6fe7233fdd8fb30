"""`train(config, out_dir)`: build the run from its recipe, loop, evaluate, checkpoint, plot."""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from data_pipelines.sources import detect_format
from vlm.models.checkpoint import CHECKPOINT_NAME, model_payload, read_checkpoint
from vlm.models.config import ModelConfig
from vlm.models.lora import lora_of, merged_model
from vlm.models.registry import build_model, get_model_config, model_config_from_dict
from vlm.tokenizer import get_tokenizer
from vlm.train.config import TrainConfig
from vlm.train.data import (
    TrainBatches,
    check_fits_objective,
    cut_captions_note,
    first_samples,
    make_collator,
    open_split,
    split_batch,
    to_device,
    with_hard_negatives,
)
from vlm.train.distributed import DistributedEnv, all_reduce_mean, broadcast_flag, init_distributed
from vlm.train.plots import plot_metrics
from vlm.train.trainable import apply_adaptation, parameter_counts
from vlm.train.trainer import (
    MetricsLog,
    StopSignal,
    Trainer,
    check_finite,
    resolve_resume,
    write_run_config,
)
from vlm.train.validate import validate


def starting_config(config: TrainConfig, checkpoint: dict | None, where: str) -> ModelConfig:
    """The model config the run starts from: the checkpoint's (resumed or fine-tuned), or a named/YAML one."""
    if checkpoint is not None:
        return model_config_from_dict(checkpoint["config"], where)
    return get_model_config(config.model, list(config.model_overrides))


def starting_checkpoint(path: str) -> dict:
    """The checkpoint a run fine-tunes from; a LoRA run's with its adapters merged, so it loads as plain weights."""
    payload = read_checkpoint(path)
    return model_payload(merged_model(payload, path)) if lora_of(payload) is not None else payload


def is_checkpoint(model: str) -> bool:
    """`model:` names a checkpoint file or a run folder, rather than a model name or YAML."""
    return model.endswith((".pt", ".pth")) or Path(model).is_dir()


def build_run_model(config: TrainConfig, model_config: ModelConfig, resumed: bool, train_data: Dataset,
                    base: dict | None) -> nn.Module:
    """The model to train: resumed (weights come with the trainer state), fine-tuned from the `base`
    checkpoint with a fresh VQA head, or new."""
    if resumed:
        return build_model(model_config)
    if config.objective == "vqa":
        model_config = dataclasses.replace(model_config, vqa_answers=answer_vocabulary(train_data, config))
    model = build_model(model_config)
    if base is not None:  # a VQA run gets a fresh head for its own answers; other objectives keep the base's
        fresh = config.objective == "vqa"
        weights = {k: v for k, v in base["model"].items() if not (fresh and k.startswith("vqa_head."))}
        model.load_state_dict(weights, strict=False)
    return model


def answer_vocabulary(train_data: Dataset, config: TrainConfig) -> tuple[str, ...]:
    from data_pipelines import build_answer_vocab

    return tuple(build_answer_vocab(train_data, max_answers=config.vqa_max_answers))


def freeze_all_but_head(model: nn.Module) -> None:
    """Linear-probe style VQA: only the head learns, so the embeddings stay what retrieval uses."""
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("vqa_head.")


def val_batches(config: TrainConfig, model: nn.Module, collate) -> list[dict]:
    """The first `val_samples` items of the val split (of a stream: the first it gives), batched once and
    kept for every evaluation. Bad images among them are left out."""
    path = config.data.val or config.data.train
    try:
        data = open_split(path, config.data.val_split, config.objective, model.config, augment=False,
                          options=config.data.val_source_options())
    except FileNotFoundError:
        return []
    samples = first_samples(data, config.data.val_samples)
    batches = [collate(samples[i : i + config.batch_size]) for i in range(0, len(samples), config.batch_size)]
    return [batch for batch in batches if batch["image_ids"]]


def validation_prefix(config: TrainConfig) -> str:
    """`val/`, or `train_as_val/` when `data.val` is unset and the training source has no separate val split
    (a pairs file, shards, COCO): validation then runs on training items, and the metric names say so."""
    if config.data.val is None and detect_format(config.data.train) not in ("shapes", "karpathy"):
        return "train_as_val/"
    return "val/"


def data_notes(config: TrainConfig, train_data: Dataset | None, validation: list[dict], tokenizer) -> list[str]:
    """What to know about the data before the first step: captions the model's context cuts, and validation
    run on training items (with the number there are, not the number asked for)."""
    notes = [cut_captions_note(train_data, tokenizer, config.data.train)] if train_data is not None else []
    if validation and validation_prefix(config) == "train_as_val/":
        items = sum(len(batch["image_ids"]) for batch in validation)
        notes.append(f"validation: data.val is unset and {config.data.train} has no val split, so validation runs on "
                     f"the first {items} training items (metrics train_as_val/...); set data.val to a held-out file")
    return [note for note in notes if note]


def train(config: TrainConfig, out_dir: str | Path, resume: str | None = None, stop_at_step: int | None = None,
          train_dataset: Dataset | None = None, env: DistributedEnv | None = None) -> Path:
    """Train to `config.steps` (or `stop_at_step`) and return the checkpoint path.

    `train_dataset` replaces the recipe's training data with any Dataset of data_pipelines Samples.
    Under torchrun every rank calls this; only rank 0 writes.
    """
    env = env or init_distributed()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    resume_path = resolve_resume(resume, out_dir)
    payload = read_checkpoint(resume_path) if resume_path else None
    base = starting_checkpoint(config.model) if payload is None and is_checkpoint(config.model) else None

    model_config = starting_config(config, payload or base, str(resume_path or config.model))
    train_data = train_dataset or open_split(config.data.train, config.data.train_split, config.objective,
                                             model_config, config.data.augment, config.data.train_source_options(),
                                             config.data.cache_mb)
    if train_dataset is None:
        check_fits_objective(train_data, config.objective, config.data.train)
    model = build_run_model(config, model_config, payload is not None, train_data, base)
    if config.freeze_towers:
        freeze_all_but_head(model)
    apply_adaptation(model, config)
    if env.is_main and (config.lora or config.lock_image or config.freeze or config.freeze_towers):
        trainable, total = parameter_counts(model)
        print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)", file=sys.stderr)
    trainer = Trainer(model, config, env)
    if payload is not None:
        trainer.load_state(payload)
    collate = make_collator(get_tokenizer(model), model.config.vqa_answers, config.data.pad_to_longest)
    # A checkpoint from before the data state was kept: its step is the sampler's batch number.
    batches = TrainBatches(train_data, with_hard_negatives(collate, config), config.batch_size, config.data,
                           config.seed, env, state=(payload or {}).get("data"), start_batch=trainer.step_count)
    validation = val_batches(config, model, collate) if env.is_main else []
    if env.is_main:
        for note in data_notes(config, train_data if train_dataset is None else None, validation, collate.tokenizer):
            print(note, file=sys.stderr)
        write_run_config(out_dir, config, model, trainer.run_info())
    run_loop(trainer, batches, validation, config, out_dir, env, stop_at_step or config.steps)
    if env.is_main:
        plot_metrics(out_dir / "metrics.jsonl", out_dir / "loss.png")
        print(f"data: {batches.summary()}")
    return out_dir / CHECKPOINT_NAME


def run_loop(trainer: Trainer, batches: TrainBatches, validation: list[dict], config: TrainConfig, out_dir: Path,
             env: DistributedEnv, last_step: int) -> None:
    log = MetricsLog(out_dir, env.is_main, start_step=trainer.step_count)
    checkpoint = out_dir / CHECKPOINT_NAME
    bar = tqdm(total=config.steps, initial=trainer.step_count, disable=not env.is_main, dynamic_ncols=True,
               desc=f"{config.objective} {trainer.model.config.name}")
    pairs, started = 0, time.perf_counter()
    prefix = validation_prefix(config) if validation else "val/"
    try:
        with StopSignal() as stop:
            for batch in itertools.takewhile(lambda _: trainer.step_count < last_step, batches):
                batch = to_device(batch, env.device)
                metrics = trainer.step(split_batch(batch, config.grad_accum))
                pairs += len(batch["images"]) * env.world_size
                step = trainer.step_count
                if env.device.type == "cpu" or step % config.log_every == 0:
                    check_finite(trainer, out_dir)  # a host sync: every step on CPU, at log steps on GPU
                stopping = broadcast_flag(stop.requested, env.device)
                saving = step % config.save_every == 0 or step == last_step or stopping
                if step % config.log_every == 0 or step == last_step or saving:
                    batches.sync()  # every rank learns the bad samples the others found
                if step % config.log_every == 0 or step == last_step:
                    values = {k: float(all_reduce_mean(v)) for k, v in metrics.items()}
                    values.update(lr=trainer.scheduler.get_last_lr()[0],
                                  pairs_per_s=pairs / (time.perf_counter() - started), **skip_metrics(batches))
                    log.write(step, values)
                    bar.set_postfix(loss=f"{values['loss']:.3f}", pairs_s=f"{values['pairs_per_s']:.0f}")
                if validation and (step % config.eval_every == 0 or step == last_step):
                    log.write(step, {f"{prefix}{k}": v for k, v in validate(trainer.model, config.objective,
                                                                           validation, env.device).items()})
                data_state = batches.state() if saving else None  # gathered from every rank
                if env.is_main and saving:
                    trainer.save(checkpoint, data_state)
                bar.update(1)
                if stopping:
                    bar.write(f"stopped at step {step}: checkpoint saved to {checkpoint}; continue with --resume auto")
                    break
    finally:  # a data error must not print on the progress bar's line
        bar.close()
        log.close()


def skip_metrics(batches: TrainBatches) -> dict[str, float]:
    """Samples skipped as bad so far (each once), by reason, and their fraction of the samples seen."""
    stats = batches.stats
    return {"data/bad_fraction": stats.bad_fraction,
            **{f"data/skipped/{reason}": n for reason, n in sorted(stats.skipped.items())}}
