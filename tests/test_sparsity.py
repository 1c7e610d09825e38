"""Math of the n:m and unstructured projections, the target-layer lookup and the compliance report."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from ftlab.backbones import load_model
from ftlab.errors import ConfigError
from ftlab.methods.sparsity.masks import (
    check_divisible, layer_mask, nm_compliance, nm_mask, project_nm, project_unstructured, sparsity_report,
    target_layers, unstructured_mask, verify_nm,
)

from conftest import compose_config

NM = [(2, 4), (1, 4), (4, 8), (1, 2), (3, 4)]


def random_weights(seed: int, with_ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows, groups = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
    if with_ties:  # few distinct magnitudes (and signs, and zeros): many equal |w| inside a group
        return torch.randint(-2, 3, (rows, groups * 8), generator=g).float()
    return torch.randn(rows, groups * 8, generator=g)


@pytest.mark.parametrize("n,m", NM)
@pytest.mark.parametrize("with_ties", [False, True])
def test_projection_keeps_exactly_the_top_n_magnitudes_of_each_group(n: int, m: int, with_ties: bool) -> None:
    for seed in range(40):
        w = random_weights(seed, with_ties)
        mask = nm_mask(w, n, m)
        groups_w, groups_mask = w.abs().reshape(w.shape[0], -1, m), mask.reshape(w.shape[0], -1, m)
        assert (groups_mask.sum(-1) == n).all(), "exactly n kept per group, ties included"
        kept = torch.where(groups_mask, groups_w, torch.full_like(groups_w, float("inf"))).amin(-1)
        dropped = torch.where(groups_mask, torch.full_like(groups_w, -1.0), groups_w).amax(-1)
        assert (kept >= dropped).all(), "no dropped magnitude exceeds a kept one"
        # the kept magnitudes are the top-n multiset of the group, whatever the tie-break
        top = groups_w.sort(-1, descending=True).values[..., :n].sum(-1)
        assert torch.allclose((groups_w * groups_mask).sum(-1), top)
        projected = project_nm(w, n, m)
        assert torch.equal(projected, w * mask)
        assert nm_compliance(projected, n, m) == 1.0


def test_ties_are_deterministic_and_keep_the_lower_index() -> None:
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    assert nm_mask(w, 2, 4).tolist() == [[True, True, False, False, True, True, False, False]]


@pytest.mark.parametrize("n,m", NM)
def test_projection_is_idempotent(n: int, m: int) -> None:
    for seed in range(10):
        w = random_weights(seed, with_ties=seed % 2 == 1)
        once = project_nm(w, n, m)
        assert torch.equal(project_nm(once, n, m), once)
    w = torch.randn(7, 40)
    once = project_unstructured(w, 0.3)
    assert torch.equal(project_unstructured(once, 0.3), once)


def test_projection_is_the_euclidean_nearest_nm_matrix() -> None:
    """Brute force over every support with at most 2 non-zeros in each group of 4 of a 2x8 matrix (11^4 supports)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2, 8, generator=g)
    per_group = [torch.tensor(p, dtype=torch.bool) for r in range(3) for p in _patterns(4, r)]
    assert len(per_group) == 11
    best = min(
        float(((w - w * torch.cat(choice).reshape(2, 8)) ** 2).sum())
        for choice in itertools.product(per_group, repeat=4)
    )
    assert float(((w - project_nm(w, 2, 4)) ** 2).sum()) == pytest.approx(best, abs=1e-6)


def _patterns(m: int, ones: int) -> list[list[bool]]:
    return [[i in chosen for i in range(m)] for chosen in itertools.combinations(range(m), ones)]


def test_unstructured_keeps_the_largest_fraction_per_layer() -> None:
    w = torch.randn(16, 24)
    mask = unstructured_mask(w, 0.5)
    assert int(mask.sum()) == 16 * 24 // 2
    assert w.abs()[mask].min() >= w.abs()[~mask].max()
    assert int(unstructured_mask(w, 1.0).sum()) == w.numel()


@pytest.mark.parametrize("n,m,match", [(3, 2, "n must be <= m"), (0, 4, "must be > 0"), (-1, 4, "must be > 0"),
                                       (2, 0, "positive group size")])
def test_bad_n_m_are_config_errors(n: int, m: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        nm_mask(torch.randn(4, 8), n, m)


def test_bad_density_is_a_config_error() -> None:
    for density in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="density"):
            project_unstructured(torch.randn(4, 8), density)


def tiny_model() -> tuple[nn.Module, object]:
    backbone = compose_config(["backbone=tiny-bert"]).backbone
    return load_model(backbone, num_labels=2), backbone


def test_targets_are_the_six_block_linears_and_the_pooler_only_on_request() -> None:
    model, backbone = tiny_model()
    layers = target_layers(model, backbone)
    assert len(layers) == 2 * 6
    assert not any("embeddings" in n or "classifier" in n or "pooler" in n for n in layers)
    with_pooler = target_layers(model, backbone, include_pooler=True)
    assert set(with_pooler) - set(layers) == {"bert.pooler.dense"}


def test_m_not_dividing_the_input_dim_names_the_layer_and_the_fix() -> None:
    model, backbone = tiny_model()  # hidden 32, intermediate 64
    message = r"layer bert\.encoder\.layer\.0\..* input dim 32, not a multiple of m=5.*method\.m"
    with pytest.raises(ConfigError, match=message):
        check_divisible(target_layers(model, backbone), 5)


def test_verify_nm_reports_per_layer_compliance_density_and_nonzeros() -> None:
    model, backbone = tiny_model()
    dense = verify_nm(model, backbone)
    assert dense["pattern_compliance"] == 0.0 and not dense["all_layers_compliant"]
    layers = target_layers(model, backbone)
    with torch.no_grad():
        for layer in layers.values():
            layer.weight.copy_(project_nm(layer.weight))
    report = verify_nm(model, backbone)
    assert report["pattern_compliance"] == 1.0 and report["all_layers_compliant"]
    assert report["target_density"] == 0.5
    assert report["target_nonzero"] == sum(layer.weight.numel() for layer in layers.values()) // 2
    assert all(v["density"] == 0.5 and v["pattern_compliance"] == 1.0 for v in report["layers"].values())
    assert report["model_nonzero"] == sum(int((p != 0).sum()) for p in model.parameters())


def test_conv1d_layers_are_grouped_along_their_input_dim() -> None:
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(nf=6, nx=8)  # weight stored (in=8, out=6)
    torch.nn.init.normal_(conv.weight)
    linear = nn.Linear(8, 6)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.t())
    report = sparsity_report({"conv": conv, "linear": linear})
    assert report["layers"]["conv"]["shape"] == [6, 8]
    conv_mask = layer_mask(conv, nm_mask)
    assert conv_mask.shape == conv.weight.shape
    assert torch.equal(conv_mask.t(), layer_mask(linear, nm_mask))
    with torch.no_grad():
        conv.weight.mul_(conv_mask)
    assert sparsity_report({"conv": conv})["pattern_compliance"] == 1.0
