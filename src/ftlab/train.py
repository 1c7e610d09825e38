"""run(cfg): data -> model -> method -> Trainer -> fit -> run record."""
from __future__ import annotations

import logging
import os
import platform
import resource
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from . import predict, quiet, records
from .backbones import attention_for, load_model, load_tokenizer, parameter_counts
from .checkpoints import RESUME_FILE, ResumeCheckpoint, best_weights_callback, resume_point
from .config import PROJECT_ROOT, portable_path, run_identity
from .data.fingerprint import data_fingerprint
from .data.module import TaskDataModule
from .errors import ConfigError, FtlabError
from .methods.base import Method
from .module import FineTuneModule
from .progress import progress_callbacks
from .run_lock import RunLock
from .validation import validate_data_files, validate_run_config

log = logging.getLogger("ftlab")


class ThroughputMeter(pl.Callback):
    """Training time spent inside training batches (forward, backward, optimizer), samples and real tokens seen."""

    def __init__(self) -> None:
        self.seconds, self.samples, self.tokens, self._start = 0.0, 0, 0, 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seconds += time.perf_counter() - self._start
        self.samples += int(batch["labels"].shape[0])
        self.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0


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


def environment() -> dict[str, Any]:
    import transformers

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "pytorch_lightning": pl.__version__, "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def reset_peak_memory() -> bool:
    """Start this run's peak-memory count. CUDA: the allocator's peak. CPU: Linux's peak resident set (VmHWM), reset by
    writing 5 to /proc/self/clear_refs — else a multirun's later runs would report the process's all-time peak.
    False where the CPU peak cannot be reset (then the record says the peak is the process's)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb(since_reset: bool) -> dict[str, Any]:
    if torch.cuda.is_available():
        return {"cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20}
    # CPU: the peak resident set (the allocator keeps no statistics on CPU); includes weights, data and the libraries
    if since_reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return {"cpu_peak_rss_mb": int(line.split()[1]) / 1024, "cpu_peak_rss_scope": "run"}
    return {"cpu_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss_scope": "process"}


def saved_tensors_summary(module: FineTuneModule) -> dict[str, Any] | None:
    """The activations the first training step saved for backward (every method measured the same way)."""
    saved = module.saved_tensors
    if saved is None:
        return None
    return {"bytes": saved.total_bytes, "measured_on": {"step": "first training forward", **module.saved_tensors_batch},
            "largest": saved.largest(5)}


def _portable_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus machine paths: records are committed and must not carry one machine's folders."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("paths", None)
    return config


def _selection_key(cfg: DictConfig) -> tuple[str, str]:
    return cfg.task.selection.split, cfg.task.selection.metric


def _best(history: list[dict[str, Any]], split: str, metric: str) -> dict[str, Any] | None:
    scored = [h for h in history if split in h["metrics"]]
    return max(scored, key=lambda h: h["metrics"][split][metric]) if scored else None


def _summary(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if entry is None else {k: entry[k] for k in ("epoch", "step", "metrics", "predictions", "correct")}


def _metrics(cfg: DictConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
    split, metric = _selection_key(cfg)
    best, last = _best(history, split, metric), (history[-1] if history else None)
    return {
        "selection": {"split": split, "metric": metric, "rule": "best epoch on dev"},
        "history": [{k: h[k] for k in ("epoch", "step", "metrics")} for h in history],
        "best": _summary(best), "last": _summary(last),
    }


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


def run(cfg: DictConfig) -> dict[str, Any]:
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
        if existing is not None and existing.get("status") == "completed":
            log.info("skipping %s: completed record at %s", name, path)
            missing = [s for s in predict.requested(cfg) if s not in (existing.get("test_predictions") or {})]
            return _predict_completed(cfg, name, path, existing, missing) if missing else existing
        return _run_locked(cfg, name, path, identity, existing)


def _predict_completed(cfg: DictConfig, name: str, path: Path, record: dict[str, Any], splits: list[str]) -> dict:
    """Test predictions a completed record lacks, from its kept best checkpoint (no retraining)."""
    best = Path(cfg.paths.output_dir) / name / "checkpoints" / "best.ckpt"
    if not best.is_file():
        log.warning("%s has no test predictions for %s and no kept best checkpoint (%s; train.save_checkpoints=false "
                    "or removed): delete its record to retrain it", name, splits, best)
        return record
    tokenizer = load_tokenizer(cfg.backbone)
    model = load_model(cfg.backbone, attn_implementation=attention_for(cfg.trainer.accelerator),
                       num_labels=cfg.task.num_labels,
                       problem_type="regression" if cfg.task.kind == "regression" else "single_label_classification")
    method = build_method(cfg)
    method.setup(model, cfg.backbone)  # the same modules (adapters, masks) as the checkpoint's
    module = FineTuneModule(model, method, cfg.task, cfg.optim, cfg.backbone)
    predict.load_best(module, best)
    record = {**record, "test_predictions": {
        **(record.get("test_predictions") or {}),
        **predict.predict_files(cfg, model, tokenizer, splits, f"best-on-dev weights ({portable_path(best)})")}}
    records.write_atomic(path, record)
    return record


def _run_other_rank(cfg: DictConfig, name: str, path: Path, identity: dict[str, Any], rank: int) -> dict[str, Any]:
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
        if existing is not None and existing.get("status") == "completed":
            return existing
        resume = None
        if existing is not None and existing.get("status") in ("running", "interrupted") and cfg.get("resume", True):
            resume = resume_point(Path(cfg.paths.output_dir) / name / "checkpoints" / RESUME_FILE, config_hash)
        ckpt_path = resume["checkpoint"] if resume else None
    log.debug("rank %d of %s: training alongside rank 0, which writes the record", rank, name)
    result = _fit(cfg, name, config_hash, ckpt_path, {})
    return {"name": name, "config_hash": config_hash, "status": "completed", "rank": rank, "written": False, **result}


def _run_locked(cfg: DictConfig, name: str, path: Path, identity: dict[str, Any],
                existing: dict[str, Any] | None) -> dict[str, Any]:
    run_dir = Path(cfg.paths.output_dir) / name
    config_hash = records.config_hash(identity)
    resume = None
    if existing is not None and existing.get("status") in ("running", "interrupted") and cfg.get("resume", True):
        resume = resume_point(run_dir / "checkpoints" / RESUME_FILE, config_hash)
    record: dict[str, Any] = {
        "name": name, "config_hash": config_hash, "status": "running", "pid": os.getpid(),
        "experiment": cfg.get("experiment_name"), "config": _portable_config(cfg), "data_files": identity["data_files"],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"resumed": {**resume, "checkpoint": portable_path(resume["checkpoint"]),
                        "previous_status": existing["status"]}} if resume else {}),
    }
    progress: dict[str, Any] = {}
    os.environ[RESUME_ENV] = resume["checkpoint"] if resume else ""
    try:
        records.write_atomic(path, record)
        record.update(_fit(cfg, name, config_hash, resume["checkpoint"] if resume else None, progress))
        record["status"] = "completed"
        records.write_atomic(path, record)
    except BaseException as err:
        interruption = _as_interruption(err)
        module = progress.get("module")
        if module is not None and module.history:  # the epochs validated before the failure are results too
            record["metrics"] = _metrics(cfg, module.history)
        if interruption is not None:
            record.update(status="interrupted", error=str(interruption))
        else:
            record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
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
    task = cfg.task
    generation = task.kind == "generation"  # data-to-text: a decoder LM, ftlab.nlg's data module and module
    attention = attention_for(cfg.trainer.accelerator)
    model = load_model(cfg.backbone, head="causal_lm", attn_implementation=attention) if generation else load_model(
        cfg.backbone, attn_implementation=attention, num_labels=task.num_labels,
        problem_type="regression" if task.kind == "regression" else "single_label_classification",
    )
    model.train()  # from_pretrained returns eval mode, and Lightning keeps each submodule's mode: dropout would stay off
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    method = build_method(cfg)
    method.setup(model, cfg.backbone)
    cache_dir = Path(cfg.paths.cache_dir) / "tokenized" if cfg.paths.cache_dir else None
    if generation:
        from .nlg.module import build_generation_parts

        data, module = build_generation_parts(cfg, model, method, tokenizer, run_dir)
    else:
        data = TaskDataModule(task, cfg.data, tokenizer, Path(cfg.paths.data_dir), cache_dir, cfg.train.batch_size, cfg.seed)
        module = FineTuneModule(model, method, task, cfg.optim, cfg.backbone)
    progress["module"] = module
    meter = ThroughputMeter()
    callbacks: list[pl.Callback] = [meter]
    split, metric = _selection_key(cfg)
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
    # a bar only on a terminal (ftlab.progress); Lightning would otherwise add its own, which a log file shows as one
    # final frame
    trainer_kwargs["enable_progress_bar"] = any(isinstance(c, pl.callbacks.ProgressBar) for c in shown)
    trainer = pl.Trainer(
        **trainer_kwargs, max_epochs=cfg.train.epochs, max_steps=cfg.train.max_steps,
        accumulate_grad_batches=cfg.train.accumulate_grad_batches, callbacks=callbacks, logger=logger,
        default_root_dir=str(run_dir),
        enable_checkpointing=any(isinstance(c, pl.callbacks.Checkpoint) for c in callbacks),
    )
    peak_is_per_run = reset_peak_memory()
    start = time.perf_counter()
    if ckpt_path is not None:
        log.info("resuming %s from %s", name, ckpt_path)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=False)  # our own file: RNG state is numpy
    fit_seconds = time.perf_counter() - start
    world = max(1, trainer.world_size)
    if not module.history and not generation:  # generation may decode once at the end instead
        raise FtlabError(
            f"run {name} finished without a single validation (train.epochs={cfg.train.epochs}, "
            f"train.max_steps={cfg.train.max_steps}); it has no result to record"
        )
    result = {
        "metrics": _metrics(cfg, module.history),
        "method_report": method.report(module.method_context()),
        "parameters": parameter_counts(model),
        "cost": {
            # under DDP every rank trains on an equal shard: samples of all ranks, in this rank's training time
            "fit_seconds": fit_seconds, "train_seconds": meter.seconds, "train_samples": meter.samples * world,
            "samples_per_s": meter.samples * world / meter.seconds if meter.seconds else None,
            **({"world_size": world} if world > 1 else {}),
            "tokens_per_s": meter.tokens * world / meter.seconds if meter.seconds else None,
            "optimizer_steps": trainer.global_step, **peak_memory_mb(peak_is_per_run),
            "saved_tensors": saved_tensors_summary(module),
        },
        "environment": {**environment(), "attn_implementation": model.config._attn_implementation,
                        "adamw_fused": bool(trainer.optimizers and trainer.optimizers[0].defaults.get("fused"))},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"generation": module.generation_report()} if generation else {}),
    }
    if predict.requested(cfg) and not generation and trainer.is_global_zero:  # last: it may load the best weights
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            predict.load_best(module, Path(best))
        weights = f"best-on-dev weights ({portable_path(best)})" if best else \
            "last epoch's weights (train.save_checkpoints=false keeps no best checkpoint)"
        result["test_predictions"] = predict.predict_files(cfg, model, tokenizer, predict.requested(cfg), weights)
    return result
