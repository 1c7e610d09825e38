"""Test helper: run exactly one optimizer step of a method through the real Lightning loop and return the gradients
the optimizer would see (after the method's `on_before_optimizer_step`), so that a step built from one batch can be
compared with the same examples split into accumulated micro-batches."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
from conftest import compose_config, tiny_overrides

from ftlab.backbones import load_tokenizer
from ftlab.methods import Method
from ftlab.methods.context import MethodContext
from ftlab.tasks.datamodule import TaskDataModule
from ftlab.tasks.module import TaskModule, task_classes


def tiny_parts(tmp: Path, *overrides: str, dropout: float = 0.0):
    """(config, model) of a seeded tiny BERT; `dropout` sets every dropout probability of the model config."""
    cfg = compose_config(tiny_overrides(tmp, *overrides))
    pl.seed_everything(0, verbose=False)
    _, module_class = task_classes(cfg.task)
    model = module_class.load_model(cfg.backbone, cfg.task, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return cfg, model


def one_step_gradients(
    tmp: Path, make_method: Callable[[], Method], batch_size: int, accumulate: int, *overrides: str, rows: int = 16,
) -> tuple[dict[str, torch.Tensor], Method]:
    """Gradients (by parameter name) of the first optimizer step over the same `rows` training examples, as one batch
    (`batch_size=rows, accumulate=1`) or as micro-batches (`batch_size=rows // k, accumulate=k`); fp32, no dropout."""
    cfg, model = tiny_parts(
        tmp, "task=rte", f"data.max_train_samples={rows}", "data.group_by_length=false",  # same order for any batch size
        f"train.batch_size={batch_size}", *overrides,
    )
    method = make_method()
    method.setup(model, cfg.backbone)
    data_class, module_class = task_classes(cfg.task)
    data = data_class.for_run(cfg, load_tokenizer(cfg.backbone))
    module = module_class.for_run(cfg, model, method, data, Path(cfg.paths.output_dir))
    captured: dict[str, torch.Tensor] = {}
    original = method.on_before_optimizer_step

    def capture(ctx: MethodContext, optimizer: torch.optim.Optimizer) -> None:
        original(ctx, optimizer)
        captured.update({n: p.grad.detach().clone() for n, p in ctx.model.named_parameters() if p.grad is not None})

    method.on_before_optimizer_step = capture  # instance attribute: this method object only
    trainer = pl.Trainer(
        accelerator="cpu", precision="32-true", max_steps=1, accumulate_grad_batches=accumulate, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    method.on_before_optimizer_step = original
    return captured, method


def assert_same_gradients(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-5, atol: float = 1e-9) -> None:
    """Per tensor, ‖a − b‖ ≤ rtol·‖b‖ + atol (relative to the tensor's gradient norm; attention key biases have ~1e-13
    gradients by softmax shift-invariance, which the small atol absorbs)."""
    assert a.keys() == b.keys()
    for name in a:
        error, scale = (a[name] - b[name]).norm().item(), b[name].norm().item()
        assert error <= rtol * scale + atol, f"{name}: |a - b| = {error:.3g} vs |b| = {scale:.3g}"


def tiny_module(tmp: Path, method: Method, *overrides: str) -> tuple[TaskModule, TaskDataModule]:
    """`method` set up on a seeded tiny BERT (no dropout) inside the training module, and the data module of the
    config's rows; fit them with any pl.Trainer."""
    cfg, model = tiny_parts(tmp, *overrides)
    method.setup(model, cfg.backbone)
    data_class, module_class = task_classes(cfg.task)
    data = data_class.for_run(cfg, load_tokenizer(cfg.backbone))
    return module_class.for_run(cfg, model, method, data, tmp / "run"), data
