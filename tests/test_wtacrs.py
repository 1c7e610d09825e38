"""WTA-CRS: the estimator is unbiased and beats plain CRS under Theorem 2's condition, the exact parts are exact, the
‖∇Z‖ cache is written where it should be, bad input is refused, and tiny BERT / T5 steps report their memory figures
(tests/test_method_contract.py runs both variants end to end)."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from ftlab.backbones import block_linears, load_model
from ftlab.errors import ConfigError
from ftlab.methods.context import MethodContext
from ftlab.methods.wtacrs.cache import NormCache
from ftlab.methods.wtacrs.method import LoRAWTACRS, WTACRS
from ftlab.methods.wtacrs.ops import RowSampler, WTACRSLinear, sampled_linear
from ftlab.methods.wtacrs.sampling import budget_rows, deterministic_count, plan_rows, row_probabilities
from ftlab.telemetry.saved_tensors import SavedTensorMeter

from conftest import compose_config


pytestmark = pytest.mark.usefixtures("one_thread")  # thousands of tiny ops: a second thread only synchronises


def concentrated_problem(n: int = 40, d_in: int = 6, d_out: int = 5, seed: int = 0):
    """X (n, d_in) and ∇Z (n, d_out) whose row norms are very uneven, as in fine-tuning (WTA-CRS App. E, Fig. 10-12)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    dz = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    x[:4] *= 8.0
    dz[:3] *= 10.0
    return x, dz


