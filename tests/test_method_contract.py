"""The method contract, checked for every conf/method/*.yaml (as PEFT's tests run every tuner on tiny models).

Each method YAML trains end to end through the real train path (`ftlab.train.run`: validation, data, model, method,
Lightning, record) on a tiny backbone and a few rows, once per entry of its class's `tiny_runs` (Method.tiny_runs: the
overrides a seconds-long run of that method needs, e.g. DSEE's two phases). Nothing here lists methods: a new YAML is
picked up as it is. Checked for every run:

* the record is written and says `completed`, and its method report is plain JSON;
* every hook received a MethodContext (never the LightningModule), in the documented order: one forward and one loss
  per micro-batch, one before/after pair per optimizer step, on_fit_start and on_fit_end once;
* every training loss was finite;
* parameters the method trains (`parameters_to_train` after setup) moved, unless the method masked all of their
  gradient (CHILD-TUNING_D's child network may leave whole tensors out), and the others did not (a method may zero
  frozen weights, i.e. prune them; a parameter whose shape the method changed, e.g. a removed head, is not compared);
* `resume_attributes` survive a checkpoint: saved by torch.save, loaded into a freshly built method, they read back
  equal.

The last tests check what the training module promises the methods: the context's operations (restart_schedule,
reset_history, log, the training data) work through Lightning, and no method imports the training module.
"""
from __future__ import annotations

import ast
import functools
import inspect
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_config, tiny_overrides
from hydra import compose, initialize_config_dir
from one_step import tiny_module

from ftlab import train
from ftlab.config import CONF_DIR, PROJECT_ROOT
from ftlab.methods import Method
from ftlab.methods.context import MethodContext
from ftlab.validation.run_config import method_class

pytestmark = pytest.mark.usefixtures("one_thread")

# a few optimizer steps: 32 rows in batches of 16, one epoch (a method's tiny_runs may ask for more), 16 dev rows
FEW_STEPS = ("data.max_train_samples=32", "data.max_eval_samples=16", "threads=1")
# the hooks that receive the context (every Method hook but setup, parameters_to_train and watched_modules)
HOOKS = [name for name, fn in inspect.getmembers(Method, inspect.isfunction)
         if list(inspect.signature(fn).parameters)[1:2] == ["ctx"]]


def contract_cases() -> list[Any]:
    """(method YAML, overrides) for every conf/method/*.yaml and every entry of its class's `tiny_runs`."""
    cases = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        classes = {path.stem: method_class(compose("config", overrides=[f"method={path.stem}"]))
                   for path in sorted((CONF_DIR / "method").glob("*.yaml"))}
    for stem, cls in classes.items():
        for overrides in cls.tiny_runs:
            label = stem + (f"[{' '.join(overrides)}]" if overrides else "")
            cases.append(pytest.param(stem, tuple(overrides), id=label))
    return cases


