"""validate_run_config: the types and ranges of every run-deciding key, checked before any model or data is loaded.

The schema is the tables below (one Spec per dotted key) plus the cross-key rules of `_check_*`; `method.*` and
`trainer.*` are checked against the constructors they are passed to (ftlab.validation.signature). Paths, loggers
and the Hydra node decide nothing about a run (they are not ftlab.config.RUN_GROUPS) and are not checked here;
backbone.* is checked where it is used (ftlab.backbones), since its keys differ per model family.
"""
from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig

from ..config import import_class, import_target
from ..errors import ConfigError
from ..methods.base import Method
from ..tasks.generation.readers import READERS
from ..tasks.module import task_classes
from .lookup import ABSENT, origin, resolved
from .ranges import METHOD_RANGES, TRAINER_RANGES
from .signature import check_against
from .spec import Spec, between, check, fail, ge, gt

UNIT = between(0, 1, hi_open=True)
SAMPLES_WHY = "null uses every row; 0 would leave a split with no rows (a run with no metric)"

RUN_KEYS: dict[str, Spec] = {
    "seed": Spec(int, between(0, 2**32 - 1), why="numpy's seed range"),
    "threads": Spec(int, ge(1), nullable=True, why="torch threads; null uses every core"),
    "train.max_steps": Spec(int, ge(-1), why="-1: no limit (train.epochs decides); 0: evaluate the untrained model"),
    "train.batch_size": Spec(int, ge(1)),
    "train.accumulate_grad_batches": Spec(int, ge(1)),
    "train.save_checkpoints": Spec(bool),
    "optim.lr": Spec(float, gt(0)),
    "optim.weight_decay": Spec(float, ge(0)),
    "optim.warmup_ratio": Spec(float, UNIT, why="the share of the steps spent warming up"),
    "optim.warmup_steps": Spec(int, ge(0), why="0 uses optim.warmup_ratio"),
    "optim.betas": Spec(list, items=Spec(float, UNIT), length=2, why="AdamW's (beta1, beta2)"),
    "optim.eps": Spec(float, gt(0)),
    "data.source": Spec(str, choices=("local", "hub")),
    "data.max_length": Spec(int, ge(1)),
    "data.max_train_samples": Spec(int, ge(1), nullable=True, why=SAMPLES_WHY),
    "data.max_eval_samples": Spec(int, ge(1), nullable=True, why=SAMPLES_WHY),
    "data.eval_batch_size": Spec(int, ge(1)),
    "data.group_by_length": Spec(bool),
    "data.pad_to_multiple_of": Spec(int, ge(1), nullable=True),
    "data.num_workers": Spec(int, ge(0)),
    "task.name": Spec(str),
    "task.kind": Spec(str, choices=("classification", "regression", "generation")),
    "task.metrics": Spec(list, items=Spec(str)),
    "task.eval_splits": Spec(list, items=Spec(str)),
    "task.test_splits": Spec(list, items=Spec(str), nullable=True, required=False),
    # the task's defaults: train.* / optim.* / data.* interpolate them, and a task file is run-deciding as a whole
    "task.epochs": Spec(int, ge(1)),
    "task.batch_size": Spec(int, ge(1)),
    "task.lr": Spec(float, gt(0)),
    "task.max_length": Spec(int, ge(1)),
}

LABELLED_KEYS: dict[str, Spec] = {  # classification and regression
    "task.num_labels": Spec(int, ge(1)),
    "task.text_fields": Spec(list, items=Spec(str)),
}

GENERATION_KEYS: dict[str, Spec] = {  # task/{e2e,webnlg,dart}.yaml; read by ftlab.tasks.generation.decode.generation_kwargs
    "task.format": Spec(str, choices=tuple(READERS)),
    "task.label_smoothing": Spec(float, UNIT, nullable=True, required=False),
    "task.decoding.num_beams": Spec(int, ge(1), why="1 decodes greedily"),
    "task.decoding.max_new_tokens": Spec(int, ge(1)),
    "task.decoding.no_repeat_ngram_size": Spec(int, ge(0), why="0 turns the n-gram block off"),
    "task.decoding.length_penalty": Spec(float),
    "task.decoding.repetition_penalty": Spec(float, gt(0), required=False, why="1.0 is no penalty"),
    "task.decoding.early_stopping": Spec(bool, required=False),
    "task.decoding.batch_size": Spec(int, ge(1), why="unique inputs per generate() call"),
}

# pl.Trainer arguments that train.run sets itself: a trainer.* copy would collide with them
TRAINER_OWNED = {
    "max_epochs": "use train.epochs / train.max_steps (the trainer's max_epochs comes from train.epochs)",
    "max_steps": "use train.epochs / train.max_steps (the trainer's max_steps comes from train.max_steps)",
    "min_epochs": "use train.epochs / train.max_steps", "min_steps": "use train.epochs / train.max_steps",
    "accumulate_grad_batches": "use train.accumulate_grad_batches",
    "enable_checkpointing": "use train.save_checkpoints",
    "callbacks": "ftlab sets the trainer's callbacks", "logger": "choose logger=csv|tensorboard|wandb",
    "default_root_dir": "ftlab writes under paths.output_dir",
}
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _check_table(cfg: DictConfig, table: dict[str, Spec]) -> None:
    for key, spec in table.items():
        value = resolved(cfg, key)
        if value is ABSENT:
            if spec.required:
                raise ConfigError(f"{key} is missing from the config; expected {spec.expected()}")
            continue
        check(key, value, spec, origin(cfg, key))