def outer_products(x: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    return dz[:, :, None] * x[:, None, :]  # F_i = ∇Z_iᵀ X_i, (n, d_out, d_in)


def analytic_variance(F: torch.Tensor, p: torch.Tensor, k: int, c: int) -> float:
    """E‖ĝ − g‖²_F of WTA-CRS with the top-c rows deterministic and m = k − c draws on the rest (c = 0: plain CRS)."""
    order = torch.argsort(p, descending=True)
    rest = order[c:]
    r = p[rest].sum()
    q = p[rest] / r
    Fr = F[rest]
    second = (Fr.pow(2).sum((1, 2)) / q).sum()
    return float((second - Fr.sum(0).pow(2).sum()) / (k - c))


# -- the estimator ----------------------------------------------------------------------------------------------------
def test_weight_gradient_is_unbiased_with_variance_derived_tolerance() -> None:
    """Mean of T layer gradients -> exact ∇W: ‖mean − g‖² must be of the order Var/T (and a biased variant is not)."""
    torch.manual_seed(0)
    x, dz = concentrated_problem()
    n, k, trials = x.shape[0], 12, 2000
    linear = nn.Linear(6, 5, dtype=torch.float64)
    # a stale cache that says 0 for some rows whose gradient is not 0 now: the floor keeps the estimate unbiased
    cache = NormCache(max_positions=n, max_bytes=2**20)
    layer = WTACRSLinear(linear, RowSampler(k / n, min_k=1, floor=0.05, cache=cache, cache_key="layer"))
    stale = dz.norm(dim=1) * torch.linspace(0.2, 2.0, n, dtype=torch.float64)
    stale[10:20] = 0.0
    cache.begin_batch(torch.tensor([0]))
    cache.slots((1, n))
    cache.write("layer", torch.arange(n), stale)
    exact = dz.t() @ x
    total = torch.zeros_like(exact)
    for _ in range(trials):
        cache.begin_batch(torch.tensor([0]))
        cache.tables["layer"].view(-1)[:n] = stale.to(torch.bfloat16)  # keep the same p in every trial
        linear.weight.grad = None
        layer(x[None]).backward(dz[None])
        total += linear.weight.grad
    mean = total / trials
    known = torch.ones(n, dtype=torch.bool)
    p = row_probabilities(x.norm(dim=1), stale.to(torch.bfloat16).float(), known, 0.05).double()
    variance = analytic_variance(outer_products(x, dz), p, k, deterministic_count(p, k))
    error = float((mean - exact).pow(2).sum())
    assert error < 4 * variance / trials, (error, variance / trials)

    # the official code's first-epoch branch (no 1/(m p_j) re-weighting) is detectably biased by the same test
    biased = torch.zeros_like(exact)
    q = p / p.sum()
    for _ in range(trials):
        draws = torch.multinomial(q, k, replacement=True)
        biased += dz[draws].t() @ x[draws]
    assert float((biased / trials - exact).pow(2).sum()) > 100 * variance / trials


def test_lower_variance_than_plain_crs_when_theorem2_condition_holds() -> None:
    torch.manual_seed(1)
    x, dz = concentrated_problem(n=60)
    F = outer_products(x, dz)
    p = row_probabilities(x.norm(dim=1), dz.norm(dim=1)).double()
    k = 15
    c = deterministic_count(p, k)
    top = torch.sort(p, descending=True).values
    assert c > 0 and float(top[:c].sum()) > c / k  # Theorem 2's condition holds for the chosen C
    wta, crs = analytic_variance(F, p, k, c), analytic_variance(F, p, k, 0)
    assert wta < crs
    exact = F.sum(0)
    for winner_take_all, analytic in ((True, wta), (False, crs)):
        errors = []
        for _ in range(1500):
            plan = plan_rows(p.float(), k, winner_take_all=winner_take_all)
            estimate = (F[plan.rows] * plan.weights.double()[:, None, None]).sum(0)
            errors.append(float((estimate - exact).pow(2).sum()))
        empirical = sum(errors) / len(errors)
        assert abs(empirical - analytic) < 0.2 * analytic, (winner_take_all, empirical, analytic)


def test_deterministic_count_follows_theorem2_and_guards_the_exact_case() -> None:
    assert deterministic_count(torch.full((50,), 0.02), 10) == 0  # uniform: nothing beats 1/k
    p = torch.tensor([0.5, 0.3] + [0.2 / 48] * 48)
    assert deterministic_count(p, 10) == 2
    # at most k rows with mass: all of them deterministic, nothing drawn, the product is exact (no 0/0 score)
    p = torch.tensor([0.7, 0.3, 0.0, 0.0, 0.0])
    plan = plan_rows(p, 3)
    assert sorted(plan.rows.tolist()) == [0, 1] and plan.draws == 0 and torch.equal(plan.weights, torch.ones(2))
    assert budget_rows(0.3, 100) == 30 and budget_rows(0.3, 20) == 10 and budget_rows(0.3, 7) == 7


def test_unseen_rows_get_the_mean_cached_norm_and_the_floor_keeps_every_row_possible() -> None:
    a = torch.tensor([1.0, 1.0, 2.0, 0.0])
    g = torch.tensor([3.0, 0.0, 0.0, 5.0])
    known = torch.tensor([True, True, False, True])
    p = row_probabilities(a, g, known, floor=0.1)
    s = torch.tensor([3.0, 0.0, 2.0 * (8.0 / 3.0), 0.0])
    assert torch.allclose(p, 0.9 * s / s.sum() + 0.1 * a / a.sum())
    assert p[1] > 0 and p[3] == 0  # a stale zero keeps p > 0; a zero row (no contribution) gets none
    assert torch.allclose(row_probabilities(a, g, torch.zeros(4, dtype=torch.bool)), a / a.sum())


# -- the exact parts --------------------------------------------------------------------------------------------------
def test_input_and_bias_gradients_are_exact_while_weight_is_sampled() -> None:
    torch.manual_seed(2)
    linear = nn.Linear(8, 7, dtype=torch.float64)
    layer = WTACRSLinear(linear, RowSampler(0.1, min_k=2))
    x = torch.randn(3, 20, 8, dtype=torch.float64, requires_grad=True)
    dz = torch.randn(3, 20, 7, dtype=torch.float64)
    z = layer(x)
    assert torch.allclose(z, nn.functional.linear(x, linear.weight, linear.bias))
    z.backward(dz)
    assert torch.allclose(x.grad, dz @ linear.weight)
    assert torch.allclose(linear.bias.grad, dz.sum((0, 1)))
    assert layer.sampler.stats["kept"] <= 6  # k = int(0.1 * 60) rows were kept for the weight gradient


def test_budget_one_equals_the_exact_layer() -> None:
    torch.manual_seed(3)
    reference = nn.Linear(8, 7, dtype=torch.float64)
    copy = nn.Linear(8, 7, dtype=torch.float64)
    copy.load_state_dict(reference.state_dict())
    layer = WTACRSLinear(copy, RowSampler(1.0))
    x = torch.randn(4, 9, 8, dtype=torch.float64)
    dz = torch.randn(4, 9, 7, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    reference(xa).backward(dz)
    layer(xb).backward(dz)
    assert torch.allclose(xa.grad, xb.grad) and torch.allclose(reference.weight.grad, copy.weight.grad)
    assert torch.allclose(reference.bias.grad, copy.bias.grad)


def test_gradcheck_on_the_exact_parts_in_float64() -> None:
    torch.manual_seed(4)
    weight = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 8, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    # weight sampled (it requires grad), input and bias checked against finite differences
    sampled = RowSampler(0.25, min_k=2)
    assert torch.autograd.gradcheck(lambda x, b: sampled_linear(x, weight, b, sampled), (x, bias))
    assert sampled.stats["kept"] < sampled.stats["rows"]
    # budget 1: every gradient, the weight's included, is exact
    assert torch.autograd.gradcheck(lambda x, w, b: sampled_linear(x, w, b, RowSampler(1.0)), (x, weight, bias))


def test_fused_dropout_matches_dropout_then_linear() -> None:
    torch.manual_seed(6)
    weight = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 7, 4, dtype=torch.float64, requires_grad=True)
    dz = torch.randn(3, 7, 5, dtype=torch.float64)
    torch.manual_seed(7)
    keep = torch.rand(x.shape) >= 0.25  # the function's first random draw is its dropout mask
    expected = (x * keep / 0.75) @ weight.t()
    torch.manual_seed(7)
    z = sampled_linear(x, weight, None, RowSampler(1.0), dropout=0.25)
    assert torch.allclose(z, expected)
    gx, gw = torch.autograd.grad(z, (x, weight), dz)
    ex, ew = torch.autograd.grad(expected, (x, weight), dz)
    assert torch.allclose(gx, ex) and torch.allclose(gw, ew)


def test_only_the_kept_rows_are_saved_for_backward() -> None:
    saved: list[torch.Size] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.shape)
        return t

    layer = WTACRSLinear(nn.Linear(16, 8), RowSampler(0.25, min_k=1))
    x = torch.randn(2, 50, 16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    row_blocks = [s for s in saved if len(s) == 2 and s[1] == 16 and s != layer.weight.shape]
    assert len(row_blocks) == 1 and row_blocks[0][0] <= 25  # ≤ k = 25 distinct rows of the 100, not all of X


def test_saved_tensor_meter_counts_activations_once_and_skips_weights() -> None:
    torch.manual_seed(8)
    x = torch.randn(4, 25, 16, requires_grad=True)
    exact = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 8))
    with SavedTensorMeter(exact, {"1": exact[1]}) as meter:
        exact(x).sum().backward()
    # each Linear saves its input (x, then the 100 x 32 hidden rows), never its weight
    assert meter.result.total_bytes == x.numel() * 4 + 100 * 32 * 4
    assert meter.result.watched_bytes == {"1": 100 * 32 * 4}
    sampled = nn.Sequential(nn.Linear(16, 32), WTACRSLinear(nn.Linear(32, 8), RowSampler(0.3, min_k=1)))
    with SavedTensorMeter(sampled, {"1": sampled[1]}) as meter:
        sampled(x).sum().backward()
    assert 0 < meter.result.watched_total <= 30 * 32 * 4 + 30 * (8 + 4)  # ≤ k = 30 rows, their ids and weights


