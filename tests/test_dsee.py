"""DSEE: GreBsmo's Omega, the sparse residual, exact global pruning, head removal, merging, FLOPs, the phase switch
(tests/test_method_contract.py runs its configurations end to end)."""
from __future__ import annotations

import copy

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import BertConfig, BertForSequenceClassification

from ftlab.backbones import load_model
from ftlab.config import CONF_DIR
from ftlab.errors import ConfigError
from ftlab.methods.adapters import LoRALayer, add_lora, lora_layers, merge_lora
from ftlab.methods.context import MethodContext
from ftlab.methods.lora.dsee import DSEE
from ftlab.methods.lora.efficiency import block_linear_macs
from ftlab.methods.lora.grebsmo import grebsmo, omega_indices
from ftlab.methods.lora.head_pruning import remove_heads
from conftest import compose_config


@pytest.fixture
def backbone():
    return compose_config(["backbone=tiny-bert"]).backbone


@pytest.fixture
def tiny_bert(backbone):
    torch.manual_seed(0)
    return load_model(backbone, num_labels=2).eval()


def randomise_adapters(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero B and S with a random Omega, as after some training."""
    g = torch.Generator().manual_seed(seed)
    for layer in lora_layers(model):
        n = layer.num_sparse
        flat = torch.randperm(layer.out_features * layer.in_features, generator=g)[:n]
        layer.set_omega(flat // layer.in_features, flat % layer.in_features)
        with torch.no_grad():
            layer.lora_B.normal_(0, 0.1, generator=g)
            layer.sparse_values.normal_(0, 0.5, generator=g)


def ids() -> torch.Tensor:
    return torch.randint(0, 1000, (2, 11), generator=torch.Generator().manual_seed(1))


# -- Omega ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_grebsmo_recovers_planted_low_rank_plus_sparse(seed):
    g = torch.Generator().manual_seed(seed)
    low_rank = torch.randn(48, 3, generator=g) @ torch.randn(3, 64, generator=g) / 3 ** 0.5
    support = torch.randperm(48 * 64, generator=g)[:16]
    sparse = torch.zeros(48 * 64)
    sparse[support] = (torch.rand(16, generator=g) + 2) * torch.randn(16, generator=g).sign()
    W = low_rank + sparse.view(48, 64)
    # official inner loop (2 rounds, rank step 5), rank capped at the planted rank, lambda above the noise
    result = grebsmo(W, lam=0.5, max_rank=3, outer_iters=30, generator=torch.Generator().manual_seed(0))
    assert result.rank == 3
    assert (result.U @ result.V - low_rank).norm() / low_rank.norm() < 0.05
    rows, cols = omega_indices(W, 16, "grebsmo", torch.Generator().manual_seed(0), lam=0.5, max_rank=3, outer_iters=30)
    assert set((rows * 64 + cols).tolist()) == set(support.tolist())


def test_omega_has_exactly_c_positions_even_on_ties():
    rows, cols = omega_indices(torch.ones(8, 8), 5, "magnitude")
    assert rows.numel() == cols.numel() == 5 and len(set(zip(rows.tolist(), cols.tolist()))) == 5
    with pytest.raises(ConfigError, match="larger than the 8 x 8"):
        omega_indices(torch.ones(8, 8), 65, "random")


def test_sparse_residual_equals_dense_masked_matrix_and_trains_only_omega():
    torch.manual_seed(0)
    layer = LoRALayer(torch.nn.Linear(8, 6), r=2, alpha=4, num_sparse=5, init="gaussian")
    rows, cols = torch.tensor([0, 2, 2, 5, 5]), torch.tensor([1, 0, 7, 3, 4])
    layer.set_omega(rows, cols)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.sparse_values.copy_(torch.tensor([0.5, -1.0, 2.0, 0.3, -0.7]))
    # reference: a dense S behind a 0/1 mask on Omega, the official parameterisation
    S = torch.zeros(6, 8, requires_grad=True)
    mask = torch.zeros(6, 8)
    mask[rows, cols] = 1
    with torch.no_grad():
        S[rows, cols] = layer.sparse_values
    x = torch.randn(3, 4, 8)
    W = layer.base.weight + layer.scaling * (layer.lora_B @ layer.lora_A + S * mask)
    reference = x @ W.T + layer.base.bias
    out = layer(x)
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=1e-6)
    target = torch.randn_like(out)
    ((out - target) ** 2).sum().backward()
    ((reference - target) ** 2).sum().backward()
    torch.testing.assert_close(layer.sparse_values.grad, S.grad[rows, cols])
    assert S.grad[mask == 0].abs().max() == 0  # the dense route has no update outside Omega either
    torch.testing.assert_close(layer.sparse_delta(), (S * mask).detach())


# -- parameter counts -------------------------------------------------------------------------------------------------
def test_parameter_counts_match_hand_count(tiny_bert, backbone):
    method = DSEE(r=4, num_sparse=16, prune="none")
    method.setup(tiny_bert, backbone)
    # 2 layers x (q, v) x [r (32 + 32) + |Omega|] + classifier (32 * 2 + 2)
    assert sum(p.numel() for p in tiny_bert.parameters() if p.requires_grad) == 2 * 2 * (4 * 64 + 16) + 66


# -- unstructured pruning ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("density", [0.8, 0.5])
def test_unstructured_pruning_hits_density_exactly_per_global_group(tiny_bert, backbone, density):
    method = DSEE(r=4, num_sparse=8, density=density)
    method.setup(tiny_bert, backbone)
    randomise_adapters(tiny_bert)
    deltas = {id(l): l.delta_weight().abs() for l in lora_layers(tiny_bert)}
    facts = method.prune_unstructured(tiny_bert)
    adapted = [l for l in lora_layers(tiny_bert)]
    others = [m for n, m in tiny_bert.named_modules()
              if isinstance(m, torch.nn.Linear) and hasattr(m, "weight_mask") and not any(m is l.base for l in adapted)]
    assert len(others) == 2 * 4 + 1  # k, attn_out, ffn1, ffn2 per layer + the pooler
    for group in ([l.base for l in adapted], others):
        total = sum(m.weight.numel() for m in group)
        kept = sum(int(m.weight_mask.sum()) for m in group)
        assert kept == round(density * total)
        assert all(torch.equal(m.weight == 0, m.weight_mask == 0) for m in group)
    # global ranking by |dW|: every kept adapted entry scores at least every pruned one, across layers
    kept_scores = torch.cat([deltas[id(l)][l.base.weight_mask.bool()] for l in adapted])
    pruned_scores = torch.cat([deltas[id(l)][~l.base.weight_mask.bool()] for l in adapted])
    assert kept_scores.min() >= pruned_scores.max()
    assert facts["prunable_density"] == pytest.approx(density, abs=1e-3)


def test_merge_keeps_pruned_weights_zero(tiny_bert, backbone):
    method = DSEE(r=4, num_sparse=8, density=0.5)
    method.setup(tiny_bert, backbone)
    randomise_adapters(tiny_bert)
    method.prune_unstructured(tiny_bert)
    masks = {n: l.base.weight_mask.clone() for n, l in tiny_bert.named_modules() if isinstance(l, LoRALayer)}
    merge_lora(tiny_bert)
    for name, mask in masks.items():
        weight = tiny_bert.get_submodule(name).weight
        assert weight[mask == 0].abs().max() == 0 and (weight[mask == 1] != 0).all()


# -- structured pruning -----------------------------------------------------------------------------------------------
def test_head_removal_equals_head_masked_model(tiny_bert, backbone):
    add_lora(tiny_bert, backbone, ["q", "v"], r=4, alpha=8, num_sparse=24, init="gaussian")
    randomise_adapters(tiny_bert)
    removed = {0: [1, 3], 1: [0]}
    masked = copy.deepcopy(tiny_bert)
    for layer, heads in removed.items():  # masking a head = zeroing its columns of the attention-output projection
        dense = masked.bert.encoder.layer[layer].attention.output.dense
        with torch.no_grad():
            for h in heads:
                dense.weight[:, h * 8:(h + 1) * 8] = 0
    query = tiny_bert.bert.encoder.layer[0].attention.self.query
    kept_before = int(((query.sparse_rows // 8 != 1) & (query.sparse_rows // 8 != 3)).sum())
    remove_heads(tiny_bert, backbone, removed)
    attention = tiny_bert.bert.encoder.layer[0].attention
    assert attention.self.query.base.weight.shape == (16, 32) and attention.self.key.weight.shape == (16, 32)
    assert attention.self.value.lora_B.shape == (16, 4) and attention.self.query.lora_A.shape == (4, 32)
    assert attention.output.dense.weight.shape == (32, 16)
    assert attention.self.query.num_sparse == kept_before and int(attention.self.query.sparse_rows.max()) < 16
    assert tiny_bert.bert.encoder.layer[1].attention.self.value.base.weight.shape == (24, 32)
    torch.testing.assert_close(tiny_bert(input_ids=ids()).logits, masked(input_ids=ids()).logits, atol=1e-5, rtol=1e-5)


def test_flops_ratio_reproduces_paper_table6_on_bert_base_geometry():
    """BERT-base (on the meta device: shapes only), r = 16 on q and v; paper: LoRA 1.01x, 3/6/9 heads 0.92/0.84/0.75x."""
    backbone = compose_config(["backbone=bert-base-uncased"]).backbone
    ratios = []
    for heads in (0, 3, 6, 9):
        with torch.device("meta"):
            model = BertForSequenceClassification(BertConfig())
        dense = block_linear_macs(model, backbone)
        add_lora(model, backbone, ["q", "v"], r=16, alpha=32)  # |Omega| = 16 would add 16 MACs of ~7M per layer
        remove_heads(model, backbone, {i: list(range(heads)) for i in range(12)})
        ratios.append(round(block_linear_macs(model, backbone) / dense, 2))
    assert ratios == [1.01, 0.92, 0.84, 0.75]


# -- bad input --------------------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_problem(tiny_bert, backbone):
    for kwargs, message in [
        ({"density": 0.0}, r"density=0.0 must be in \(0, 1\]"),
        ({"density": 1.5}, r"density=1.5 must be in \(0, 1\]"),
        ({"prune": "heads"}, "prune='heads' is not valid"),
        ({"criterion": "fisher"}, "criterion='fisher' is not valid"),
        ({"prune": "structured", "heads": 0}, "heads=0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            DSEE(**kwargs)
    for kwargs, message in [
        ({"r": 33}, r"rank r=33 exceeds .* 32 x 32"),
        ({"num_sparse": 32 * 32 + 1}, r"num_sparse=1025 \(\|Omega\|\) exceeds the 32 x 32 = 1024 entries"),
        ({"roles": ["q", "o"]}, r"unknown role\(s\) \['o'\].*defines \['q', 'k', 'v', 'attn_out', 'ffn1', 'ffn2'\]"),
        ({"prune": "structured", "heads": 4}, "heads=4 removed per layer but the model has 4 heads"),
    ]:
        with pytest.raises(ConfigError, match=message):
            DSEE(**kwargs).setup(copy.deepcopy(tiny_bert), backbone)


def test_phase_schedules_and_too_few_epochs_for_recovery(tiny_bert):
    ctx = MethodContext(tiny_bert, max_epochs=5, steps_per_epoch=4)  # e.g. 7 batches, 2 accumulated per step
    method = DSEE(phase1_epochs=2)
    assert method.schedule_steps(ctx, 20) == 8  # 2 epochs x 4 steps
    method.phase = 2
    assert method.schedule_steps(ctx, 12) == 12  # recovery: every step left
    with pytest.raises(ConfigError, match="train.epochs=2 leaves none for recovery"):
        DSEE(phase1_epochs=2).schedule_steps(MethodContext(tiny_bert, max_epochs=2), 10)


# -- experiments ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("experiment", ["dsee_cpu", "dsee_table1", "dsee_table3", "dsee_table6", "dsee_table7",
                                        "dsee_table9", "dsee_table12"])
def test_experiment_variants_compose_into_valid_methods(experiment):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        sweep = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    # a variant is `variant` (the paper tables) or `grid.variant` (dsee_cpu: grid is not run-deciding)
    key = "grid.variant" if OmegaConf.select(sweep, "grid.variants") else "variant"
    declared = OmegaConf.select(sweep, "grid.variants") or sweep.get("variants")
    variants = list(declared or [None])
    tasks = str(sweep.hydra.sweeper.params.task).split(",")
    if declared and key == "variant":  # every declared variant is swept (dsee_cpu sweeps its priority-1 rows)
        assert set(variants) == set(str(sweep.hydra.sweeper.params.variant).split(","))
    for variant in variants:
        overrides = [f"experiment={experiment}", f"task={tasks[0]}", "method=dsee"] + \
            ([f"{key}={variant}"] if variant else [])
        cfg = compose_config(overrides)
        spec = OmegaConf.to_container(cfg.method, resolve=True)
        spec.pop("name")
        method = instantiate(spec)
        assert isinstance(method, DSEE) and cfg.task.selection.metric in cfg.task.metrics
        if method.prune != "none":
            assert cfg.train.epochs > method.phase1_epochs


def test_switch_restores_best_phase1_adapters_and_rebuilds_the_optimizer(tiny_bert, backbone):
    method = DSEE(r=4, num_sparse=4, density=0.5, omega="random")
    method.setup(tiny_bert, backbone)
    restarts = []
    ctx = MethodContext(tiny_bert, selection=("dev", "accuracy"), global_step=7,
                        restart_schedule=lambda: restarts.append(ctx.global_step))
    history = ctx.history  # the training module's own list
    B = tiny_bert.bert.encoder.layer[0].attention.self.query.lora_B
    for score, value in ((60.0, 1.0), (50.0, 2.0)):  # epoch 0 is the best; epoch 1 moves B further
        with torch.no_grad():
            B.fill_(value)
        ctx.history.append({"epoch": len(ctx.history), "step": 0, "metrics": {"dev": {"accuracy": score}}})
        method.on_validation_end(ctx)
    method.on_train_epoch_end(ctx, 4)  # phase1_epochs = 5: epoch index 4 ends phase 1
    assert restarts == [7] and method.phase == 2 and history == [] and method.facts["switch_step"] == 7
    assert [h["metrics"]["dev"]["accuracy"] for h in method.phase1_history] == [60.0, 50.0]
    assert torch.all(B == 1.0)  # pruning started from the best phase-1 adapters
    assert method.report(ctx)["phase1"]["best"]["epoch"] == 0
