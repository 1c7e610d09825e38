"""run(cfg): data -> model -> method -> Trainer -> fit -> run record. Orchestration only: what the run measures about
itself comes from ftlab.telemetry.callbacks, and the record is built and read through ftlab.records.RunRecord."""
from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from . import predict, records
from .backbones import attention_for, load_tokenizer, parameter_counts
from .checkpoints import RESUME_FILE, ResumeCheckpoint, best_weights_callback, resume_point
from .config import portable_path, run_identity
from .data.fingerprint import data_fingerprint
from .errors import ConfigError, FtlabError
from .kernels import use_cpu_kernels
from .methods.base import Method
from .records import RunRecord, Selection, metrics_section
from .run_lock import RunLock
from .tasks.module import TaskModule, task_classes
from .telemetry.callbacks import RunTelemetry
from .ui import quiet
from .ui.progress import progress_callbacks
from .validation import validate_data_files, validate_run_config

log = logging.getLogger("ftlab")


def available_cpus() -> int:
    """The CPUs this process may run on: a SLURM job's or a container's share (its affinity), not the node's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def build_method(cfg: DictConfig) -> Method:
    spec = OmegaConf.to_container(cfg.method, resolve=True)
    spec.pop("name", None)
    try:
        method = instantiate(spec)
    except Exception as err:
        raise ConfigError(f"method '{cfg.method.name}' could not be built from its config: {err}") from err
    if not isinstance(method, Method):
        raise ConfigError(f"method '{cfg.method.name}': {type(method).__name__} does not subclass ftlab.methods.Method")
    return method


def _selection(cfg: DictConfig) -> Selection:
    return Selection(cfg.task.selection.split, cfg.task.selection.metric)


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped the run; `code` is the exit status the process should end with (130 / 143)."""

    def __init__(self, signal_name: str, code: int):
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name, self.code = signal_name, code


def _as_interruption(err: BaseException) -> Interrupted | None:
    """Lightning turns Ctrl-C into SystemExit(1) raised from a KeyboardInterrupt and SIGTERM into SIGTERMException (a
    SystemExit with code 0): both must end the run as interrupted, with a non-zero exit."""
    if isinstance(err, Interrupted):
        return err
    if isinstance(err, KeyboardInterrupt) or (isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt)):
        return Interrupted("SIGINT", 130)
    if type(err).__name__ == "SIGTERMException":
        return Interrupted("SIGTERM", 143)
    return None


def run_paths(cfg: DictConfig) -> tuple[str, Path, dict[str, Any]]:
    """(record name, record path, identity) of a config: the run-deciding config plus the data fingerprint."""
    config = OmegaConf.to_container(cfg, resolve=True)
    cache_dir = Path(cfg.paths.cache_dir) if cfg.paths.cache_dir else None
    data_files = data_fingerprint(cfg.task, cfg.data, Path(cfg.paths.data_dir), cache_dir)
    identity = run_identity(config, data_files)
    name = records.record_name(identity)
    return name, Path(cfg.paths.records_dir) / f"{name}.json", identity


RESUME_ENV = "FTLAB_RESUME_FROM"  # rank 0's resume decision, inherited by the DDP processes Lightning starts


def launch_rank() -> int:
    """This process's global rank when a distributed launcher started it (the processes Lightning's DDP adds, torchrun,
    the tasks of a multi-task SLURM job); 0 for a plain process. Rank 0 alone holds the run's lock and writes its
    record."""
    env = os.environ
    if env.get("RANK"):
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS") or 1) > 1 and env.get("SLURM_PROCID"):
        return int(env["SLURM_PROCID"])
    return int(env.get("LOCAL_RANK") or 0) or int(env.get("NODE_RANK") or 0)


def run(cfg: DictConfig) -> RunRecord:
    """Train and evaluate one configuration; returns its record. A completed record for the same config and data is
    reused; an interrupted one resumes from its last epoch; a concurrent launch of the same run raises RunLocked.
    Under DDP the other ranks train alongside rank 0 but write nothing (_run_other_rank)."""
    quiet.install(verbose=quiet.verbose_requested((cfg.get("ui") or {}).get("verbose")))
    validate_run_config(cfg)  # types, ranges and data files, before any model, record or lock
    validate_data_files(cfg)
    predict.check(cfg)
    name, path, identity = run_paths(cfg)
    rank = launch_rank()
    if rank != 0:
        return _run_other_rank(cfg, name, path, identity, rank)
    with RunLock(path):
        try:
            existing = records.read(path)
        except records.CorruptRecordError as err:
            kept = records.move_aside(path)
            log.warning("%s; kept it as %s and running the config again", err, kept.name)
            existing = None
        if existing is not None and existing.completed:
            log.info("skipping %s: completed record at %s", name, path)
            missing = [s for s in predict.requested(cfg) if s not in existing.test_predictions]
            return _predict_completed(cfg, name, path, existing, missing) if missing else existing
        return _run_locked(cfg, name, path, identity, existing)


