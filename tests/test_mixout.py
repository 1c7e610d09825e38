"""Mixout: unbiased mixing with per-column masks, the official gradient convention, targets saved, dropout zeroed."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config
from torch import nn

from ftlab.backbones import load_model
from ftlab.errors import ConfigError
from ftlab.methods.stability.mixout import Mixout, MixoutLinear


def mixed_layer(p: float, seed: int = 0) -> tuple[MixoutLinear, torch.Tensor]:
    """A MixoutLinear(16 -> 8) whose weight W has moved away from its target T; returns (layer, T)."""
    torch.manual_seed(seed)
    layer = MixoutLinear.wrap(nn.Linear(16, 8), p)
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight))
    return layer.train(), layer.mixout_target.clone()


def effective_weight(layer: nn.Linear) -> torch.Tensor:
    """The weight the layer used in one forward, read back through an identity input: y = I·W̃ᵀ + b."""
    with torch.no_grad():
        return (layer(torch.eye(layer.in_features)) - layer.bias).t()


def tiny_bert() -> tuple[nn.Module, object]:
    cfg = compose_config(["backbone=tiny-bert"])
    torch.manual_seed(0)
    return load_model(cfg.backbone, num_labels=2), cfg.backbone


def test_expected_mixed_weight_is_the_current_weight():
    p, draws = 0.6, 3000
    layer, target = mixed_layer(p)
    mean = torch.stack([effective_weight(layer) for _ in range(draws)]).mean(0)
    # W̃ = T + c (W − T) with c = m/(1−p), Var(c) = p/(1−p): the mean of `draws` samples has this standard deviation
    std = (layer.weight - target).abs().detach() * (p / (1 - p) / draws) ** 0.5
    assert torch.all((mean - layer.weight).abs() <= 5 * std + 1e-5)
    assert not torch.allclose(mean, target, atol=1e-2)  # the test can fail: the mean is not the target


def test_mask_is_per_input_column_with_rate_p():
    p = 0.5
    layer, target = mixed_layer(p)
    kept_columns = []
    for _ in range(400):
        w = effective_weight(layer)
        as_target = torch.isclose(w, target, atol=1e-6).all(0)
        as_kept = torch.isclose(w, (layer.weight - p * target) / (1 - p), atol=1e-5).all(0)
        assert torch.all(as_target ^ as_kept), "every column is wholly the target or wholly kept"
        kept_columns.append(as_kept.float())
    rate = torch.stack(kept_columns).mean()
    assert abs(rate.item() - (1 - p)) < 4 * (p * (1 - p) / (400 * 16)) ** 0.5


def test_p_zero_is_the_identity_and_eval_uses_w():
    layer, _ = mixed_layer(0.0)
    x = torch.randn(5, 16)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer, _ = mixed_layer(0.7)
    layer.eval()
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_gradient_is_masked_without_the_inverse_keep_factor():
    p = 0.5
    layer, target = mixed_layer(p, seed=3)
    x, upstream = torch.randn(6, 16), torch.randn(6, 8)
    torch.manual_seed(11)
    (layer(x) * upstream).sum().backward()
    torch.manual_seed(11)   # the same draw again, to read which columns were kept
    kept = ~torch.isclose(effective_weight(layer), target, atol=1e-6).all(0)
    assert 0 < kept.sum() < 16
    grad_wrt_mixed = upstream.t() @ x              # ∂L/∂W̃ for y = x W̃ᵀ
    torch.testing.assert_close(layer.weight.grad, grad_wrt_mixed * kept)   # no 1/(1−p)
    torch.testing.assert_close(layer.bias.grad, upstream.sum(0))


def test_setup_wraps_every_linear_keeps_targets_in_state_dict_and_zeroes_dropout():
    model, backbone = tiny_bert()
    params_before = sum(p.numel() for p in model.parameters())
    classifier_init = model.classifier.weight.detach().clone()
    pretrained_query = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    method = Mixout(p=0.3)
    method.setup(model, backbone)
    assert len(method.wrapped) == 2 * 6 + 2   # six block linears x 2 blocks, pooler, classifier
    assert sum(p.numel() for p in model.parameters()) == params_before, "mixout adds buffers, not parameters"
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    state = model.state_dict()
    torch.testing.assert_close(state["classifier.mixout_target"], classifier_init)
    torch.testing.assert_close(state["bert.encoder.layer.0.attention.self.query.mixout_target"], pretrained_query)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    assert torch.equal(model.classifier.mixout_target, classifier_init)   # the target does not follow W
    fresh, _ = tiny_bert()
    Mixout(p=0.3).setup(fresh, backbone)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.classifier.mixout_target, classifier_init)


def test_roles_select_a_subset():
    model, backbone = tiny_bert()
    method = Mixout(p=0.2, layers=["q", "v", "head"])
    method.setup(model, backbone)
    assert sorted(method.wrapped) == sorted([
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value", "classifier",
    ])


@pytest.mark.parametrize("kwargs", [{"p": 1.0}, {"p": -0.1}, {"layers": "every"}, {"layers": ["q", "gate"]}])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        Mixout(**kwargs)
