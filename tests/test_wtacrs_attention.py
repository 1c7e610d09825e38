"""WTA-CRS level 2's attention products. P·V: the batched plan is unbiased, budget 1 is the exact product, the output
and ∇P stay exact at any budget, only k rows of the attention map are saved, the per-head cache is written. QKᵀ: the
scores stay exact, ∇Q and ∇K are unbiased (budget 1: exact), only k rows of Q and of K are saved, both caches are
written. A tiny BERT and T5 keep their eager outputs when the attention function is swapped in."""
from __future__ import annotations

import pytest
import torch

from ftlab.backbones import load_model
from ftlab.kernels.dropout import keep_mask
from ftlab.methods.wtacrs.attention import (ATTENTION_NAME, SAMPLER_ATTRIBUTE, SCORE_SAMPLERS_ATTRIBUTE,
                                           HeadRowSampler, _SampledPV, _SampledQK, plan_groups)
from ftlab.methods.wtacrs.cache import NormCache
from ftlab.methods.wtacrs.method import WTACRS

from conftest import compose_config


pytestmark = pytest.mark.usefixtures("one_thread")


def _uneven_groups(groups: int = 4, n: int = 24, d: int = 3):
    """Per group: probabilities with a few dominant rows (so |C| > 0 happens) and row contributions F_i."""
    g = torch.Generator().manual_seed(0)
    p = torch.rand(groups, n, generator=g, dtype=torch.float64) + 0.05
    p[:, :3] *= 20.0
    F = torch.randn(groups, n, d, generator=g, dtype=torch.float64) * p[..., None].sqrt()
    return p / p.sum(-1, keepdim=True), F


def test_batched_plan_is_unbiased_and_uses_the_deterministic_set() -> None:
    torch.manual_seed(1)
    p, F = _uneven_groups()
    k, trials = 8, 4000
    exact = F.sum(1)
    estimates = torch.zeros(trials, *exact.shape, dtype=torch.float64)
    for t in range(trials):
        rows, weights, c = plan_groups(p, k)
        estimates[t] = (F.gather(1, rows[..., None].expand(-1, -1, F.shape[-1])) * weights[..., None]).sum(1)
    assert rows.shape == weights.shape == (4, k)
    assert (c > 0).all()  # the dominant rows are taken deterministically, weight 1
    assert torch.equal(weights[:, 0], torch.ones(4))
    # mean within 4 standard errors of the exact sum, per coordinate
    stderr = estimates.std(0) / trials**0.5
    assert ((estimates.mean(0) - exact).abs() <= 4 * stderr + 1e-9).all()


def test_group_with_few_nonzero_rows_is_kept_exactly() -> None:
    p = torch.zeros(2, 10, dtype=torch.float64)
    p[0, [1, 4, 7]] = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    p[1] = 0.1
    rows, weights, c = plan_groups(p, 4)
    assert c[0].item() == 4 and set(rows[0].tolist()) >= {1, 4, 7} and torch.equal(weights[0], torch.ones(4))
    assert c[1].item() < 4


