"""R3F / R4F and R-Drop: the symmetric KL, where and in which precision the noise goes, the spectral-normalised head,
invariance to gradient accumulation and bad-input errors (tests/test_method_contract.py runs them end to end)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from one_step import assert_same_gradients, one_step_gradients, tiny_parts

from ftlab.errors import BackboneError, ConfigError
from ftlab.methods.context import MethodContext, model_inputs
from ftlab.methods.stability.consistency import symmetric_kl, symmetric_kl_per_example
from ftlab.methods.stability.r3f import R3F, add_noise
from ftlab.methods.stability.rdrop import RDrop


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(cfg, rows: int = 6, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    input_ids = torch.randint(1000, 2000, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, -4:] = 0  # one padded row
    labels = torch.randint(0, 2, (rows,), generator=g) if cfg.task.kind != "regression" else torch.rand(rows, generator=g) * 5
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(input_ids),
            "labels": labels, "idx": torch.arange(rows)}


def _context(tmp: Path, method, *overrides: str, dropout: float = 0.0) -> tuple[MethodContext, dict[str, torch.Tensor]]:
    """The method set up on a seeded tiny BERT in training mode, the context its hooks see, and a batch."""
    cfg, model = tiny_parts(tmp, *overrides, dropout=dropout)
    method.setup(model, cfg.backbone)
    model.train()
    return MethodContext(model, task_kind=cfg.task.kind), _batch(cfg)


def assert_paired_pass_is_the_plain_forward_twice(method, ctx: MethodContext, batch: dict[str, torch.Tensor]) -> None:
    """With nothing random in the pass (no dropout, no noise), both halves of the paired forward are the plain forward,
    its loss is the Hugging Face head's own loss from the labels, and the consistency term adds exactly nothing."""
    plain = ctx.forward(batch)
    both = method.training_forward(ctx, batch)
    torch.testing.assert_close(both.logits, plain.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both.second_logits, plain.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both.loss, plain.loss, rtol=1e-5, atol=1e-6)
    assert method.consistency_term(ctx, both.logits, both.second_logits).item() == pytest.approx(0.0, abs=1e-10)
    torch.testing.assert_close(method.training_loss(ctx, batch, both, both.loss), both.loss)


# -- the symmetric KL --------------------------------------------------------------------------------------------
def test_symmetric_kl_is_symmetric_nonnegative_and_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(8, 3, generator=g) * 3, torch.randn(8, 3, generator=g) * 3
    kl = symmetric_kl_per_example(p, q)
    assert torch.equal(kl, symmetric_kl_per_example(q, p))
    assert (kl > 0).all()
    P, Q = p.softmax(-1).double(), q.softmax(-1).double()
    expected = (P * (P / Q).log()).sum(-1) + (Q * (Q / P).log()).sum(-1)
    torch.testing.assert_close(kl.double(), expected, rtol=1e-5, atol=1e-7)
    assert symmetric_kl(p, p).item() == 0.0
    # batch mean: the mean of two half batches is the full batch (what makes it invariant to gradient accumulation)
    torch.testing.assert_close(symmetric_kl(p, q), (symmetric_kl(p[:4], q[:4]) + symmetric_kl(p[4:], q[4:])) / 2)
    torch.testing.assert_close(symmetric_kl(p, q, "sum"), kl.sum())


def test_symmetric_kl_is_computed_in_fp32_from_bf16_logits():
    p, q = torch.randn(4, 2).bfloat16(), torch.randn(4, 2).bfloat16()
    assert symmetric_kl(p, q).dtype == torch.float32


# -- R3F ---------------------------------------------------------------------------------------------------------
def _noisy_reference(method: R3F, ctx: MethodContext, batch, noise) -> torch.Tensor:
    """Logits of a separate forward whose word embeddings become `E.detach() + noise(E)` (what fairseq's second pass is)."""
    emb = ctx.model.get_submodule(method.embeddings_path)
    handle = emb.register_forward_hook(lambda m, a, out: out.detach().float() + noise(out))
    try:
        return ctx.model(**{k: v for k, v in model_inputs(batch).items() if k != "labels"}).logits
    finally:
        handle.remove()


def test_r3f_zero_noise_adds_exactly_zero(tmp_path):
    method = R3F(sigma=0.0, lam=5.0)
    ctx, batch = _context(tmp_path, method)
    assert_paired_pass_is_the_plain_forward_twice(method, ctx, batch)
    method.sigma = 1e-2  # the same pass with noise gives a positive term
    both = method.training_forward(ctx, batch)
    assert method.consistency_term(ctx, both.logits, both.second_logits).item() > 0


