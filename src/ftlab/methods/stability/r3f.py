"""R3F / R4F (Aghajanyan et al., ICLR 2021): a symmetric-KL consistency term between the clean prediction and the
prediction under tiny noise on the word embeddings; R4F adds spectral normalisation of the head's final projection.

Per training batch (official fairseq criterion `sentence_prediction_r3f.py`, docs/methods/stability.md#r3f-and-r4f):
  loss = CE(f(x), y) + λ · mean_batch[ KL(P_clean‖P_noisy) + KL(P_noisy‖P_clean) ]
where the noisy pass sees `E.detach() + z`, E = the word-embedding lookup output only (before position / segment
embeddings and LayerNorm), z ~ U(−σ, σ) or N(0, σ²). The clean and the noisy pass run as one forward of the batch
concatenated with itself, the noise on the second half (`consistency.paired_forward`; fairseq runs two forwards:
same estimator, each row draws its own dropout mask either way), so R3F costs one extra forward + backward's worth
of rows in a single, better-shaped pass.

Choices made here:
* The noise enters through a forward hook on the word-embedding module (config key `word_embeddings`) that is active
  only during the paired pass and perturbs its second half, and the model is called with `input_ids` as usual. For BERT this is the same
  as `model(inputs_embeds=E.detach() + z)`; unlike `inputs_embeds`, it also keeps decoder classifiers right (GPT-2's
  sequence classifier finds the last real token from `input_ids` and would pool a padding position otherwise).
* The noise is added in fp32 and the noisy embeddings stay fp32: σ = 1e-5 is far below bfloat16's resolution at
  embedding magnitudes (~1e-2 → spacing ~1e-4), so `bf16(E) + bf16(z)` returns E unchanged. Under bf16-mixed autocast
  the weights are fp32 and the perturbation survives the embedding sum and LayerNorm (fp32); the first bf16 matmul
  then rounds it, so only the entries that cross a rounding boundary move. Models whose weights are bf16 (precision
  `bf16-true`) are refused with a ConfigError.
* Regression (STS-B): `regression_term: official` adds nothing (the fairseq criterion computes the noisy pass and
  ignores it for regression; we skip the pass), `paper` adds λ · mean_batch (f(x) − f(x+z))².
* Dropout stays active in both passes (as in the official code), so the KL also measures dropout disagreement.
* R4F uses `torch.nn.utils.parametrizations.spectral_norm` (one power iteration per training forward, as in fairseq's
  `spectral_norm` on `out_proj`) on the last module of the backbone's `head` list (BERT: `classifier`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ...errors import BackboneError, require
from ..base import Method
from .consistency import TermLog, TwoPasses, paired_forward, squared_difference, supervised_loss, symmetric_kl
from ..context import MethodContext

NOISE_TYPES = ("uniform", "normal")
REGRESSION_TERMS = ("official", "paper")


def add_noise(embeddings: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """`embeddings + noise` computed and returned in fp32, whatever the embeddings' dtype (see the module docstring)."""
    return embeddings.float() + noise.float()


def head_projection(model: nn.Module, backbone: DictConfig) -> tuple[str, nn.Module]:
    """(name, module) of the classification head's final projection: the last entry of the backbone's `head` list."""
    heads = list(backbone.get("head") or [])
    require(bool(heads), f"backbone '{backbone.name}' lists no `head` modules; add e.g. `head: [classifier]` to its "
            f"config so that R4F knows which projection to spectral-normalise", BackboneError)
    name = heads[-1]
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise BackboneError(f"backbone '{backbone.name}': head module {name!r} not found in {type(model).__name__}; "
                            f"fix the `head` list of the backbone config") from None
    weight = getattr(module, "weight", None)
    require(isinstance(weight, torch.Tensor) and weight.dim() == 2,
            f"backbone '{backbone.name}': head module {name!r} ({type(module).__name__}) has no 2-D weight to "
            f"spectral-normalise; the last entry of `head` must be the final Linear projection", BackboneError)
    return name, module