def _check_length(cfg: DictConfig) -> None:
    """train.epochs >= 1, or -1 (Lightning: no epoch limit) when train.max_steps > 0 bounds the run."""
    epochs, max_steps = resolved(cfg, "train.epochs"), resolved(cfg, "train.max_steps")
    check("train.epochs", epochs, Spec(int), origin(cfg, "train.epochs"))
    if epochs >= 1 or (epochs == -1 and max_steps > 0):
        return
    raise fail("train.epochs", ">= 1 (or -1 with train.max_steps > 0)", epochs, origin(cfg, "train.epochs"))


def _check_task(cfg: DictConfig) -> None:
    """The task names its datamodule and LightningModule, and its splits, selection and labels agree."""
    task_classes(cfg.task)
    task = resolved(cfg, "task")
    splits = list(task.get("splits") or {})
    if "train" not in splits:
        raise ConfigError(f"task.splits must define 'train', got {splits}")
    if not task["eval_splits"]:
        raise ConfigError("task.eval_splits must name at least one split, got []")
    for key in ("eval_splits", "test_splits"):
        for split in task.get(key) or []:
            if split not in splits:
                raise fail(f"task.{key}", f"splits defined in task.splits {splits}", task[key])
    selection = task.get("selection") or {}
    if selection.get("split") not in task["eval_splits"]:
        raise fail("task.selection.split", f"one of task.eval_splits {task['eval_splits']}", selection.get("split"))
    if selection.get("metric") not in task["metrics"]:
        raise fail("task.selection.metric", f"one of task.metrics {task['metrics']}", selection.get("metric"))
    if task["kind"] == "generation":
        if resolved(cfg, "data.source") != "local":
            raise fail("data.source", "'local' for a generation task (its official files are read from "
                       "paths.data_dir)", resolved(cfg, "data.source"))
        return
    _check_table(cfg, LABELLED_KEYS)
    num_labels = task["num_labels"]
    if task["kind"] == "regression" and num_labels != 1:
        raise fail("task.num_labels", "1 for a regression task", num_labels)
    if task["kind"] == "classification":
        if num_labels < 2:
            raise fail("task.num_labels", ">= 2 for a classification task", num_labels)
        values = (task.get("local") or {}).get("label_values")
        if resolved(cfg, "data.source") == "local" and (not isinstance(values, list) or len(values) != num_labels):
            raise fail("task.local.label_values", f"a list of task.num_labels={num_labels} labels", values)


def _node_values(cfg: DictConfig, node: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Resolved values and interpolation origins of the keys of `node`, minus Hydra's instantiate keys and `name`."""
    keys = [k for k in (resolved(cfg, node) or {}) if k not in HYDRA_KEYS and k != "name"]
    values = {k: resolved(cfg, f"{node}.{k}") for k in keys}
    return values, {k: origin(cfg, f"{node}.{k}") for k in keys}


def _check_trainer(cfg: DictConfig) -> None:
    import pytorch_lightning as pl

    values, origins = _node_values(cfg, "trainer")
    for key in values:
        if key in TRAINER_OWNED:
            raise ConfigError(f"trainer.{key} is set by ftlab, not by trainer.*: {TRAINER_OWNED[key]}")
    strategy = values.get("strategy")
    if isinstance(strategy, dict):  # a strategy object built from its `_target_` (trainer=fsdp)
        _check_callable("trainer.strategy", strategy)
        values = {k: v for k, v in values.items() if k != "strategy"}
    check_against("trainer", values, pl.Trainer, TRAINER_RANGES, origins, "pytorch_lightning.Trainer")


def _check_callable(key: str, node: dict[str, Any]) -> None:
    """ConfigError unless `node`'s `_target_` imports and accepts the node's other keys."""
    target = node.get("_target_")
    factory = import_target(target, f"{key}._target_")
    try:
        inspect.signature(factory).bind(**{k: v for k, v in node.items() if k not in HYDRA_KEYS})
    except TypeError as err:
        raise ConfigError(f"{key}: {target} does not accept these keys ({err}); accepted: "
                          f"{', '.join(inspect.signature(factory).parameters)}") from None


def method_class(cfg: DictConfig) -> type:
    """The class method._target_ names, imported (importing runs no model code)."""
    target = resolved(cfg, "method._target_")
    if not isinstance(target, str) or "." not in target:
        raise fail("method._target_", "a class path such as ftlab.methods.finetune.FineTune",
                   None if target is ABSENT else target)
    return import_class(target, "method._target_", Method)


def _check_method(cfg: DictConfig) -> None:
    cls = method_class(cfg)
    values, origins = _node_values(cfg, "method")
    check_against("method", values, cls, METHOD_RANGES, origins, f"{cls.__module__}.{cls.__name__}")
    train = resolved(cfg, "train")
    cls.check_run(values, train if isinstance(train, dict) else {})  # cross-key rules of the method (DSEE's phases)


def validate_run_config(cfg: DictConfig) -> None:
    """Raise ftlab.errors.ConfigError, in one line naming the dotted key, the bad value and what is expected, for the
    first run-deciding key of the composed config `cfg` with a wrong type or an out-of-range value.

    Loads no model and reads no data (it imports the method's class to read its constructor's signature), so
    train.run can call it first: a typo fails in a second, not after the backbone has loaded."""
    _check_table(cfg, RUN_KEYS)
    _check_length(cfg)
    _check_task(cfg)
    if resolved(cfg, "task.kind") == "generation":
        _check_table(cfg, GENERATION_KEYS)
    _check_trainer(cfg)
    _check_method(cfg)