# -- the cache --------------------------------------------------------------------------------------------------------
def test_cache_written_after_backward_at_the_batch_indices_and_positions() -> None:
    torch.manual_seed(5)
    cache = NormCache(max_positions=8, max_bytes=2**20)
    layer = WTACRSLinear(nn.Linear(4, 3), RowSampler(0.5, min_k=1, cache=cache, cache_key="l"))
    cache.begin_batch(torch.tensor([5, 2]))
    x = torch.randn(2, 6, 4)
    dz = torch.randn(2, 6, 3)
    z = layer(x)
    assert not cache.seen["l"].any() and cache.tables["l"].abs().sum() == 0  # nothing written by the forward
    z.backward(dz)
    table = cache.tables["l"].float()
    assert torch.allclose(table[5, :6], dz[0].norm(dim=1), rtol=1e-2)
    assert torch.allclose(table[2, :6], dz[1].norm(dim=1), rtol=1e-2)
    assert table[:, 6:].abs().sum() == 0 and table[[0, 1, 3, 4]].abs().sum() == 0
    assert cache.seen["l"].nonzero().flatten().tolist() == [2, 5]
    # the next batch reads them back by index: example 2 known, example 7 unseen
    cache.begin_batch(torch.tensor([2, 7]))
    norms, known = cache.lookup("l", cache.slots((2, 6)))
    assert known.tolist() == [True] * 6 + [False] * 6
    assert torch.allclose(norms[:6], dz[1].norm(dim=1), rtol=1e-2)
    assert cache.nbytes() == cache.tables["l"].shape[0] * (8 * 2 + 1)