class Spy:
    """Wraps the method that `ftlab.train.build_method` builds: records each hook call and its argument, the training
    losses, and the model's parameters right after `setup` (which ones the method trains, and their values)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.contexts: list[Any] = []
        self.losses: list[float] = []
        self.method: Method | None = None
        self.model: torch.nn.Module | None = None
        self.before: dict[str, torch.Tensor] = {}
        self.trained: set[str] = set()
        self.got_gradient: set[str] = set()  # non-zero gradient after the method's on_before_optimizer_step
        self.build = train.build_method  # the real one, for a fresh method
        monkeypatch.setattr(train, "build_method", lambda cfg: self.watch(self.build(cfg)))

    def watch(self, method: Method) -> Method:
        self.method = method
        for name in HOOKS:
            setattr(method, name, self._recording(name, getattr(method, name)))
        setup = method.setup

        def after_setup(model: torch.nn.Module, backbone: Any) -> None:
            setup(model, backbone)
            self.model = model
            self.trained = {n for n, _ in method.parameters_to_train(model)}
            self.before = {n: p.detach().float().clone() for n, p in model.named_parameters()}

        method.setup = after_setup
        return method

    def _recording(self, name: str, hook: Any) -> Any:
        @functools.wraps(hook)
        def call(ctx: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            self.contexts.append(ctx)
            result = hook(ctx, *args, **kwargs)
            if name == "training_loss":
                self.losses.append(float(result.detach().float()))
            if name == "on_before_optimizer_step":
                self.got_gradient |= {n for n, p in self.model.named_parameters() if p.grad is not None and p.grad.any()}
            return result
        return call

    def count(self, name: str) -> int:
        return self.calls.count(name)


@pytest.mark.parametrize("method, overrides", contract_cases())
def test_method_contract(method: str, overrides: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    cfg = compose_config(tiny_overrides(tmp_path, f"method={method}", *FEW_STEPS, *overrides))
    record = train.run(cfg)

    # the record: written, completed, its method report plain JSON
    _, path, _ = train.run_paths(cfg)
    assert record["status"] == "completed", record.get("error")
    assert json.loads(path.read_text(encoding="utf-8"))["status"] == "completed"
    json.dumps(record["method_report"], allow_nan=False)

    # the hooks: a MethodContext each, in the documented numbers
    assert spy.contexts and all(isinstance(ctx, MethodContext) for ctx in spy.contexts)
    steps = record["cost"]["optimizer_steps"]
    assert steps >= 2
    assert spy.count("on_fit_start") == spy.count("on_fit_end") == 1 and spy.count("report") >= 1
    assert spy.count("on_before_optimizer_step") == spy.count("on_after_optimizer_step") == steps
    assert spy.count("training_forward") == spy.count("training_loss") == spy.count("on_train_batch_start") >= steps
    assert spy.count("schedule_steps") >= 1

    # the losses: finite
    assert spy.losses and all(math.isfinite(loss) for loss in spy.losses), spy.losses

    # the parameters: what the method trains and lets a gradient reach moved, nothing else did (pruning may zero
    # frozen weights)
    after = {n: p.detach().float() for n, p in spy.model.named_parameters()}
    compared = {n for n in spy.before if n in after and after[n].shape == spy.before[n].shape}
    assert spy.trained & compared & spy.got_gradient, "no parameter the method trains got a gradient"
    assert spy.got_gradient <= spy.trained, f"gradient on untrained parameters: {sorted(spy.got_gradient - spy.trained)}"
    still = sorted(n for n in spy.trained & compared & spy.got_gradient if torch.equal(after[n], spy.before[n]))
    assert not still, f"trained, given a gradient, but unchanged: {still}"
    for name in sorted(compared - spy.trained):
        moved = after[name] != spy.before[name]
        assert not (after[name][moved] != 0).any(), f"{name} is not trained but changed (other than being zeroed)"

    # resume: the attributes survive a checkpoint into a freshly built method
    state = spy.method.resume_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = spy.build(cfg)
    fresh.load_resume_state(torch.load(buffer, weights_only=False))
    assert fresh.resume_state() == state
    assert set(state) == set(spy.method.resume_attributes or ())


# -- what the training module promises the methods ---------------------------------------------------------------------
class Phased(Method):
    """What DSEE's recovery phase does, reduced to the context's operations: at the end of epoch 0 it moves the history
    out of the run and restarts the schedule; it logs a scalar every step and reads the training data at fit start."""

    name = "phased"

    def __init__(self) -> None:
        self.schedules: list[tuple[int, int, int]] = []
        self.phase1: list[dict[str, Any]] = []
        self.fit_start: dict[str, Any] = {}

    def schedule_steps(self, ctx: MethodContext, steps_left: int) -> int:
        self.schedules.append((steps_left, ctx.total_steps, ctx.steps_per_epoch))
        return steps_left

    def on_fit_start(self, ctx: MethodContext) -> None:
        batches = list(ctx.train_dataloader())
        with ctx.autocast():
            loss = ctx.forward({k: v.to(ctx.device) for k, v in batches[0].items()}).loss
        self.fit_start = {"batches": len(batches), "examples": ctx.train_examples(), "loss": float(loss),
                          "max_epochs": ctx.max_epochs, "kind": ctx.task_kind, "selection": ctx.selection,
                          "world_size": ctx.world_size, "rank_zero": ctx.is_global_zero, "run_dir": ctx.run_dir,
                          "same": ctx.broadcast("x") == "x"}

    def training_loss(self, ctx: MethodContext, batch: Any, outputs: Any, loss: torch.Tensor) -> torch.Tensor:
        ctx.log("train/phased_step", torch.tensor(float(ctx.global_step)), batch_size=batch["labels"].shape[0])
        return loss

    def on_train_epoch_end(self, ctx: MethodContext, epoch: int) -> None:
        if epoch == 0:
            self.phase1 = ctx.reset_history()
            ctx.restart_schedule()


class Optimizers(pl.Callback):
    """The optimizer each epoch starts with."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.seen.append(trainer.optimizers[0])


def test_the_training_module_implements_the_context_operations(tmp_path: Path) -> None:
    method = Phased()
    module, data = tiny_module(tmp_path, method, "task=rte", "data.max_train_samples=32", "data.max_eval_samples=16",
                               "train.batch_size=16")
    optimizers = Optimizers()
    trainer = pl.Trainer(accelerator="cpu", precision="32-true", max_epochs=2, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path / "run"), callbacks=[optimizers])
    trainer.fit(module, datamodule=data)
    # 32 rows / 16: 2 steps an epoch, 4 in all; the restart after epoch 0 sizes a schedule over the 2 steps left
    assert method.schedules == [(4, 4, 2), (2, 4, 2)]
    first, second = optimizers.seen
    assert second is not first and second is trainer.optimizers[0]
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2  # the fresh schedule counted 2 steps
    # reset_history moved epoch 0's evaluation out of the run: the run's history holds epoch 1 only
    assert [h["epoch"] for h in method.phase1] == [0] and [h["epoch"] for h in module.history] == [1]
    assert trainer.callback_metrics["train/phased_step"] == 3.0  # logged at the last step (global step 3)
    # the 32 rows are a subset of RTE's training split that keeps their indices in the full split
    largest = max(data.load_split("train")["idx"])
    assert largest >= 32 and method.fit_start == {
        "batches": 2, "examples": largest + 1, "loss": pytest.approx(method.fit_start["loss"]),
        "max_epochs": 2, "kind": "classification", "selection": ("dev", "accuracy"), "world_size": 1,
        "rank_zero": True, "run_dir": tmp_path / "run", "same": True,
    }
    assert math.isfinite(method.fit_start["loss"])


def test_no_method_imports_the_training_module() -> None:
    """Methods see the run only through MethodContext: nothing under ftlab/methods imports ftlab.tasks,
    ftlab.train or Lightning's LightningModule."""
    forbidden = ("ftlab.tasks", "ftlab.train")
    methods = PROJECT_ROOT / "src" / "ftlab" / "methods"
    for path in methods.rglob("*.py"):
        package = ".".join(("ftlab", *path.relative_to(methods.parent).with_suffix("").parts[:-1]))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.level else node.module
            elif isinstance(node, ast.Import):
                name = ",".join(a.name for a in node.names)
            else:
                continue
            assert not any(name and name.startswith(f) for f in forbidden), f"{path.name} imports {name}"
