"""ftlab.kernels: the fast CPU dropout keeps dropout's distribution and gradient, is fixed by the seed, and a MiniLM
training run on real RTE through the kernels keeps the loss curve the stock step gave (tests/fixtures/loss_curve.json,
made by this file's __main__ with the kernels off, before they existed).

    python tests/test_kernels.py     # rewrite the reference curves (stock dropout and attention)
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import DATA_DIR, compose_config
from ftlab.backbones import load_model, load_tokenizer
from ftlab.kernels import use_cpu_kernels
from ftlab.kernels.attention import ATTENTION_NAME
from ftlab.kernels.dropout import FastDropout, dropout, keep_mask
from ftlab.methods.finetune import FineTune
from ftlab.tasks.classification.datamodule import ClassificationDataModule
from ftlab.tasks.classification.module import ClassificationModule

FIXTURE = Path(__file__).parent / "fixtures" / "loss_curve.json"
CURVE = ["task=rte", "train.batch_size=16", "data.max_train_samples=192", "optim.lr=2e-4"]  # 12 MiniLM steps, bf16


def test_drop_rate_is_p_and_the_output_is_unbiased() -> None:
    torch.manual_seed(0)
    for p in (0.1, 0.5):
        n = 1 << 20
        keep, rate = keep_mask(torch.Size([n]), p)
        assert rate == (65536 - round(p * 65536)) / 65536 and abs(rate - (1 - p)) < 2**-16
        sigma = math.sqrt(rate * (1 - rate) / n)
        assert abs(keep.float().mean().item() - rate) < 5 * sigma
        y = dropout(torch.ones(n), p)
        values = y.unique().tolist()  # kept entries scaled by 1 / (exact keep rate), in float32
        assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / rate, rel=1e-7)
        assert abs(y.mean().item() - 1.0) < 5 * sigma / rate


def test_gradient_goes_through_the_same_mask() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 128, dtype=torch.bfloat16, requires_grad=True)
    y = dropout(x, 0.2)
    g = torch.randn_like(y)
    y.backward(g)
    kept = y != 0
    torch.testing.assert_close(x.grad[kept], (g * y / x.detach())[kept])
    assert (x.grad[~kept] == 0).all() and y.dtype == torch.bfloat16


def test_masks_follow_the_torch_seed_and_differ_between_calls() -> None:
    torch.manual_seed(5)
    a, b = keep_mask(torch.Size([4096]), 0.5)[0], keep_mask(torch.Size([4096]), 0.5)[0]
    torch.manual_seed(5)
    assert torch.equal(keep_mask(torch.Size([4096]), 0.5)[0], a)
    agree = (a == b).float().mean().item()  # independent masks agree on half the entries
    assert abs(agree - 0.5) < 5 * 0.5 / 64


def test_eval_mode_and_p_zero_are_the_identity() -> None:
    x = torch.randn(8, 8)
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x


def test_a_bert_model_gets_fast_dropout_and_attention_with_unchanged_outputs(tmp_path: Path) -> None:
    cfg = compose_config(["backbone=tiny-bert"])
    stock = load_model(cfg.backbone, attn_implementation="eager", num_labels=2)
    ours = load_model(cfg.backbone, attn_implementation="eager", num_labels=2)
    ours.load_state_dict(stock.state_dict())
    plain = sum(type(m) is nn.Dropout for m in stock.modules())
    applied = use_cpu_kernels(ours)
    assert applied == {"fast_dropout_modules": plain, "fast_attention_dropout": True} and plain > 0
    assert ours.config._attn_implementation == ATTENTION_NAME
    assert all(type(m) is not nn.Dropout for m in ours.modules())
    assert sum(isinstance(m, FastDropout) for m in ours.modules()) == plain
    ids = torch.randint(5, 100, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padded positions go through the additive mask
    stock.eval(), ours.eval()
    torch.testing.assert_close(ours(input_ids=ids, attention_mask=mask).logits,
                               stock(input_ids=ids, attention_mask=mask).logits)


def test_a_causal_model_keeps_its_own_attention() -> None:
    cfg = compose_config(["backbone=tiny-gpt2"])
    model = load_model(cfg.backbone, head="causal_lm", attn_implementation="eager")
    assert use_cpu_kernels(model)["fast_attention_dropout"] is False
    assert model.config._attn_implementation == "eager"


class LossCurve(pl.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def loss_curve(stream: int, kernels: bool, dropout_on: bool = True) -> list[float]:
    """Training losses of 12 steps: MiniLM, real RTE (192 rows, batch 16), bf16-mixed, fused AdamW, clipping at 1 —
    the framework's step through Lightning, with or without ftlab.kernels. The head's initialisation and the batches
    are those of seed 1 always; `stream` seeds torch's generator for the fit, i.e. the dropout masks."""
    cfg = compose_config([*CURVE, f"paths.data_dir={DATA_DIR}"])
    pl.seed_everything(1, verbose=False)
    off = {} if dropout_on else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    model = load_model(cfg.backbone, attn_implementation="eager", num_labels=2, **off)
    model.train()
    if kernels:
        use_cpu_kernels(model)
    data = ClassificationDataModule(cfg.task, cfg.data, load_tokenizer(cfg.backbone), DATA_DIR, None, 16, 1)
    module = ClassificationModule(model, FineTune(), cfg.task, cfg.optim)
    curve = LossCurve()
    torch.manual_seed(stream)
    pl.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=12, limit_val_batches=0, logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               gradient_clip_val=1.0, callbacks=[curve]).fit(module, datamodule=data)
    return curve.losses


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text())


def test_without_dropout_the_loss_curve_is_the_stock_one_within_bf16_noise(reference: dict) -> None:
    ours = loss_curve(1, kernels=True, dropout_on=False)
    # bf16 keeps 8 bits of mantissa (a relative step of 4e-3): a loss near 0.7 that any matmul rounds otherwise moves
    # by ~3e-3; the same ops in the same order give the same bits
    assert max(abs(a - b) for a, b in zip(ours, reference["no_dropout"]["1"])) < 3e-3, (ours, reference["no_dropout"])


def test_with_dropout_the_loss_curve_stays_within_the_spread_of_stock_dropout_streams(reference: dict) -> None:
    """Other masks by design (another generator), so not the same numbers: with the same initialisation and batches,
    the curve must sit as close to the mean of the stock curves (three dropout streams) as they sit to it."""
    stock = [reference["dropout"][s] for s in sorted(reference["dropout"])]
    mean = [sum(c[i] for c in stock) / len(stock) for i in range(len(stock[0]))]

    def distance(curve: list[float]) -> float:
        return sum(abs(a - b) for a, b in zip(curve, mean)) / len(mean)

    ours = loss_curve(7, kernels=True)
    assert distance(ours) <= 1.5 * max(distance(c) for c in stock), (ours, stock)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps({
        "made_with": "stock torch dropout and transformers' eager attention (kernels off), 12 steps: " + " ".join(CURVE),
        "no_dropout": {"1": loss_curve(1, kernels=False, dropout_on=False)},
        "dropout": {str(s): loss_curve(s, kernels=False) for s in (1, 2, 3)},
    }, indent=1) + "\n")
    print(FIXTURE.read_text())