def test_r3f_paired_pass_equals_a_clean_and_a_separate_noisy_pass(tmp_path):
    method = R3F(lam=1.0)
    method.sample_noise = _token_noise  # deterministic, so the noisy prediction can be recomputed
    ctx, batch = _context(tmp_path, method)
    both = method.training_forward(ctx, batch)
    torch.testing.assert_close(both.logits, ctx.forward(batch).logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both.second_logits, _noisy_reference(method, ctx, batch, _token_noise), rtol=1e-5, atol=1e-6)


def test_r3f_noise_goes_on_the_word_embeddings_only_and_is_detached(tmp_path):
    method = R3F(sigma=1e-3, noise="normal")
    ctx, batch = _context(tmp_path, method)
    embeddings = ctx.model.bert.embeddings
    seen: list[torch.Tensor] = []
    handle = embeddings.LayerNorm.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    drawn: list[torch.Tensor] = []
    sample = method.sample_noise
    method.sample_noise = lambda e: drawn.append(sample(e)) or drawn[-1]
    both = method.training_forward(ctx, batch)
    handle.remove()
    assert len(drawn) == 1 and drawn[0].shape == (*batch["input_ids"].shape, 32)
    assert 0.5e-3 < drawn[0].std().item() < 2e-3
    # input of the embedding LayerNorm = word + position + token-type embeddings: the noisy half moves by the noise
    clean, noisy = seen[0].chunk(2)
    torch.testing.assert_close(noisy - clean, drawn[0], rtol=0, atol=1e-6)
    # the noisy pass sends no gradient into the word-embedding table, but does into the others
    ctx.model.zero_grad()
    both.second_logits.float().pow(2).sum().backward()
    assert embeddings.word_embeddings.weight.grad is None or not embeddings.word_embeddings.weight.grad.any()
    assert embeddings.position_embeddings.weight.grad.abs().sum() > 0


def test_r3f_noise_is_added_in_fp32():
    g = torch.Generator().manual_seed(0)
    emb = (torch.randn(4, 16, 32, generator=g) * 0.05).bfloat16()
    noise = (torch.rand(4, 16, 32, generator=g) * 2 - 1) * 1e-5
    noisy = add_noise(emb, noise)
    assert noisy.dtype == torch.float32
    torch.testing.assert_close(noisy - emb.float(), noise, rtol=0, atol=1e-8)
    # the pitfall this avoids: in bf16 the noise vanishes for nearly every entry
    assert (emb + noise.bfloat16() == emb).float().mean() > 0.95


def test_r3f_under_bf16_autocast_keeps_fp32_noisy_embeddings(tmp_path):
    method = R3F(sigma=1e-5)
    ctx, batch = _context(tmp_path, method)
    seen: list[torch.Tensor] = []
    ln = ctx.model.bert.embeddings.LayerNorm
    handle = ln.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        both = method.training_forward(ctx, batch)
        term = method.consistency_term(ctx, both.logits, both.second_logits)
    handle.remove()
    clean, noisy = seen[0].chunk(2)
    assert noisy.dtype == torch.float32 and (noisy != clean).float().mean() > 0.9
    assert term.dtype == torch.float32 and torch.isfinite(term)


def test_r3f_refuses_bf16_weights(tmp_path):
    method = R3F()
    ctx, _ = _context(tmp_path, method)
    ctx.model.to(torch.bfloat16)
    with pytest.raises(ConfigError, match="bf16-mixed"):
        method.on_fit_start(ctx)


def test_r3f_regression_official_adds_nothing_paper_adds_mse(tmp_path):
    official = R3F(sigma=1e-2)
    ctx, batch = _context(tmp_path, official, "task=stsb")
    assert ctx.task_kind == "regression"
    outputs = official.training_forward(ctx, batch)
    assert outputs.logits.shape[0] == batch["labels"].shape[0]  # the plain forward: no noisy pass at all
    assert torch.equal(official.training_loss(ctx, batch, outputs, outputs.loss), outputs.loss)
    method = R3F(regression_term="paper")
    method.sample_noise = _token_noise
    paper, batch = _context(tmp_path, method, "task=stsb")
    both = method.training_forward(paper, batch)
    term = method.consistency_term(paper, both.logits, both.second_logits)
    expected = (paper.forward(batch).logits - _noisy_reference(method, paper, batch, _token_noise)).pow(2).mean()
    assert term.item() > 0
    torch.testing.assert_close(term, expected, rtol=1e-4, atol=1e-9)


def test_r4f_head_is_spectral_normalised(tmp_path):
    method = R3F(spectral_norm_head=True)
    cfg, model = tiny_parts(tmp_path)
    before = torch.linalg.matrix_norm(model.classifier.weight.detach(), ord=2).item()
    method.setup(model, cfg.backbone)
    assert torch.nn.utils.parametrize.is_parametrized(model.classifier, "weight")
    model.train()
    model(**{k: v for k, v in _batch(cfg).items() if k != "idx"})
    after = torch.linalg.matrix_norm(model.classifier.weight.detach(), ord=2).item()
    assert abs(before - 1) > 0.05 and after == pytest.approx(1.0, abs=1e-3)


