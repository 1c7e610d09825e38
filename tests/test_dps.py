"""DPS Dense and Mix: the phase schedule in optimizer steps, exact per-matrix selection, masked gradients, GAM/FAM,
gradient-accumulation invariance (by hand and through the real loop), dropout rule, bad settings
(tests/test_method_contract.py runs both variants end to end)."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from conftest import compose_config
from torch import nn

from ftlab.backbones import load_model
from ftlab.errors import ConfigError
from ftlab.methods.context import MethodContext
from ftlab.methods.stability.dps import DPS, kept_count, phase_at

BATCH, LENGTH = 16, 12


def tiny_bert(seed: int = 0) -> tuple[nn.Module, object]:
    cfg = compose_config(["backbone=tiny-bert"])
    torch.manual_seed(seed)
    return load_model(cfg.backbone, num_labels=2), cfg.backbone


def batches(steps: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{
        "input_ids": torch.randint(1000, 3000, (BATCH, LENGTH), generator=g),
        "attention_mask": torch.ones(BATCH, LENGTH, dtype=torch.long),
        "labels": torch.randint(0, 2, (BATCH,), generator=g),
    } for _ in range(steps)]


def split(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    return [{k: v.chunk(parts)[i] for k, v in batch.items()} for i in range(parts)]


def train(method: DPS, model: nn.Module, data: list[dict[str, torch.Tensor]], micro_batches: int = 1,
          optimizer: Callable[..., torch.optim.Optimizer] = lambda ps: torch.optim.SGD(ps, lr=0.5),
          inspect: Callable[[int, dict[str, torch.Tensor]], None] | None = None) -> MethodContext:
    """The Lightning order by hand: micro-batch backward(s) -> on_before_optimizer_step -> step -> on_after."""
    ctx = MethodContext(model, total_steps=len(data))
    method.on_fit_start(ctx)
    opt = optimizer(model.parameters())
    model.train()
    for batch in data:
        opt.zero_grad()
        for part in split(batch, micro_batches):
            (model(**part).loss / micro_batches).backward()
        raw = {n: layer.weight.grad.clone() for n, layer in method.targets.items()}
        method.on_before_optimizer_step(ctx, opt)
        if inspect is not None:
            inspect(ctx.global_step + 1, raw)
        opt.step()
        method.on_after_optimizer_step(ctx)
        ctx.global_step += 1
    return ctx


def test_phase_schedule_alternates_in_optimizer_steps():
    phases = [phase_at(s, 3) for s in range(1, 13)]
    assert "".join(p[0][0] for p in phases) == "aaaeeeaaaeee"
    assert [s for s, p in zip(range(1, 13), phases) if p[1]] == [1, 4, 7, 10]


def test_kept_count_is_the_ceiling_of_the_decimal_fraction():
    assert kept_count(10, 0.3) == 7          # float (1-0.3)*10 is 7.000000000000001
    assert kept_count(1024, 0.3) == 717      # ceil(716.8)
    assert kept_count(64, 0.0) == 64


@pytest.mark.parametrize("variant", ["dense", "mix"])
def test_exploitation_updates_exactly_the_top_fraction_of_each_matrix(variant):
    p = 0.3
    model, backbone = tiny_bert()
    method = DPS(variant=variant, p=p, ur=0.5)   # 4 steps -> U = 2: a a e e
    method.setup(model, backbone)
    seen = {"grads": {}, "accumulated": {}}

    def inspect(step: int, raw: dict[str, torch.Tensor]) -> None:
        if step <= 2:   # accumulation: dense update, GAM collects the squared (masked, for Mix) gradient
            for name, grad in raw.items():
                seen["accumulated"][name] = seen["accumulated"].get(name, 0) + grad.pow(2) / 1e3
                assert torch.equal(method.targets[name].weight.grad, grad)
        if step == 3:
            seen["before"] = {n: layer.weight.detach().clone() for n, layer in method.targets.items()}
            for name, layer in method.targets.items():
                keep, gam = layer.dps_keep, layer.dps_gam
                torch.testing.assert_close(gam, seen["accumulated"][name])
                importance = gam if variant == "dense" else gam / layer.dps_fam.clamp(min=1.0)
                k = kept_count(gam.numel(), p)
                assert int(keep.sum()) == k, name
                top = torch.zeros(gam.numel(), dtype=torch.bool)
                top[torch.topk(importance.flatten(), k).indices] = True
                assert torch.equal(keep.flatten(), top), name
                assert torch.all(layer.weight.grad[~keep] == 0), name
                if variant == "dense":
                    assert torch.equal(layer.weight.grad[keep], raw[name][keep])

    train(method, model, batches(4), inspect=inspect)
    assert "".join(method.phase_log) == "aaee"
    assert method.selections == 1


def test_plain_sgd_exploitation_step_leaves_unselected_weights_unchanged():
    model, backbone = tiny_bert()
    method = DPS(variant="dense", p=0.5, ur=0.5)   # 4 steps -> U = 2: a a e e
    method.setup(model, backbone)
    snapshots = {}

    def inspect(step: int, raw: dict[str, torch.Tensor]) -> None:
        snapshots[step] = {n: layer.weight.detach().clone() for n, layer in method.targets.items()}

    train(method, model, batches(4), inspect=inspect)
    for name, layer in method.targets.items():
        frozen = ~layer.dps_keep
        assert int(frozen.sum()) == layer.weight.numel() - kept_count(layer.weight.numel(), 0.5)
        assert torch.equal(layer.weight.detach()[frozen], snapshots[3][name][frozen]), name
        assert not torch.equal(layer.weight.detach()[~frozen], snapshots[3][name][~frozen]), name


def test_mix_counts_column_draws_and_pins_unselected_entries_to_the_snapshot():
    p = 0.4
    model, backbone = tiny_bert()
    method = DPS(variant="mix", p=p, ur=0.5)   # 4 steps -> U = 2: a a e e
    method.setup(model, backbone)
    name = "bert.encoder.layer.0.intermediate.dense"
    layer = method.targets[name]
    draws = []

    def inspect(step: int, raw: dict[str, torch.Tensor]) -> None:
        if step in (1, 2):
            draws.append(layer.dps_column_keep.clone())
            dropped_columns = ~layer.dps_column_keep
            assert torch.all(raw[name][:, dropped_columns] == 0)   # ∂L/∂W̃ ⊙ M, M per input column
        if step == 3:
            torch.testing.assert_close(layer.dps_fam, (draws[0].float() + draws[1].float()))
            assert layer.exploiting
            layer.eval()
            plain = layer(torch.eye(layer.in_features)).t()
            layer.train()
            mixed = (layer(torch.eye(layer.in_features)) - layer.bias).t()
            keep = layer.dps_keep
            # at the phase's first step the snapshot is W itself, so the mixed weight equals W everywhere
            torch.testing.assert_close(mixed, layer.weight.detach(), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(plain - layer.bias[:, None].detach(), layer.weight.detach())
            assert 0 < int(keep.sum()) < keep.numel()

    train(method, model, batches(4), inspect=inspect)
    assert 0.3 < torch.stack(draws).float().mean().item() < 0.9   # about 1 − p of the columns kept
    # inside the last exploitation phase: unselected entries of W̃ stay at the snapshot, selected ones move
    mixed = (layer(torch.eye(layer.in_features)) - layer.bias).t().detach()
    keep = layer.dps_keep
    torch.testing.assert_close(mixed[~keep], layer.dps_snapshot[~keep], rtol=0, atol=1e-7)   # y − b rounding only
    assert not torch.allclose(mixed[keep], layer.dps_snapshot[keep])


@pytest.mark.parametrize("variant", ["dense", "mix"])
def test_two_half_batches_give_the_same_training_as_one_batch(variant):
    results = []
    for micro in (1, 2):
        model, backbone = tiny_bert(seed=5)
        # p = 0.25 keeps an even count (48 of 64) of the binary classifier, whose two GAM rows tie exactly (the two
        # logits' gradients are opposite): an odd count would make the tie-break depend on rounding noise
        method = DPS(variant=variant, p=0.25, ur=0.34)   # 6 steps -> U = 2
        method.setup(model, backbone)
        torch.manual_seed(7)   # the mask generator is seeded from torch.initial_seed() at fit start
        train(method, model, batches(6, seed=2), micro_batches=micro,
              optimizer=lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01))
        results.append((method, model))
    (m1, model1), (m2, model2) = results
    assert m1.phase_log == m2.phase_log == list("aaeeaa")
    for (name, a), b in zip(m1.targets.items(), m2.targets.values()):
        assert torch.equal(a.dps_keep, b.dps_keep), name
        torch.testing.assert_close(a.dps_gam, b.dps_gam, rtol=1e-4, atol=1e-12)
    for (name, a), b in zip(model1.named_parameters(), model2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_official_dropout_rule():
    for variant, steps, expected in [("dense", 1999, 0.0), ("dense", 2000, 0.1), ("mix", 5000, 0.0)]:
        model, backbone = tiny_bert()
        method = DPS(variant=variant)
        method.setup(model, backbone)
        method.on_fit_start(MethodContext(model, total_steps=steps))
        rates = {m.p for m in model.modules() if isinstance(m, nn.Dropout)}
        assert rates == {expected}, (variant, steps)


@pytest.mark.parametrize("kwargs", [
    {"p": 1.0}, {"p": -0.1}, {"variant": "sparse"}, {"ur": 0.0}, {"ur": 1.0}, {"dropout": "sometimes"},
    {"layers": ["q", "gate"]}, {"eps": 0},
])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        DPS(**kwargs)


def test_phase_shorter_than_one_step_is_a_config_error():
    model, backbone = tiny_bert()
    method = DPS(ur=0.05)
    method.setup(model, backbone)
    with pytest.raises(ConfigError, match="method.ur"):
        method.on_fit_start(MethodContext(model, total_steps=10))   # int(10 * 0.05) = 0


def test_schedule_under_gradient_accumulation_equals_the_plain_schedule(run_tiny):
    common = ("task=rte", "method=dps", "method.ur=0.25", "data.max_train_samples=64")
    plain = run_tiny(*common, "train.batch_size=16")
    accumulated = run_tiny(*common, "train.batch_size=8", "train.accumulate_grad_batches=2")
    assert plain["status"] == accumulated["status"] == "completed"
    assert plain["method_report"]["schedule"] == accumulated["method_report"]["schedule"] == "aeae"   # U = 1
    assert accumulated["cost"]["optimizer_steps"] == 4


@pytest.mark.parametrize("model_type", ["roberta", "electra", "deberta-v2"])
def test_other_encoder_families_train_with_dps_mix(model_type):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(model_type, vocab_size=3000, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, num_labels=2)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    method = DPS(variant="mix", p=0.5, ur=0.5)
    method.setup(model, None)   # all_linear needs no role names
    assert len(method.targets) == linears
    train(method, model, [{**b, "input_ids": b["input_ids"] % 3000} for b in batches(2)])
    assert "".join(method.phase_log) == "ae"
    for layer in method.targets.values():
        assert int(layer.dps_keep.sum()) == kept_count(layer.weight.numel(), 0.5)


@pytest.mark.parametrize("experiment", ["dps_table", "dps_cpu", "dps_table_roberta_large", "dps_table_electra_base",
                                        "dps_table_deberta_v3_base"])
def test_experiments_resolve_and_sweep_existing_methods(experiment):
    from omegaconf import OmegaConf

    from ftlab.config import CONF_DIR

    cfg = compose_config([f"experiment={experiment}", "task=cola"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["train"]["max_steps"] > 0 or resolved["train"]["epochs"] > 0
    assert resolved["optim"]["lr"] > 0 and resolved["optim"]["weight_decay"] == 0.01
    spec = OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml")
    methods = spec.hydra.sweeper.params.method.split(",")
    assert {"finetune", "dps", "dps_mix"} <= set(methods)
    assert all((CONF_DIR / "method" / f"{m}.yaml").exists() for m in methods)
    table = OmegaConf.load(CONF_DIR / "report" / "tables" / f"{experiment}.yaml")
    assert table.rule == "mean_std" and table.agreement is True
