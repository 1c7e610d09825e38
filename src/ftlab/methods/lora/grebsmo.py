"""GreBsmo robust PCA (Zhou & Tao 2013) and DSEE's index set Omega: where a pre-trained W keeps its sparse residual.

W ~ U V + S with U orthonormal (m x k), rank k grown greedily, S hard-thresholded; DSEE (its Sec. 3.2, App. A.2)
takes Omega = the positions of the c largest |S|. Constants follow the official code (docs/methods/lora.md#grebsmo, DSEE
run_glue.py): V starts as one N(0, 1) row; 100 outer iterations, each resetting S to 0 and running 2 inner rounds of

    U <- Q of QR((W - S) V^T),   V <- U^T (W - S),   S <- (W - U V) * 1{|W - U V| >= lambda},  lambda = 0.01

then appending the first 5 rows of the R factor of QR(W - U V - S) to V (rank + 5). Written here because no library
ships GreBsmo; torch.linalg.qr (reduced) replaces the deprecated torch.qr.

One deliberate difference: the rank stops growing at 2/3 of min(m, n). The official constants reach rank 496 on
BERT-base's 768 x 768 matrices (about 2/3), but on smaller matrices (MiniLM's 384, tiny test models) the rank would
reach full, U V would absorb W entirely, S would be 0 and Omega arbitrary. Outer iterations past the cap keep
refining at that rank. Omega takes exactly c positions (topk), not kthvalue + ">=", which returns more than c on ties.
Equal-shape matrices (all q and v of a model) are decomposed as one batch: batched QR, far fewer kernel launches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ConfigError

OMEGA_METHODS = ("grebsmo", "magnitude", "random")


@dataclass
class GreBsmoResult:
    U: torch.Tensor  # (..., m, k), orthonormal columns
    V: torch.Tensor  # (..., k, n)
    S: torch.Tensor  # (..., m, n), hard-thresholded residual
    rank: int


def grebsmo(
    W: torch.Tensor,
    lam: float = 0.01,
    outer_iters: int = 100,
    inner_iters: int = 2,
    rank_step: int = 5,
    max_rank: int | None = None,
    generator: torch.Generator | None = None,
) -> GreBsmoResult:
    """Decompose W (m x n, or a batch (b, m, n) of equal-shape matrices, decomposed independently and at once) into
    U V + S; see the module docstring. `max_rank` defaults to 2/3 of min(m, n)."""
    W = W.detach().float()
    m, n = W.shape[-2:]
    cap = max_rank if max_rank is not None else max(1, 2 * min(m, n) // 3)
    V = torch.randn(*W.shape[:-2], 1, n, generator=generator).to(W.device)
    U = S = torch.zeros(0)
    for outer in range(outer_iters):
        S = torch.zeros_like(W)
        for _ in range(inner_iters):
            U = torch.linalg.qr((W - S) @ V.mT).Q
            V = U.mT @ (W - S)
            S = W - U @ V
            S = S * (S.abs() >= lam)
        grow = min(rank_step, cap - V.shape[-2])
        if outer < outer_iters - 1 and grow > 0:
            R = torch.linalg.qr(W - U @ V - S).R
            V = torch.cat([V, R[..., :grow, :]], -2)
    return GreBsmoResult(U=U, V=V, S=S, rank=U.shape[-1])


def top_positions(scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the `count` largest entries of each (m, n) score matrix in (..., m, n); exactly `count` each,
    ties broken by topk; sorted by row, then column."""
    n = scores.shape[-1]
    flat = torch.topk(scores.flatten(-2), count).indices.sort(-1).values
    return flat // n, flat % n


def omega_indices(
    W: torch.Tensor, count: int, method: str = "grebsmo", generator: torch.Generator | None = None, **grebsmo_kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Omega of a pre-trained matrix (out x in), or of each in a batch (b, out, in): `count` (row, col) positions each.

    grebsmo: largest |S| of the GreBsmo residual (DSEE); magnitude: largest |W| (the code's `omp`); random: uniform
    positions (the code's `rp`).
    """
    m, n = W.shape[-2:]
    if count > m * n:
        raise ConfigError(f"|Omega|={count} is larger than the {m} x {n} matrix; lower method.num_sparse")
    if method == "grebsmo":
        scores = grebsmo(W, generator=generator, **grebsmo_kwargs).S.abs()
    elif method == "magnitude":
        scores = W.detach().float().abs()
    elif method == "random":
        scores = torch.rand(W.shape, generator=generator).to(W.device)
    else:
        raise ConfigError(f"omega={method!r} is not valid; choose one of {list(OMEGA_METHODS)}")
    return top_positions(scores, count)