class R3F(Method):
    """R3F (and R4F with `spectral_norm_head=True`)."""

    name = "r3f"
    tiny_runs = ((), ("task=stsb", "method.regression_term=paper"))  # classification, and the regression term

    def __init__(
        self,
        noise: str = "uniform",
        sigma: float = 1e-5,
        lam: float = 1.0,
        regression_term: str = "official",
        spectral_norm_head: bool = False,
    ):
        require(noise in NOISE_TYPES, f"method.noise={noise!r} is not valid: choose one of {list(NOISE_TYPES)}")
        require(float(sigma) >= 0, f"method.sigma={sigma} must be >= 0 (the noise scale; the paper uses 1e-5)")
        require(float(lam) >= 0, f"method.lam={lam} must be >= 0 (the KL weight λ; the paper's grid is 0.1, 0.5, 1, 5)")
        require(regression_term in REGRESSION_TERMS,
                f"method.regression_term={regression_term!r} is not valid: choose 'official' (no term for "
                f"regression, as the fairseq code) or 'paper' (λ·MSE between clean and noisy predictions)")
        self.noise, self.sigma, self.lam = noise, float(sigma), float(lam)
        self.regression_term, self.spectral_norm_head = regression_term, bool(spectral_norm_head)
        self.embeddings_path = ""
        self.head_name: str | None = None
        self._term = TermLog("train/r3f_term")

    # -- setup ----------------------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, backbone: DictConfig) -> None:
        path = backbone.get("word_embeddings")
        require(bool(path), f"backbone '{backbone.name}' has no `word_embeddings` entry; R3F needs the word-embedding "
                            f"module path (e.g. bert.embeddings.word_embeddings) in the backbone config", BackboneError)
        try:
            model.get_submodule(path)
        except AttributeError:
            raise BackboneError(f"backbone '{backbone.name}': word_embeddings {path!r} not found in "
                                f"{type(model).__name__}; fix the backbone config") from None
        self.embeddings_path = path
        if self.spectral_norm_head:
            self.head_name, head = head_projection(model, backbone)
            spectral_norm(head)

    def on_fit_start(self, ctx: MethodContext) -> None:
        dtype = ctx.model.get_submodule(self.embeddings_path).weight.dtype
        require(dtype == torch.float32,
                f"R3F needs fp32 word embeddings but they are {dtype}: noise of sigma={self.sigma} vanishes in "
                f"low-precision embeddings. Keep fp32 weights with low-precision autocast (trainer.precision=bf16-mixed "
                f"or 16-mixed) instead of a *-true precision")

    # -- the noisy pass -------------------------------------------------------------------------------------------
    def sample_noise(self, embeddings: torch.Tensor) -> torch.Tensor:
        """fp32 noise shaped like `embeddings`: U(−σ, σ) or N(0, σ²)."""
        shape, device = embeddings.shape, embeddings.device
        if self.noise == "uniform":
            return (torch.rand(shape, device=device, dtype=torch.float32) * 2 - 1) * self.sigma
        return torch.randn(shape, device=device, dtype=torch.float32) * self.sigma

    @contextmanager
    def _noisy_second_half(self, model: nn.Module) -> Iterator[None]:
        """While active, the word embeddings of the second half of the batch become `E.detach() + z`: the embedding
        table gets no gradient from the noisy pass (every other parameter does)."""
        def perturb(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
            clean, other = output.chunk(2)
            noisy = add_noise(other.detach(), self.sample_noise(other))
            return torch.cat([clean.to(noisy.dtype), noisy])

        handle = model.get_submodule(self.embeddings_path).register_forward_hook(perturb)
        try:
            yield
        finally:
            handle.remove()

    def term_applies(self, ctx: MethodContext) -> bool:
        """False where R3F adds nothing and runs no noisy pass: λ = 0, or regression with `official`."""
        return self.lam > 0 and not (ctx.task_kind == "regression" and self.regression_term == "official")

    def consistency_term(self, ctx: MethodContext, clean_logits: torch.Tensor, noisy_logits: torch.Tensor) -> torch.Tensor:
        """The unweighted R3F term between the clean and the noisy prediction."""
        if ctx.task_kind == "regression":
            return squared_difference(clean_logits, noisy_logits)
        return symmetric_kl(clean_logits, noisy_logits)

    # -- hooks ----------------------------------------------------------------------------------------------------
    def training_forward(self, ctx: MethodContext, batch: dict[str, torch.Tensor]) -> Any:
        if not self.term_applies(ctx):
            return ctx.forward(batch)
        with self._noisy_second_half(ctx.model):
            labels, clean, noisy = paired_forward(ctx, batch)
        return TwoPasses(supervised_loss(clean, labels, ctx.task_kind == "regression"), clean, noisy)

    def training_loss(self, ctx: MethodContext, batch: dict[str, torch.Tensor], outputs: Any, loss: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, TwoPasses):
            return loss
        term = self.consistency_term(ctx, outputs.logits, outputs.second_logits)
        self._term.add(ctx, term, batch["labels"].shape[0])
        return loss + self.lam * term

    def report(self, ctx: MethodContext) -> dict[str, Any]:
        out: dict[str, Any] = {
            "noise": self.noise, "sigma": self.sigma, "lambda": self.lam, "regression_term": self.regression_term,
            "spectral_norm_head": self.spectral_norm_head,
            "term_mean": self._term.mean,
            "noisy_passes": self._term.count,
        }
        if self.head_name is not None:
            with torch.no_grad():
                weight = ctx.model.get_submodule(self.head_name).weight.float()
                out["head"] = self.head_name
                out["head_spectral_norm"] = float(torch.linalg.matrix_norm(weight, ord=2))
        return out