def _predict_completed(cfg: DictConfig, name: str, path: Path, record: RunRecord, splits: list[str]) -> RunRecord:
    """Test predictions a completed record lacks, from its kept best checkpoint (no retraining)."""
    best = Path(cfg.paths.output_dir) / name / "checkpoints" / "best.ckpt"
    if not best.is_file():
        log.warning("%s has no test predictions for %s and no kept best checkpoint (%s; train.save_checkpoints=false "
                    "or removed): delete its record to retrain it", name, splits, best)
        return record
    tokenizer = load_tokenizer(cfg.backbone)
    data_class, module_class = task_classes(cfg.task)
    model = module_class.load_model(cfg.backbone, cfg.task, attention_for(cfg.trainer.accelerator))
    method = build_method(cfg)
    method.setup(model, cfg.backbone)  # the same modules (adapters, masks) as the checkpoint's
    run_dir = Path(cfg.paths.output_dir) / name
    module = module_class.for_run(cfg, model, method, data_class.for_run(cfg, tokenizer), run_dir)
    predict.load_best(module, best)
    record = RunRecord(record, test_predictions={
        **record.test_predictions,
        **predict.predict_files(cfg, model, tokenizer, splits, f"best-on-dev weights ({portable_path(best)})")})
    records.write_atomic(path, record)
    return record


def _run_other_rank(cfg: DictConfig, name: str, path: Path, identity: dict[str, Any], rank: int) -> RunRecord:
    """A DDP rank > 0: trains with rank 0 (same config, same resume point) without the lock, records or resume files
    (Lightning saves checkpoints from rank 0 only). Returns what it computed, unwritten."""
    config_hash = records.config_hash(identity)
    if RESUME_ENV in os.environ:  # started by rank 0 (Lightning's subprocess launcher): its decision
        ckpt_path = os.environ[RESUME_ENV] or None
    else:  # started alongside rank 0 (SLURM tasks, torchrun): rank 0's decision from the same record
        try:
            existing = records.read(path)
        except records.CorruptRecordError:
            existing = None
        if existing is not None and existing.completed:
            return existing
        resume = None
        if existing is not None and existing.resumable and cfg.get("resume", True):
            resume = resume_point(Path(cfg.paths.output_dir) / name / "checkpoints" / RESUME_FILE, config_hash)
        ckpt_path = resume["checkpoint"] if resume else None
    log.debug("rank %d of %s: training alongside rank 0, which writes the record", rank, name)
    result = _fit(cfg, name, config_hash, ckpt_path, {})
    return RunRecord(name=name, config_hash=config_hash, status="completed", rank=rank, written=False, **result)


def _run_locked(cfg: DictConfig, name: str, path: Path, identity: dict[str, Any],
                existing: RunRecord | None) -> RunRecord:
    run_dir = Path(cfg.paths.output_dir) / name
    config_hash = records.config_hash(identity)
    resume = None
    if existing is not None and existing.resumable and cfg.get("resume", True):
        resume = resume_point(run_dir / "checkpoints" / RESUME_FILE, config_hash)
    record = RunRecord.start(
        name, config_hash, cfg.get("experiment_name"), OmegaConf.to_container(cfg, resolve=True), identity["data_files"],
        resumed={**resume, "checkpoint": portable_path(resume["checkpoint"]), "previous_status": existing.status}
        if resume else None)
    progress: dict[str, Any] = {}
    os.environ[RESUME_ENV] = resume["checkpoint"] if resume else ""
    try:
        records.write_atomic(path, record)
        record.complete(_fit(cfg, name, config_hash, resume["checkpoint"] if resume else None, progress))
        records.write_atomic(path, record)
    except BaseException as err:
        interruption = _as_interruption(err)
        module = progress.get("module")
        history = module.history if module is not None else []  # the epochs validated before the failure: results too
        if interruption is not None:
            record.end("interrupted", str(interruption), history=history)
        else:
            record.end("failed", f"{type(err).__name__}: {err}", traceback.format_exc(), history=history)
        try:
            records.write_atomic(path, record)
        except records.RecordError as write_err:
            # the record stays as last written (`running`, no lock holder after exit): reported as interrupted
            log.error("%s", write_err)
        if interruption is not None:
            raise interruption from err
        raise
    finally:
        os.environ.pop(RESUME_ENV, None)
    (run_dir / "checkpoints" / RESUME_FILE).unlink(missing_ok=True)  # completed: nothing left to resume
    log.info("record written: %s", path)
    return record


