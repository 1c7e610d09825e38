"""Re-init and CHILD-TUNING_D: which weights are re-initialised (and how reproducibly), the Fisher estimate, the
exact size of the child network, masked gradients, invariance to gradient accumulation and bad input
(tests/test_method_contract.py runs both end to end)."""
from __future__ import annotations

import pytest
import torch
from one_step import assert_same_gradients, one_step_gradients, tiny_parts

from ftlab.errors import ConfigError
from ftlab.methods.context import MethodContext
from ftlab.methods.stability.child_tuning import ChildTuningD, top_fraction_masks
from ftlab.methods.stability.reinit import Reinit

TOP = "bert.encoder.layer.1."
POOLER = "bert.pooler."


pytestmark = pytest.mark.usefixtures("one_thread")


# -- Re-init -----------------------------------------------------------------------------------------------------
def _pretrained_like(tmp_path):
    """A tiny BERT whose every parameter is moved away from HF's init (LayerNorms no longer 1/0, biases non-zero), so
    that a re-initialisation is visible on every tensor it touches."""
    cfg, model = tiny_parts(tmp_path)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return cfg, model


def test_reinit_touches_exactly_the_top_blocks_and_the_pooler(tmp_path):
    cfg, model = _pretrained_like(tmp_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = Reinit(layers=1, seed=3)
    method.setup(model, cfg.backbone)
    after = dict(model.named_parameters())
    for name, old in before.items():
        if name.startswith((TOP, POOLER)):
            assert not torch.equal(after[name], old), name
        else:
            assert torch.equal(after[name], old), name  # bit-identical: embeddings, block 0, classifier
    assert method.reinitialised == ["bert.pooler.dense", "bert.encoder.layer.1"]
    assert method.parameters_touched == sum(p.numel() for n, p in after.items() if n.startswith((TOP, POOLER)))
    for name, p in after.items():
        if not name.startswith((TOP, POOLER)):
            continue
        if "LayerNorm.weight" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:  # Linear weights ~ N(0, initializer_range = 0.02)
            assert p.mean().abs() < 0.004 and p.std().item() == pytest.approx(0.02, rel=0.15), name


def test_reinit_is_deterministic_per_seed(tmp_path):
    states = []
    for seed in (5, 5, 6):
        cfg, model = _pretrained_like(tmp_path)
        Reinit(layers=2, seed=seed).setup(model, cfg.backbone)
        states.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert all(torch.equal(states[0][n], states[1][n]) for n in states[0])
    assert not torch.equal(states[0][f"{TOP}output.dense.weight"], states[2][f"{TOP}output.dense.weight"])


def test_reinit_without_pooler_leaves_it_alone(tmp_path):
    cfg, model = _pretrained_like(tmp_path)
    pooler = model.bert.pooler.dense.weight.detach().clone()
    Reinit(layers=0, reinit_pooler=False).setup(model, cfg.backbone)
    assert torch.equal(model.bert.pooler.dense.weight, pooler)


def test_reinit_rejects_more_layers_than_the_backbone_has(tmp_path):
    cfg, model = tiny_parts(tmp_path)
    with pytest.raises(ConfigError, match="only 2 blocks"):
        Reinit(layers=3).setup(model, cfg.backbone)
    with pytest.raises(ConfigError, match="layers"):
        Reinit(layers=-1)


# -- CHILD-TUNING_D ----------------------------------------------------------------------------------------------
def test_top_fraction_masks_keep_exactly_the_highest_entries():
    scores = {"a": torch.tensor([[0.5, 0.1], [0.9, 0.0]]), "b": torch.tensor([0.3, 0.7, 0.2])}
    masks, threshold = top_fraction_masks(scores, 3 / 7)
    # the top three of all seven entries are 0.9, 0.7, 0.5, wherever they sit
    assert masks["a"].tolist() == [[True, False], [True, False]] and masks["b"].tolist() == [False, True, False]
    assert threshold == 0.5
    everything, _ = top_fraction_masks(scores, 1.0)
    assert all(m.all() for m in everything.values())


class KeepFisher(ChildTuningD):
    """Keeps the Fisher estimate for inspection."""

    def estimate_fisher(self, module):
        self.fisher = super().estimate_fisher(module)
        return self.fisher


@pytest.fixture(scope="module")
def child_steps(tmp_path_factory):
    """One step of CHILD-TUNING_D (p_D = 0.2, no Fisher clipping) on 16 rows: as one batch and as 2 x 8 accumulated."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("child")
    make = lambda: KeepFisher(reserve_p=0.2, fisher_clip_norm=None)  # noqa: E731
    return one_step_gradients(tmp / "full", make, 16, 1), one_step_gradients(tmp / "half", make, 8, 2)


def test_child_tuning_keeps_exactly_the_configured_fraction(child_steps):
    (_, method), _ = child_steps
    total = sum(m.numel() for m in method.masks.values())
    kept = sum(int(m.sum()) for m in method.masks.values())
    assert kept == round(0.2 * total) and method.facts["kept"] == kept
    assert all(name.startswith("bert.encoder.layer.") for name in method.masks)
    assert total == sum(p.numel() for n, p in method._params.items())
    # the kept entries are the highest Fisher entries (global threshold over all block tensors)
    low_kept = min(method.fisher[n][m].min() for n, m in method.masks.items() if m.any())
    high_dropped = max(method.fisher[n][~m].max() for n, m in method.masks.items() if (~m).any())
    assert low_kept >= high_dropped and float(low_kept) == method.facts["threshold"]


def test_child_tuning_masks_gradients_and_fisher_is_the_squared_gradient(child_steps):
    (grads, method), _ = child_steps
    # one Fisher batch = the training step's batch, same weights, no dropout, no clipping: F = g^2 exactly
    for name, mask in method.masks.items():
        assert not grads[name][~mask].any(), name  # masked entries get zero gradient
        torch.testing.assert_close(grads[name].pow(2), method.fisher[name] * mask, rtol=1e-6, atol=0)
    outside = [n for n in grads if n not in method.masks]
    assert outside and all(grads[n].any() for n in outside if "key.bias" not in n)  # embeddings, pooler, head: dense


def test_child_tuning_is_invariant_to_gradient_accumulation(child_steps):
    (full, full_method), (half, half_method) = child_steps
    for name in full_method.masks:
        torch.testing.assert_close(full_method.fisher[name], half_method.fisher[name], rtol=1e-5, atol=1e-12)
    assert all(torch.equal(full_method.masks[n], half_method.masks[n]) for n in full_method.masks)
    assert_same_gradients(full, half)


def test_reinit_is_invariant_to_gradient_accumulation(tmp_path):
    make = lambda: Reinit(layers=1, seed=1)  # noqa: E731
    full, _ = one_step_gradients(tmp_path / "full", make, 16, 1)
    half, _ = one_step_gradients(tmp_path / "half", make, 8, 2)
    assert_same_gradients(full, half)


def test_a_bounded_fisher_pass_reads_only_its_first_step_batches(tmp_path):
    cfg, model = tiny_parts(tmp_path)
    method = ChildTuningD(reserve_p=0.1, fisher_batches=2)
    method.setup(model, cfg.backbone)
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(1000, 2000, (4, 8), generator=g), "attention_mask": torch.ones(4, 8, dtype=torch.long),
                "labels": torch.randint(0, 2, (4,), generator=g), "idx": torch.arange(4 * i, 4 * i + 4)} for i in range(6)]
    read = []
    # 6 micro-batches, 2 per optimizer step: 3 step-batches, of which the pass reads the first 2
    ctx = MethodContext(model, accumulate_grad_batches=2, train_dataloader=lambda: read.append(1) or batches)
    method.on_fit_start(ctx)
    report = method.report(ctx)
    assert read == [1] and report["fisher_batches_used"] == 2 and report["fisher_batches_available"] == 3
    assert report["kept"] == round(0.1 * report["total"])
    with pytest.raises(ConfigError, match="training batches"):
        method.on_fit_start(MethodContext(model))  # no training data to read


# -- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, fragment", [
    ({"reserve_p": 0.0}, "reserve_p"), ({"reserve_p": 1.5}, "reserve_p"), ({"reserve_p": -0.1}, "reserve_p"),
    ({"fisher_batches": 0}, "fisher_batches"), ({"fisher_clip_norm": 0.0}, "fisher_clip_norm"),
])
def test_child_tuning_rejects_bad_settings(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ChildTuningD(**kwargs)


def test_too_many_reinit_layers_from_the_command_line_is_a_config_error(run_tiny):
    with pytest.raises(ConfigError, match="between 0 and 2"):
        run_tiny("method=reinit", "method.layers=7", "threads=1")
