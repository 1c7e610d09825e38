"""ASP, NxM-ADMM and ADMM-unstructured: hook math on a tiny BERT, checkpoints, accumulation, the exported sparse model
and the similarity plot from tiny runs (tests/test_method_contract.py runs every method end to end)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from ftlab.backbones import load_model
from ftlab.errors import ConfigError
from ftlab.methods.context import MethodContext
from ftlab.methods.sparsity.admm import SUPPORT, U, Z, NxMADMM, UnstructuredADMM
from ftlab.methods.sparsity.asp import MASK, ASP
from ftlab.methods.sparsity.masks import project_nm, target_layers
from ftlab.report.plots import nxm_similarity
from ftlab.tasks.classification.module import ClassificationModule

from conftest import PROJECT_ROOT, compose_config

SIX = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
       "intermediate.dense", "output.dense")


def tiny(**overrides: Any) -> tuple[torch.nn.Module, Any]:
    backbone = compose_config(["backbone=tiny-bert"]).backbone
    return load_model(backbone, num_labels=2, **overrides), backbone


def independent_groups(weight: torch.Tensor, m: int = 4) -> torch.Tensor:
    """Non-zeros per group of m along the input dim, computed without ftlab.methods.sparsity.masks."""
    return (weight != 0).reshape(weight.shape[0], weight.shape[1] // m, m).sum(-1)


# -- ADMM math --------------------------------------------------------------------------------------------------
def test_penalty_gradient_is_rho_times_w_minus_z_plus_u() -> None:
    model, backbone = tiny()
    method = NxMADMM(rho=0.37)
    method.setup(model, backbone)
    method.on_fit_start(MethodContext(model))
    g = torch.Generator().manual_seed(0)
    for layer in method.layers.values():
        getattr(layer, U).copy_(torch.randn(layer.weight.shape, generator=g))
    method.penalty().backward()
    for layer in method.layers.values():
        expected = 0.37 * (layer.weight - getattr(layer, Z) + getattr(layer, U))
        assert torch.allclose(layer.weight.grad, expected, atol=1e-6)
    value = sum(((l.weight - getattr(l, Z) + getattr(l, U)) ** 2).sum() for l in method.layers.values())
    assert float(method.penalty()) == pytest.approx(0.5 * 0.37 * float(value), rel=1e-5)


def test_initial_state_is_projected_w0_and_zero_dual() -> None:
    model, backbone = tiny()
    method = NxMADMM(rho=1e-3)
    method.setup(model, backbone)
    method.on_fit_start(MethodContext(model))
    for layer in method.layers.values():
        assert getattr(layer, Z).dtype == torch.float32
        assert torch.equal(getattr(layer, Z), project_nm(layer.weight.detach()))
        assert not getattr(layer, U).any()


def test_admm_iteration_projects_w_plus_u_updates_the_dual_and_measures_similarity() -> None:
    model, backbone = tiny()
    method = NxMADMM(rho=1e-3)
    method.setup(model, backbone)
    method.on_fit_start(MethodContext(model))
    g = torch.Generator().manual_seed(1)
    before = {}
    with torch.no_grad():
        for name, layer in method.layers.items():
            layer.weight.add_(0.05 * torch.randn(layer.weight.shape, generator=g))  # "some training steps"
            getattr(layer, U).copy_(0.01 * torch.randn(layer.weight.shape, generator=g))
            before[name] = (layer.weight.clone(), getattr(layer, U).clone(), getattr(layer, SUPPORT).clone())
    entry = method.admm_iteration(MethodContext(model), step=7)
    same = kept = 0
    for name, layer in method.layers.items():
        w, u_old, previous = before[name]
        z_expected = project_nm(w + u_old)
        assert torch.allclose(getattr(layer, Z), z_expected)
        assert torch.allclose(getattr(layer, U), u_old + w - z_expected)
        current = z_expected != 0
        same, kept = same + int((current & previous).sum()), kept + int(current.sum())
    assert entry["similarity"] == pytest.approx(same / kept)
    assert entry["step"] == 7 and entry["iteration"] == 1 and 0 < entry["similarity"] < 1


def test_validation_sees_projected_weights_and_training_resumes_on_dense_ones() -> None:
    model, backbone = tiny()
    method = NxMADMM(rho=1e-3)
    method.setup(model, backbone)
    ctx = MethodContext(model)
    method.on_fit_start(ctx)
    dense = {n: l.weight.detach().clone() for n, l in method.layers.items()}
    method.on_validation_start(ctx)
    for name, layer in method.layers.items():
        assert (independent_groups(layer.weight) == 2).all()
        assert torch.equal(layer.weight, project_nm(dense[name]))
    method.on_validation_end(ctx)
    for name, layer in method.layers.items():
        assert torch.equal(layer.weight, dense[name])


def test_unstructured_admm_projects_each_layer_to_half() -> None:
    model, backbone = tiny()
    method = UnstructuredADMM(rho=1e-3)
    method.setup(model, backbone)
    method.on_fit_start(MethodContext(model))
    for layer in method.layers.values():
        assert int((getattr(layer, Z) != 0).sum()) == layer.weight.numel() // 2


# -- checkpoints and isolation ----------------------------------------------------------------------------------
def test_masks_and_admm_state_survive_a_state_dict_round_trip() -> None:
    model_a, backbone = tiny()
    asp_a = ASP()
    asp_a.setup(model_a, backbone)
    asp_a.on_fit_start(MethodContext(model_a))
    state = model_a.state_dict()
    assert sum(k.endswith(MASK) for k in state) == 12

    model_b, _ = tiny()
    asp_b = ASP()
    asp_b.setup(model_b, backbone)
    model_b.load_state_dict(state)
    with torch.no_grad():  # if on_fit_start recomputed masks, it would pick them from these new weights
        for layer in asp_b.layers.values():
            layer.weight.normal_()
    asp_b.on_fit_start(MethodContext(model_b))
    for name, layer in asp_b.layers.items():
        assert torch.equal(getattr(layer, MASK), getattr(asp_a.layers[name], MASK))
        assert not layer.weight[~getattr(layer, MASK)].any()

    nxm_a = NxMADMM(rho=1e-3)
    model_c, _ = tiny()
    nxm_a.setup(model_c, backbone)
    nxm_a.on_fit_start(MethodContext(model_c))
    nxm_a.admm_iteration(MethodContext(model_c), step=1)
    model_d, _ = tiny()
    nxm_b = NxMADMM(rho=1e-3)
    nxm_b.setup(model_d, backbone)
    model_d.load_state_dict(model_c.state_dict())
    nxm_b.on_fit_start(MethodContext(model_d))
    for name, layer in nxm_b.layers.items():
        for key in (Z, U, SUPPORT):
            assert torch.equal(getattr(layer, key), getattr(nxm_a.layers[name], key)), key


def test_two_asp_methods_in_one_process_keep_their_own_masks() -> None:
    (model_a, backbone), (model_b, _) = tiny(), tiny()
    first, second = ASP(), ASP(n=1, m=4)
    first.setup(model_a, backbone)
    second.setup(model_b, backbone)
    first.on_fit_start(MethodContext(model_a))
    second.on_fit_start(MethodContext(model_b))
    for layer in first.layers.values():
        assert (independent_groups(layer.weight) == 2).all()
    for layer in second.layers.values():
        assert (independent_groups(layer.weight) == 1).all()
    assert not hasattr(ASP, "layers") and not hasattr(ASP, MASK)


# -- errors -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,match", [
    (lambda: NxMADMM(rho=0.0), "rho"), (lambda: NxMADMM(rho=-1e-3), "rho"), (lambda: UnstructuredADMM(rho=0), "rho"),
    (lambda: NxMADMM(rho=1e-3, n=3, m=2), "n must be <= m"), (lambda: ASP(n=0), "must be > 0"),
    (lambda: NxMADMM(rho=1e-3, iteration_every=0), "iteration_every"),
    (lambda: UnstructuredADMM(rho=1e-3, density=0), "density"),
])
def test_bad_settings_are_config_errors(make: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def test_m_not_dividing_a_layer_fails_in_a_run_with_the_layer_named(run_tiny: Any) -> None:
    with pytest.raises(ConfigError, match=r"bert\.encoder\.layer\.0\..*not a multiple of m=5"):
        run_tiny("task=rte", "method=asp", "method.n=2", "method.m=5")
    with pytest.raises(ConfigError, match="rho"):
        run_tiny("task=rte", "method=nxm", "method.rho=0")


# -- gradient accumulation --------------------------------------------------------------------------------------
def fixed_batches(batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(5)
    ids, labels = torch.randint(1000, 2000, (16, 12), generator=g), torch.randint(0, 2, (16,), generator=g)
    batches = [
        {"input_ids": ids[i:i + batch_size], "attention_mask": torch.ones_like(ids[i:i + batch_size]),
         "labels": labels[i:i + batch_size], "idx": torch.arange(i, i + batch_size)}
        for i in range(0, 16, batch_size)
    ]
    return DataLoader(batches, batch_size=None, shuffle=False)


def train_weights(method: Any, batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model, backbone = tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    method.setup(model, backbone)
    optim = OmegaConf.create({"lr": 1e-2, "weight_decay": 0.01, "warmup_ratio": 0.0, "warmup_steps": 0,
                              "betas": [0.9, 0.999], "eps": 1e-8})
    task = OmegaConf.create({"eval_splits": [], "kind": "classification", "metrics": ["accuracy"]})
    module = ClassificationModule(model, method, task, optim)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, accumulate_grad_batches=accumulate, precision="32-true",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=fixed_batches(batch_size))
    assert trainer.global_step == 4
    return {n: l.weight.detach().clone() for n, l in target_layers(model, backbone).items()}


@pytest.mark.parametrize("make", [lambda: ASP(), lambda: NxMADMM(rho=0.5, iteration_every=1)], ids=["asp", "nxm"])
def test_accumulating_two_micro_batches_equals_one_full_batch(make: Any) -> None:
    plain = train_weights(make(), batch_size=8, accumulate=1)
    accumulated = train_weights(make(), batch_size=4, accumulate=2)
    for name, weight in plain.items():
        assert (independent_groups(weight) <= 2).all()
        assert torch.allclose(weight, accumulated[name], atol=1e-5), name


# -- end to end on real rows -------------------------------------------------------------------------------------
def saved_targets(record: dict[str, Any]) -> dict[str, torch.Tensor]:
    state = load_file(str(Path(record["method_report"]["saved_model"]) / "model.safetensors"))
    assert not any(k.endswith((MASK, Z, U, SUPPORT)) for k in state), "method buffers stay out of the export"
    return {k: v for k, v in state.items() if k.endswith(".weight") and any(f".{s}." in k for s in SIX)}


def assert_exactly_2_of_4(record: dict[str, Any]) -> None:
    """Independently of the verifier: every exported target weight has exactly 2 non-zeros per group of 4."""
    assert record["status"] == "completed"
    targets = saved_targets(record)
    assert len(targets) == 12
    for name, weight in targets.items():
        assert (independent_groups(weight) == 2).all(), name  # random init has no exact zeros: exactly 2 kept
    report = record["method_report"]
    assert report["pattern"] == "2:4" and report["pattern_compliance"] == 1.0 and report["target_density"] == 0.5
    assert all(layer["pattern_compliance"] == 1.0 for layer in report["layers"].values())
    assert report["model_nonzero"] == record["parameters"]["nonzero"]


def test_export_checker_script_passes_an_asp_export_and_fails_a_broken_one(run_tiny: Any, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    spec = importlib.util.spec_from_file_location("verify", PROJECT_ROOT / "scripts" / "verify_nm_export.py")
    verify = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verify)
    record = run_tiny("task=rte", "method=asp", "method.save_model=true")
    assert_exactly_2_of_4(record)
    assert record["method_report"]["initial_prune_relative_change_mean"] > 0
    assert verify.main([str(tmp_path / "records")]) == 0
    export = Path(record["method_report"]["saved_model"]) / "model.safetensors"
    state = load_file(str(export))
    name = next(k for k in state if k.endswith("intermediate.dense.weight"))
    state[name][0, :4] = 1.0  # one group of 4 with 4 non-zeros
    save_file(state, str(export))
    assert verify.main([str(tmp_path / "records")]) == 1


def test_tiny_nxm_runs_end_exactly_2_of_4_and_feed_the_similarity_plot(run_tiny: Any, tmp_path: Path) -> None:
    every_step = run_tiny("task=rte", "method=nxm", "method.rho=1e-3", "method.iteration_every=1",
                          "method.save_model=true")
    assert_exactly_2_of_4(every_step)
    admm = every_step["method_report"]["admm"]
    assert len(admm["iterations"]) == every_step["cost"]["optimizer_steps"] == 3
    assert [i["step"] for i in admm["iterations"]] == [1, 2, 3]
    assert all(0 <= i["similarity"] <= 1 for i in admm["iterations"]) and admm["mean_similarity"] is not None

    retrained = run_tiny("task=rte", "method=nxm", "method.rho=3e-2", "train.epochs=2",
                         "method.masked_retrain_epochs=1", "method.save_model=true")
    assert_exactly_2_of_4(retrained)
    assert len(retrained["method_report"]["admm"]["iterations"]) == 1  # ADMM in epoch 0 only, masked in epoch 1

    points = nxm_similarity.collect(tmp_path / "records")
    assert sorted(p["rho"] for p in points) == [1e-3, 3e-2]
    written = nxm_similarity.plot(points, tmp_path / "plots")
    assert [p.name for p in written] == ["nxm_similarity_rte.png"] and written[0].stat().st_size > 0


# -- experiment grids -------------------------------------------------------------------------------------------
def test_paper_grid_points_resolve_per_method_and_task_and_repeat_points_share_one_run() -> None:
    from ftlab.config import identity_config
    from ftlab.records import record_name

    def point(*overrides: str) -> tuple[Any, str]:
        cfg = compose_config(["experiment=nxm_table1", *overrides])
        return cfg, record_name(identity_config(cfg))

    cfg, _ = point("method=nxm", "task=rte", "grid.lr_index=3", "grid.rho_index=2", "grid.batch_size_index=1")
    assert (cfg.optim.lr, cfg.method.rho, cfg.train.batch_size, cfg.train.epochs) == (1e-4, 1e-2, 32, 10)
    cfg, _ = point("method=asp", "task=sst2", "grid.lr_index=4")
    assert (cfg.optim.lr, cfg.train.epochs, "rho" in cfg.method) == (9e-5, 5, False)
    # MNLI's NxM lr list has 3 entries: index 4 falls back to index 0, the same run
    assert point("method=nxm", "task=mnli", "grid.lr_index=4")[1] == point("method=nxm", "task=mnli")[1]
    # rho does not exist for dense fine-tuning: its index changes nothing
    assert point("method=finetune", "task=rte", "grid.rho_index=2")[1] == point("method=finetune", "task=rte")[1]
    assert point("method=nxm", "task=rte", "grid.rho_index=2")[1] != point("method=nxm", "task=rte")[1]
    assert compose_config(["method=nxm"]).method.rho == 3e-3  # a plain run: the method's default


def test_admm_iterations_spread_a_count_of_iterations_evenly_and_the_end_prunes_each_layer_to_half() -> None:
    """The paper's schedule is ~10 iterations whatever the task size: `admm_iterations` sets the count, not the period."""
    model, backbone = tiny()
    method = UnstructuredADMM(rho=3e-3, admm_iterations=4)
    method.setup(model, backbone)
    ctx = MethodContext(model, total_steps=18, max_epochs=3, steps_per_epoch=6)  # 18 steps: every 4 steps
    method.on_fit_start(ctx)
    assert method.iteration_every == 4
    for epoch in range(3):
        ctx.epoch = epoch
        for _ in range(6):
            method.on_after_optimizer_step(ctx)
            ctx.global_step += 1
        method.on_train_epoch_end(ctx, epoch)
    assert [i["step"] for i in method.iterations] == [4, 8, 12, 16]
    assert [i["epoch"] for i in method.iterations] == [0, 1, 1, 2]
    method.on_fit_end(ctx)
    for name, layer in method.layers.items():
        assert int((layer.weight != 0).sum()) == layer.weight.numel() // 2, name
    report = method.report(ctx)
    assert report["pattern"].startswith("unstructured 50%") and report["pattern_compliance"] == 1.0
    assert report["admm"]["iteration_every"] == 4 and len(report["admm"]["iterations"]) == 4