# -- bad input --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [0, 0.0, -0.1, 1.5, "0.3", True])
def test_budget_outside_unit_interval_is_refused(budget) -> None:
    with pytest.raises(ConfigError, match="budget"):
        WTACRS(budget=budget)


def test_bad_roles_missing_indices_and_overflows_are_refused() -> None:
    with pytest.raises(ConfigError, match="valid roles"):
        WTACRS(roles=["attn_out", "ffn3"])
    with pytest.raises(ConfigError, match="valid roles"):
        LoRAWTACRS(lora_roles=["query"])
    method = WTACRS()
    with pytest.raises(ConfigError, match="idx"):
        method.on_train_batch_start(None, {"input_ids": torch.zeros(2, 4, dtype=torch.long)})
    cache = NormCache(max_positions=4, max_bytes=100)
    layer = WTACRSLinear(nn.Linear(3, 3), RowSampler(0.5, cache=cache, cache_key="l"))
    with pytest.raises(ConfigError, match="begin_batch"):
        layer(torch.randn(2, 4, 3))
    cache.begin_batch(torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="max_positions"):
        layer(torch.randn(2, 6, 3))
    cache.begin_batch(torch.tensor([0, 500]))
    with pytest.raises(ConfigError, match="max_cache_mb"):
        layer(torch.randn(2, 4, 3))
    with pytest.raises(ConfigError, match="attention_norms"):
        WTACRS(attention_norms="per_token")


def test_cache_sized_for_the_training_set_fails_on_the_first_forward_not_mid_epoch() -> None:
    per_example = 4 * 2 + 1  # 4 positions of bf16 + the seen flag
    cache = NormCache(max_positions=4, max_bytes=2 * 100 * per_example)  # room for 2 tables x 100 examples
    layer = WTACRSLinear(nn.Linear(3, 3), RowSampler(0.5, cache=cache, cache_key="a"))
    cache.register("b")
    cache.expect(100)
    cache.begin_batch(torch.tensor([0, 1]))
    layer(torch.randn(2, 4, 3))
    assert all(t.shape[0] == 100 for t in cache.tables.values())  # allocated for the whole set on the first batch
    with pytest.raises(ConfigError, match="3 tables"):  # one more table would not fit: refused when registered
        cache.register("c")
    cache.expect(101)
    cache.begin_batch(torch.tensor([0, 100]))
    with pytest.raises(ConfigError, match="max_cache_mb"):
        layer(torch.randn(2, 4, 3))


def test_fit_start_sizes_the_cache_for_the_training_set() -> None:
    method = WTACRS()
    method.on_fit_start(MethodContext(nn.Linear(1, 1), train_examples=lambda: 42))  # largest idx 41
    assert method.cache.expected_examples == 42


# -- backbones and end to end -----------------------------------------------------------------------------------------
def test_t5_roles_cover_encoder_and_decoder_blocks() -> None:
    cfg = compose_config(["backbone=tiny-t5"])
    model = load_model(cfg.backbone, num_labels=2)
    names = list(block_linears(model, cfg.backbone, ["attn_out", "ffn1", "ffn2"]))
    assert len(names) == 2 * 3 + 2 * 4  # decoder blocks have a self- and a cross-attention output
    assert "transformer.decoder.block.1.layer.1.EncDecAttention.o" in names
    method = WTACRS()
    method.setup(model, cfg.backbone)
    assert all(isinstance(model.get_submodule(n), WTACRSLinear) for n in names)
    assert not isinstance(model.get_submodule("transformer.encoder.block.0.layer.0.SelfAttention.q"), WTACRSLinear)