# -- R-Drop ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["rte", "stsb"])
def test_rdrop_concatenated_pass_without_dropout_is_the_plain_forward_twice(tmp_path, task):
    method = RDrop(alpha=5.0, dropout=0.0)
    ctx, batch = _context(tmp_path, method, f"task={task}", dropout=0.1)
    assert all(m.p == 0 for m in ctx.model.modules() if isinstance(m, torch.nn.Dropout))
    assert_paired_pass_is_the_plain_forward_twice(method, ctx, batch)


def test_rdrop_with_dropout_draws_two_masks_and_combines_the_two_losses(tmp_path):
    method = RDrop(alpha=1.0)
    ctx, batch = _context(tmp_path, method, dropout=0.1)
    torch.manual_seed(0)
    both = method.training_forward(ctx, batch)
    assert not torch.equal(both.logits, both.second_logits)
    term = method.consistency_term(ctx, both.logits, both.second_logits)
    assert term.item() > 0
    logged = []
    ctx.log = lambda name, value, batch_size=None: logged.append((name, float(value), batch_size))
    torch.testing.assert_close(method.training_loss(ctx, batch, both, both.loss), both.loss + term)
    assert logged == [("train/rdrop_term", pytest.approx(term.item()), batch["labels"].shape[0])]
    first, second = torch.tensor(0.3), torch.tensor(0.7)
    assert method.combine_losses(first, second).item() == pytest.approx(0.5)
    method.ce = "sum"
    assert method.combine_losses(first, second).item() == pytest.approx(1.0)
    method.ce = "first"
    assert method.combine_losses(first, second).item() == pytest.approx(0.3)


# -- gradient accumulation ---------------------------------------------------------------------------------------
def _token_noise(embeddings: torch.Tensor) -> torch.Tensor:
    # a function of each token's own embedding: the same noise whichever micro-batch the example lands in
    return 1e-2 * torch.sin(1e3 * embeddings.float())


def _r3f_with_fixed_noise(**kwargs) -> R3F:
    method = R3F(**kwargs)
    method.sample_noise = _token_noise
    return method


@pytest.mark.parametrize("make, rtol", [
    (lambda: _r3f_with_fixed_noise(lam=5.0), 1e-5),  # a sum-reduced KL would differ by ~50% here
    # R4F's power iteration advances once per training forward (2 vs 4 forwards here): equal up to its convergence
    (lambda: _r3f_with_fixed_noise(lam=5.0, spectral_norm_head=True), 1e-3),
    (lambda: RDrop(alpha=5.0), 1e-5),
], ids=["r3f", "r4f", "rdrop"])
def test_accumulating_two_half_batches_gives_the_full_batch_gradient(tmp_path, make, rtol):
    full, method = one_step_gradients(tmp_path / "full", make, 16, 1)
    half, _ = one_step_gradients(tmp_path / "half", make, 8, 2)
    assert_same_gradients(full, half, rtol=rtol)
    if isinstance(method, R3F):  # the term was active, so the check covers it
        assert method._term.count == 1 and method._term.mean > 0


# -- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, fragment", [
    ({"lam": -1.0}, "lam"), ({"sigma": -1e-5}, "sigma"), ({"noise": "gauss"}, "noise"),
    ({"regression_term": "mse"}, "regression_term"),
])
def test_r3f_rejects_bad_settings(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        R3F(**kwargs)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"alpha": -0.1}, "alpha"), ({"ce": "avg"}, "ce"), ({"kl_reduction": "batchmean"}, "kl_reduction"),
    ({"regression_term": "kl"}, "regression_term"), ({"dropout": 1.0}, "dropout"),
])
def test_rdrop_rejects_bad_settings(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RDrop(**kwargs)


def test_bad_lambda_from_the_command_line_is_a_config_error(run_tiny):
    with pytest.raises(ConfigError, match="lam"):
        run_tiny("method=r3f", "method.lam=-1", "threads=1")


def test_r3f_needs_word_embeddings_and_a_head_in_the_backbone(tmp_path):
    cfg, model = tiny_parts(tmp_path)
    backbone = OmegaConf.merge(cfg.backbone, {"word_embeddings": None})
    with pytest.raises(BackboneError, match="word_embeddings"):
        R3F().setup(model, backbone)
    backbone = OmegaConf.merge(cfg.backbone, {"head": ["bert.pooler.activation"]})
    with pytest.raises(BackboneError, match="head"):
        R3F(spectral_norm_head=True).setup(model, backbone)
