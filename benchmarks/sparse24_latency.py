"""2:4 inference latency per layer shape: dense vs torch.sparse.to_sparse_semi_structured, on a CUDA GPU (sm80+).

    python benchmarks/sparse24_latency.py [--backbone minilm] [--tokens 4096] [--dtype float16]

Takes the block linears of a backbone (MiniLM offline by default) plus the BERT-base and BERT-large block shapes,
prunes each weight to 2:4 along its input dim (ftlab.methods.sparsity.masks.project_nm, the pattern ASP and NxM produce), converts
it with `torch.sparse.to_sparse_semi_structured` and times `F.linear` on a (tokens, in) activation, dense weight vs
sparse weight, with CUDA events. Shapes the conversion rejects are listed with the reason. Without a CUDA device of
compute capability >= 8.0 it measures nothing, says so and exits 0: no speed-up is ever claimed unmeasured.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
import torch.nn.functional as F

from ftlab.methods.sparsity.masks import project_nm

PAPER_SHAPES = {  # (out, in) of the six block linears: q/k/v/attn-out, FFN1, FFN2
    "bert-base": [(768, 768), (3072, 768), (768, 3072)],
    "bert-large": [(1024, 1024), (4096, 1024), (1024, 4096)],
}


def skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "skipped: needs CUDA sm80+ (no CUDA device; torch.sparse semi-structured kernels are GPU-only)"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"skipped: needs CUDA sm80+ (found sm{major}{minor}: no sparse tensor cores)"
    return None


def backbone_shapes(name: str) -> list[tuple[int, int]]:
    from hydra import compose, initialize_config_dir

    from ftlab.backbones import as_out_in, load_model
    from ftlab.config import CONF_DIR, register_resolvers
    from ftlab.methods.sparsity.masks import target_layers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"backbone={name}"])
    model = load_model(cfg.backbone, num_labels=2)
    return [tuple(as_out_in(l, l.weight).shape) for l in target_layers(model, cfg.backbone).values()]


def time_ms(fn: Any, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


@torch.inference_mode()
def measure(shape: tuple[int, int], tokens: int, dtype: torch.dtype, iters: int, warmup: int) -> dict[str, Any]:
    from torch.sparse import to_sparse_semi_structured

    out_dim, in_dim = shape
    weight = project_nm(torch.randn(out_dim, in_dim, device="cuda", dtype=dtype), 2, 4).contiguous()
    x = torch.randn(tokens, in_dim, device="cuda", dtype=dtype)
    try:
        sparse = to_sparse_semi_structured(weight)
    except (RuntimeError, ValueError, NotImplementedError) as err:
        return {"shape": shape, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}
    dense_out, sparse_out = F.linear(x, weight), F.linear(x, sparse)
    max_err = float((dense_out.float() - sparse_out.float()).abs().max())
    dense_ms = time_ms(lambda: F.linear(x, weight), iters, warmup)
    sparse_ms = time_ms(lambda: F.linear(x, sparse), iters, warmup)
    return {"shape": shape, "dense_ms": dense_ms, "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms,
            "max_abs_diff": max_err}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm",
                        help="ftlab backbone whose block-linear shapes to add ('' = none)")
    parser.add_argument("--tokens", type=int, default=32 * 128, help="rows of the activation: batch x sequence length")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    reason = skip_reason()
    if reason:
        print(reason)
        return 0
    shapes: dict[tuple[int, int], str] = {}
    if args.backbone:
        for shape in backbone_shapes(args.backbone):
            shapes.setdefault(shape, args.backbone)
    for family, family_shapes in PAPER_SHAPES.items():
        for shape in family_shapes:
            shapes.setdefault(shape, family)
    dtype = getattr(torch, args.dtype)
    print(f"{torch.cuda.get_device_name()} (sm{''.join(map(str, torch.cuda.get_device_capability()))}), torch "
          f"{torch.__version__}, {args.dtype}, activation ({args.tokens}, in), {args.iters} iterations")
    print(f"{'model':11s} {'out x in':>12s} {'dense ms':>9s} {'2:4 ms':>9s} {'speed-up':>9s} {'max |diff|':>10s}")
    for shape, source in shapes.items():
        r = measure(shape, args.tokens, dtype, args.iters, args.warmup)
        label = f"{shape[0]}x{shape[1]}"
        if "error" in r:
            print(f"{source:11s} {label:>12s}  not converted: {r['error']}")
        else:
            print(f"{source:11s} {label:>12s} {r['dense_ms']:9.4f} {r['sparse_ms']:9.4f} {r['speedup']:8.2f}x "
                  f"{r['max_abs_diff']:10.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