def steps_report(method, backbone: str = "tiny-bert", examples: int = 48, batch: int = 16, length: int = 12) -> dict:
    """The method's report after one epoch of `examples` rows through its hooks, in the training module's order, with
    the first training step measured as the run measures it (ftlab.telemetry.callbacks.SavedActivations)."""
    cfg = compose_config([f"backbone={backbone}"])
    torch.manual_seed(0)
    model = load_model(cfg.backbone, num_labels=2)
    method.setup(model, cfg.backbone)
    model.train()
    ctx = MethodContext(model, train_examples=lambda: examples)
    method.on_fit_start(ctx)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for start in range(0, examples, batch):
        rows = {"input_ids": torch.randint(1000, 2000, (batch, length), generator=g),
                "attention_mask": torch.ones(batch, length, dtype=torch.long),
                "labels": torch.randint(0, 2, (batch,), generator=g), "idx": torch.arange(start, start + batch)}
        if model.config.eos_token_id is not None:  # T5's classifier pools the last <eos>
            rows["input_ids"][:, -1] = model.config.eos_token_id
        method.on_train_batch_start(ctx, rows)
        first = start == 0
        meter = SavedTensorMeter(model, method.watched_modules()) if first else contextlib.nullcontext()
        with meter:
            outputs = method.training_forward(ctx, rows)
            loss = method.training_loss(ctx, rows, outputs, outputs.loss)
        if first:  # as ftlab.telemetry.callbacks.SavedActivations hands it over
            method.on_saved_tensors(meter.result, {"step": "first training forward", "batch": batch, "positions": length})
        loss.backward()
        method.on_before_optimizer_step(ctx, optimizer)
        optimizer.step()
        optimizer.zero_grad()
        method.on_after_optimizer_step(ctx)
        ctx.global_step += 1
    report = method.report(ctx)
    report["trainable_fraction"] = sum(p.numel() for p in model.parameters() if p.requires_grad) / sum(
        p.numel() for p in model.parameters())
    return report


def _check_report(report: dict, layers: int) -> dict:
    assert report["sampled_layers"] == layers
    saved = report["saved_tensors"]
    assert 0 < saved["sampled_layers_bytes"] < saved["whole_forward_bytes"]
    assert report["norm_cache"]["examples"] == 48  # every training example went through backward once
    assert report["step_seconds_mean"] > 0
    return report


def test_tiny_bert_wtacrs_saves_less_than_half_of_the_exact_layers() -> None:
    report = _check_report(steps_report(WTACRS()), layers=2 * 3)
    saved = report["saved_tensors"]
    # kept rows (≈0.3 N) plus row ids/weights: well under half of what the exact layers would save
    assert saved["sampled_layers_bytes"] < 0.5 * saved["sampled_layers_input_bytes_if_exact"]
    assert report["kept_row_fraction"] <= 0.3 + 1e-9
    assert report["sample_attention"] and report["sampled_attention_products"] == 2  # one P·V per block
    assert 0 < report["attention_kept_row_fraction"] < 1
    assert report["sample_scores"] and report["sampled_score_products"] == 2  # one QKᵀ per block
    assert 0 < report["score_kept_row_fraction"] < 1


def test_tiny_t5_wtacrs_samples_encoder_and_decoder() -> None:
    report = _check_report(steps_report(WTACRS(budget=0.1), backbone="tiny-t5"), layers=2 * 3 + 2 * 4)
    assert report["kept_row_fraction"] <= 0.1 + 1e-9
    assert report["sampled_attention_products"] == 2 + 2 * 2  # encoder self, decoder self and cross attention
    assert report["sampled_score_products"] == 2 + 2 * 2


def test_pooled_attention_norms_keep_one_table_per_operand() -> None:
    report = _check_report(steps_report(WTACRS(attention_norms="pooled")), layers=2 * 3)
    assert report["attention_norms"] == "pooled"
    assert report["norm_cache"]["layers"] == 2 * 3 + 2 * 3  # 6 linears + (P·V, Q, K) per block, not per head


def test_tiny_bert_lora_wtacrs_trains_adapters_and_head_only() -> None:
    report = _check_report(steps_report(LoRAWTACRS()), layers=2 * 3)
    assert report["trainable_fraction"] < 0.05  # adapters + head only
