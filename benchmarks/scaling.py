"""How a CPU training step scales: MiniLM samples/s and MFU vs sequence length and batch size, and step time vs model
width for random-init BERT shapes (tiny -> MiniLM -> BERT-base) against their FLOPs. Writes results/scaling.md and
results/scaling.png.

    python benchmarks/scaling.py [--steps 3] [--lengths 16 32 64 128 256 512] [--batches 8 16 32 64 128]

The step is the framework's on CPU: bf16 autocast, ftlab.kernels' dropout and attention, backward, clipping at 1,
fused AdamW; batches of random token ids with no padding (every token is real). Each configuration is timed right after
a matmul-peak probe (best of three timings of 2048^3 bf16 products), and its MFU is taken against that probe, so load that drifts during the sweep
moves both. Model FLOPs per token: 6 x non-embedding parameters + 12 x layers x hidden x sequence length.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from ftlab.backbones import load_model
from ftlab.config import PROJECT_ROOT
from ftlab.kernels import use_cpu_kernels

from throughput import compose, flops_per_token

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# random-init BERT shapes from tiny to BERT-base: (name, layers, hidden, heads, intermediate)
WIDTHS = [("tiny 2x128", 2, 128, 2, 512), ("mini 4x256", 4, 256, 4, 1024), ("MiniLM 6x384", 6, 384, 12, 1536),
          ("small 4x512", 4, 512, 8, 2048), ("medium 8x512", 8, 512, 8, 2048), ("base 12x768", 12, 768, 12, 3072)]


def peak(reps: int = 4, trials: int = 3, n: int = 2048) -> float:
    """The best of `trials` timings of `reps` 2048^3 bf16 products: a peak is a maximum, and one slow trial (another
    process waking) would otherwise read as a low peak and an MFU above 100 %."""
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def step_seconds(model: torch.nn.Module, batch: int, length: int, steps: int) -> float:
    """Median seconds of `steps` timed training steps after one untimed one."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(1000, 20000, (batch, length))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (batch,))
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(model: torch.nn.Module, batch: int, length: int, steps: int) -> dict:
    p = peak()
    seconds = step_seconds(model, batch, length, steps)
    flops = flops_per_token(model, length) * batch * length
    return {"batch": batch, "length": length, "seconds": seconds, "samples_s": batch / seconds,
            "gflop_step": flops / 1e9, "mfu": flops / seconds / p, "peak": p / 1e9}


def minilm() -> torch.nn.Module:
    model = load_model(compose([]).backbone, attn_implementation="eager", num_labels=2)
    use_cpu_kernels(model)
    return model


def random_bert(layers: int, hidden: int, heads: int, intermediate: int) -> torch.nn.Module:
    config = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                        intermediate_size=intermediate, vocab_size=30522, max_position_embeddings=512, num_labels=2,
                        attn_implementation="eager")
    model = BertForSequenceClassification(config)
    use_cpu_kernels(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = minilm()
    by_length = [measure(model, 32, n, args.steps) for n in args.lengths]
    by_batch = [measure(model, b, 128, args.steps) for b in args.batches]
    by_width = []
    for name, *shape in WIDTHS:
        row = measure(random_bert(*shape), 32, 128, args.steps)
        by_width.append({"model": name, **row})
        print(name, f"{row['seconds']:.2f} s", flush=True)
    write(args.out, by_length, by_batch, by_width, args.steps)


def write(out: Path, by_length: list[dict], by_batch: list[dict], by_width: list[dict], steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# Training-step scaling on this CPU (benchmarks/scaling.py)", "",
             f"2 threads, bf16 autocast, ftlab.kernels, fused AdamW, no padding; median of {steps} steps; MFU against the best of three "
             "2048^3 bf16 matmul probes run just before each row.", ""]
    for title, rows, key in (("MiniLM, batch 32, vs sequence length", by_length, "length"),
                             ("MiniLM, length 128, vs batch", by_batch, "batch")):
        lines += [f"## {title}", "", f"| {key} | step s | samples/s | GFLOP/step | MFU | peak GFLOP/s |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r[key]} | {r['seconds']:.3f} | {r['samples_s']:.1f} | {r['gflop_step']:.0f} | {r['mfu']:.1%} | "
                  f"{r['peak']:.0f} |" for r in rows]
        lines.append("")
    lines += ["## Random-init BERT shapes, batch 32, length 128", "",
              "| model | step s | GFLOP/step | s per TFLOP | MFU |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['seconds']:.3f} | {r['gflop_step']:.0f} | {r['seconds'] / r['gflop_step'] * 1e3:.2f} | "
              f"{r['mfu']:.1%} |" for r in by_width]
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, rows, key in ((axes[0], by_length, "length"), (axes[1], by_batch, "batch")):
        ax.plot([r[key] for r in rows], [r["samples_s"] for r in rows], "o-", label="samples/s")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(key)
        ax.set_ylabel("samples/s")
        twin = ax.twinx()
        twin.plot([r[key] for r in rows], [100 * r["mfu"] for r in rows], "s--", color="C1", label="MFU %")
        twin.set_ylabel("MFU % (real tokens)")
        twin.set_ylim(0, 100)
        ax.set_title(f"MiniLM, {'batch 32' if key == 'length' else 'length 128'}")
    ax = axes[2]
    flops = [r["gflop_step"] for r in by_width]
    ax.loglog(flops, [r["seconds"] for r in by_width], "o-", label="measured step")
    best = min(r["seconds"] / r["gflop_step"] for r in by_width)
    ax.loglog(flops, [f * best for f in flops], ":", color="gray", label="proportional to FLOPs")
    for r in by_width:
        ax.annotate(r["model"], (r["gflop_step"], r["seconds"]), fontsize=7)
    ax.set_xlabel("GFLOP per step")
    ax.set_ylabel("step seconds")
    ax.set_title("BERT shapes, batch 32 x 128")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    print((out / "scaling.md").read_text())


if __name__ == "__main__":
    main()