def _pv_inputs(seed: int = 0, b: int = 2, h: int = 3, n: int = 12, d: int = 4):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(b, h, n, n, generator=g, dtype=torch.float64), -1).requires_grad_()
    value = torch.randn(b, h, n, d, generator=g, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    return probs, value, grad


def _exact(probs, value, grad):
    p, v = probs.detach().clone().requires_grad_(), value.detach().clone().requires_grad_()
    out = p @ v
    out.backward(grad)
    return out.detach(), p.grad, v.grad


def test_budget_one_is_the_exact_product_and_any_budget_keeps_output_and_dP_exact() -> None:
    probs, value, grad = _pv_inputs()
    out_ref, dp_ref, dv_ref = _exact(probs, value, grad)
    for budget, dv_exact in ((1.0, True), (0.25, False)):
        p, v = probs.detach().clone().requires_grad_(), value.detach().clone().requires_grad_()
        out = _SampledPV.apply(p, v, HeadRowSampler(budget, 1, 0.01, None, "a"), 0.0, torch.float64)
        out.backward(grad)
        torch.testing.assert_close(out, out_ref)
        torch.testing.assert_close(p.grad, dp_ref)
        assert torch.allclose(v.grad, dv_ref) == dv_exact


def test_sampled_value_gradient_is_unbiased() -> None:
    torch.manual_seed(2)
    probs, value, grad = _pv_inputs(n=16)
    _, _, dv_ref = _exact(probs, value, grad)
    trials, total = 1500, torch.zeros_like(dv_ref)
    grads = []
    for _ in range(trials):
        v = value.detach().clone().requires_grad_()
        _SampledPV.apply(probs.detach(), v, HeadRowSampler(0.25, 1, 0.01, None, "a"), 0.0, torch.float64).backward(grad)
        grads.append(v.grad)
    stack = torch.stack(grads)
    stderr = stack.std(0) / trials**0.5
    assert ((stack.mean(0) - dv_ref).abs() <= 4 * stderr + 1e-9).all()


def test_fused_dropout_routes_dP_through_the_same_mask() -> None:
    probs, value, grad = _pv_inputs()
    torch.manual_seed(3)
    p, v = probs.detach().clone().requires_grad_(), value.detach().clone().requires_grad_()
    out = _SampledPV.apply(p, v, HeadRowSampler(1.0, 1, 0.01, None, "a"), 0.25, torch.float64)
    out.backward(grad)
    torch.manual_seed(3)
    keep, rate = keep_mask(probs.shape, 0.25)  # the mask ftlab.kernels.dropout draws from the same torch seed
    keep = keep.double() / rate
    out_ref, dp_ref, dv_ref = _exact(probs * keep, value, grad)  # P̃ = P ∘ mask / (keep rate)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(v.grad, dv_ref)
    torch.testing.assert_close(p.grad, (grad @ value.detach().transpose(-1, -2)) * keep)


def test_only_k_rows_of_the_attention_map_are_saved_and_the_cache_is_written_per_head() -> None:
    probs, value, grad = _pv_inputs(b=2, h=3, n=20)
    cache = NormCache(max_positions=32, max_bytes=2**20)
    cache.begin_batch(torch.tensor([4, 1]))
    sampler = HeadRowSampler(0.3, 1, 0.01, cache, "attn")
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        out = _SampledPV.apply(probs, value, sampler, 0.0, torch.float64)
    assert (2 * 3, 6, 20) in shapes and (2, 3, 20, 20) not in shapes  # k = 6 of 20 query rows per (example, head)
    out.backward(grad)
    assert len(sampler.keys) == 3
    expected = grad.norm(dim=-1)  # (b, h, n)
    for h, key in enumerate(sampler.keys):
        table = cache.tables[key].float()
        torch.testing.assert_close(table[4, :20], expected[0, h].float(), rtol=1e-2, atol=1e-3)
        torch.testing.assert_close(table[1, :20], expected[1, h].float(), rtol=1e-2, atol=1e-3)
    cache.begin_batch(torch.tensor([1, 4]))
    norms, known = sampler.lookup(cache.slots((2, 20)), 2, 3, 20)
    assert known.all() and norms.shape == (6, 20)
    torch.testing.assert_close(norms[3 + 2], expected[0, 2].float(), rtol=1e-2, atol=1e-3)  # example 4, head 2


def _qk_inputs(seed: int = 0, b: int = 2, h: int = 3, n: int = 12, m: int = 10, d: int = 4):
    """Q (b, h, n, d) and K (b, h, m, d) with n != m, so a transposed index shows up as a shape error or a wrong value."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    key = torch.randn(b, h, m, d, generator=g, dtype=torch.float64)
    key[:, :, :2] *= 6.0  # a few dominant key rows, so the deterministic set is used
    grad = torch.randn(b, h, n, m, generator=g, dtype=torch.float64)
    return query, key, grad


def _qk_samplers(budget: float, cache: NormCache | None = None) -> tuple[HeadRowSampler, HeadRowSampler]:
    return HeadRowSampler(budget, 1, 0.01, cache, "attn", "qk.q"), HeadRowSampler(budget, 1, 0.01, cache, "attn", "qk.k")


def _sampled_qk_grads(query, key, grad, budget: float, cache: NormCache | None = None):
    q, k = query.clone().requires_grad_(), key.clone().requires_grad_()
    scores = _SampledQK.apply(q, k, *_qk_samplers(budget, cache), torch.float64)
    scores.backward(grad)
    return scores.detach(), q.grad, k.grad


def test_scores_stay_exact_and_budget_one_gives_the_exact_query_and_key_gradients() -> None:
    query, key, grad = _qk_inputs()
    q, k = query.clone().requires_grad_(), key.clone().requires_grad_()
    (q @ k.transpose(-1, -2)).backward(grad)
    for budget, grads_exact in ((1.0, True), (0.3, False)):
        scores, dq, dk = _sampled_qk_grads(query, key, grad, budget)
        torch.testing.assert_close(scores, query @ key.transpose(-1, -2))
        assert torch.allclose(dq, q.grad) == grads_exact and torch.allclose(dk, k.grad) == grads_exact


def test_gradcheck_of_both_attention_products_at_budget_one() -> None:
    query, key, _ = _qk_inputs(b=1, h=2, n=5, m=4, d=3)
    q, k = query.requires_grad_(), key.requires_grad_()
    assert torch.autograd.gradcheck(lambda q, k: _SampledQK.apply(q, k, *_qk_samplers(1.0), torch.float64), (q, k))
    probs, value, _ = _pv_inputs(b=1, h=2, n=5, d=3)
    pv = HeadRowSampler(1.0, 1, 0.01, None, "a")
    assert torch.autograd.gradcheck(lambda p, v: _SampledPV.apply(p, v, pv, 0.0, torch.float64), (probs, value))


def test_sampled_query_and_key_gradients_are_unbiased() -> None:
    torch.manual_seed(4)
    query, key, grad = _qk_inputs(n=14, m=11)
    exact_q, exact_k = grad @ key, grad.transpose(-1, -2) @ query  # ∇Q = ∇S K, ∇K = ∇Sᵀ Q
    trials = 1500
    dqs, dks = zip(*(_sampled_qk_grads(query, key, grad, 0.3)[1:] for _ in range(trials)))
    for stack, exact in ((torch.stack(dqs), exact_q), (torch.stack(dks), exact_k)):
        stderr = stack.std(0) / trials**0.5
        assert ((stack.mean(0) - exact).abs() <= 4 * stderr + 1e-9).all()
        assert (stack.std(0) > 0).any()  # really sampled


def test_only_k_rows_of_query_and_key_are_saved_and_both_caches_are_written() -> None:
    query, key, grad = _qk_inputs(b=2, h=3, n=20, m=20)
    cache = NormCache(max_positions=32, max_bytes=2**20)
    cache.begin_batch(torch.tensor([4, 1]))
    q_sampler, k_sampler = _qk_samplers(0.3, cache)
    q, k = query.clone().requires_grad_(), key.clone().requires_grad_()
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        scores = _SampledQK.apply(q, k, q_sampler, k_sampler, torch.float64)
    assert shapes.count((2 * 3, 6, 4)) == 2 and (2, 3, 20, 4) not in shapes  # k = 6 of 20 rows of Q and of K
    scores.backward(grad)
    assert len(q_sampler.keys) == len(k_sampler.keys) == 3 and not set(q_sampler.keys) & set(k_sampler.keys)
    by_query, by_key = grad.norm(dim=-1), grad.norm(dim=-2)  # ‖∇S_i,:‖ (b, h, n) and ‖∇S_:,j‖ (b, h, m)
    for sampler, expected in ((q_sampler, by_query), (k_sampler, by_key)):
        for h, name in enumerate(sampler.keys):
            table = cache.tables[name].float()
            torch.testing.assert_close(table[4, :20], expected[0, h].float(), rtol=1e-2, atol=1e-3)
            torch.testing.assert_close(table[1, :20], expected[1, h].float(), rtol=1e-2, atol=1e-3)


def test_pooled_norms_keep_one_table_with_the_norm_over_heads_and_give_it_to_every_head() -> None:
    probs, value, grad = _pv_inputs(b=2, h=3, n=20)
    cache = NormCache(max_positions=32, max_bytes=2**20)
    cache.begin_batch(torch.tensor([4, 1]))
    sampler = HeadRowSampler(0.3, 1, 0.01, cache, "attn", "pv", pooled=True)
    _SampledPV.apply(probs, value, sampler, 0.0, torch.float64).backward(grad)
    assert sampler.keys == ["attn.pv"] and list(cache.tables) == ["attn.pv"]
    over_heads = grad.norm(dim=-1).norm(dim=1)  # (b, n): ‖∇O_i‖ of the heads' concatenated rows
    torch.testing.assert_close(cache.tables["attn.pv"][4, :20].float(), over_heads[0].float(), rtol=1e-2, atol=1e-3)
    norms, known = sampler.lookup(cache.slots((2, 20)), 2, 3, 20)
    assert norms.shape == (6, 20) and known.all()
    for head in range(3):
        torch.testing.assert_close(norms[head], norms[0])  # example 4's row, shared by its heads


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-t5"])
def test_model_outputs_and_exact_parts_are_unchanged_by_the_attention_function(backbone) -> None:
    cfg = compose_config([f"backbone={backbone}"])
    torch.manual_seed(0)
    reference = load_model(cfg.backbone, num_labels=2)
    model = load_model(cfg.backbone, num_labels=2)
    model.load_state_dict(reference.state_dict())
    for m in (reference, model):
        for module in m.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "dropout", None), float):  # T5Attention keeps its rate as a float
                module.dropout = 0.0
    method = WTACRS(budget=1.0, min_k=1)
    method.setup(model, cfg.backbone)
    assert model.config._attn_implementation == ATTENTION_NAME
    assert method.attention_samplers and all(
        getattr(model.get_submodule(n), SAMPLER_ATTRIBUTE) is s for n, s in method.attention_samplers.items())
    ids = torch.randint(1000, 2000, (3, 9))
    ids[:, 5] = 102  # the tiny T5's <eos> (MiniLM's [SEP]): its head reads that position
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, -3:] = 0
    labels = torch.tensor([0, 1, 1])
    method.cache.begin_batch(torch.arange(3))
    reference.train(), model.train()
    ref_out = reference(input_ids=ids, attention_mask=mask, labels=labels)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.logits, ref_out.logits, rtol=1e-4, atol=1e-5)
    ref_out.loss.backward(), out.loss.backward()
    for (name, p_ref), (_, p) in zip(reference.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert all(s.stats["forwards"] > 0 for s in method.attention_samplers.values())
    assert method.score_samplers and all(
        getattr(model.get_submodule(n), SCORE_SAMPLERS_ATTRIBUTE) is pair for n, pair in method.score_samplers.items())
    assert all(s.stats["forwards"] > 0 for pair in method.score_samplers.values() for s in pair)
    reference.eval(), model.eval()
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                               reference(input_ids=ids, attention_mask=mask).logits, rtol=1e-4, atol=1e-5)


def test_a_bfloat16_model_without_autocast_stays_in_bfloat16() -> None:
    cfg = compose_config(["backbone=tiny-bert"])
    model = load_model(cfg.backbone, num_labels=2).to(torch.bfloat16)
    method = WTACRS(budget=0.5, min_k=1)
    method.setup(model, cfg.backbone)
    method.cache.begin_batch(torch.arange(2))
    model.train()
    out = model(input_ids=torch.randint(1000, 2000, (2, 7)), labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert out.logits.dtype == torch.bfloat16
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in model.parameters() if p.requires_grad)