def _fit(cfg: DictConfig, name: str, config_hash: str, ckpt_path: str | None, progress: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads or available_cpus())
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(cfg.paths.output_dir) / name
    tokenizer = load_tokenizer(cfg.backbone)
    data_class, module_class = task_classes(cfg.task)  # the task config names them by _target_
    model = module_class.load_model(cfg.backbone, cfg.task, attention_for(cfg.trainer.accelerator))
    model.train()  # from_pretrained returns eval mode, and Lightning keeps each submodule's mode: dropout would stay off
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    method = build_method(cfg)
    method.setup(model, cfg.backbone)
    # after the method's setup: its own modules (LoRA dropout) get the kernels too, and an attention function it
    # installs (WTA-CRS) stays
    on_cpu = cfg.trainer.accelerator == "cpu"
    kernels = use_cpu_kernels(model) if on_cpu and (cfg.get("kernels") or {}).get("fast_dropout", True) else {}
    data = data_class.for_run(cfg, tokenizer)
    module = module_class.for_run(cfg, model, method, data, run_dir)
    progress["module"] = module
    callbacks: list[pl.Callback] = []
    split, metric = _selection(cfg)
    if cfg.train.save_checkpoints:
        callbacks.append(best_weights_callback(run_dir / "checkpoints", f"{split}/{metric}"))
    if cfg.get("resume", True) and method.resume_attributes is not None:
        callbacks.append(ResumeCheckpoint(run_dir / "checkpoints", config_hash))
    if ckpt_path is not None and method.resume_attributes is None:
        log.warning("%s cannot resume mid-run (its state is not checkpointed): starting %s over", method.name, name)
        ckpt_path = None
    shown = progress_callbacks(bool(cfg.trainer.enable_progress_bar), (cfg.get("ui") or {}).get("log_every_s", 30),
                               f"{split}/{metric}", name)
    callbacks.extend(shown)
    logger = instantiate(cfg.logger, save_dir=str(run_dir)) if cfg.logger else False
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if isinstance(trainer_kwargs.get("strategy"), dict):  # a strategy object (trainer=fsdp: ftlab.strategies.fsdp)
        trainer_kwargs["strategy"] = instantiate(trainer_kwargs["strategy"])
    # a bar only on a terminal (ftlab.ui.progress); Lightning would otherwise add its own, which a log file shows as one
    # final frame
    trainer_kwargs["enable_progress_bar"] = any(isinstance(c, pl.callbacks.ProgressBar) for c in shown)
    # throughput, peak memory, saved activations, environment: their window opens now, so the data module's setup
    # (which the Trainer runs first) counts
    telemetry = RunTelemetry(model, method.watched_modules, method.on_saved_tensors)
    trainer = pl.Trainer(
        **trainer_kwargs, max_epochs=cfg.train.epochs, max_steps=cfg.train.max_steps,
        accumulate_grad_batches=cfg.train.accumulate_grad_batches, callbacks=[*telemetry.callbacks, *callbacks],
        logger=logger,
        default_root_dir=str(run_dir),
        enable_checkpointing=any(isinstance(c, pl.callbacks.Checkpoint) for c in callbacks),
    )
    if ckpt_path is not None:
        log.info("resuming %s from %s", name, ckpt_path)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=False)  # our own file: RNG state is numpy
    if not module.history and not module.evaluates_at_fit_end:  # generation may decode once at the end instead
        raise FtlabError(
            f"run {name} finished without a single validation (train.epochs={cfg.train.epochs}, "
            f"train.max_steps={cfg.train.max_steps}); it has no result to record"
        )
    result = {
        "metrics": metrics_section(module.history, _selection(cfg)),
        "method_report": method.report(module.method_context()),
        "parameters": parameter_counts(model),
        "cost": telemetry.cost(),
        "environment": {**telemetry.environment_section(), "kernels": kernels},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **module.record_extras(),
    }
    if predict.requested(cfg) and trainer.is_global_zero:  # last: it may load the best weights
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            predict.load_best(module, Path(best))
        weights = f"best-on-dev weights ({portable_path(best)})" if best else \
            "last epoch's weights (train.save_checkpoints=false keeps no best checkpoint)"
        result["test_predictions"] = predict.predict_files(cfg, model, tokenizer, predict.requested(cfg), weights)
    return result
