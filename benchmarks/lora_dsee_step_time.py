"""Training step time of full fine-tuning vs LoRA vs DSEE phase 1 on MiniLM, real RTE batches of 32, bf16 autocast.

    .venv/bin/python benchmarks/lora_dsee_step_time.py                 # 2 threads, 2 warm-up + 6 timed steps each
    .venv/bin/python benchmarks/lora_dsee_step_time.py --steps 20 --threads 16 --device cuda

One optimizer step = forward, backward, gradient clipping at 1.0 and AdamW, as in a run (ftlab.tasks.module), on the same
batches for every method (random RTE training batches, dynamic padding to a multiple of 8). LoRA and DSEE use the
paper's r = 16, alpha = 32 on q and v; DSEE adds |Omega| = 16 per matrix. Where Omega lies does not change the step
time, so it is taken by magnitude by default (`--omega grebsmo` to include and print GreBsmo's one-off cost).
Prints the median and mean step time per method and the ratio to fine-tuning.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ftlab.backbones import load_model, load_tokenizer
from ftlab.config import CONF_DIR
from ftlab.methods.base import Method
from ftlab.methods.lora.dsee import DSEE
from ftlab.methods.lora.lora import LoRA
from ftlab.tasks.classification.datamodule import ClassificationDataModule


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def batches(cfg, count: int) -> list[dict[str, torch.Tensor]]:
    tokenizer = load_tokenizer(cfg.backbone)
    cache = Path(cfg.paths.cache_dir) / "tokenized" if cfg.paths.cache_dir else None
    data = ClassificationDataModule(cfg.task, cfg.data, tokenizer, Path(cfg.paths.data_dir), cache, 32, seed=1)
    loader = iter(data.train_dataloader())
    return [{k: v for k, v in next(loader).items() if k != "idx"} for _ in range(count)]


def time_method(name: str, method: Method, cfg, data: list[dict], warmup: int, device: str) -> dict[str, float]:
    torch.manual_seed(1)
    model = load_model(cfg.backbone, num_labels=2)
    method.setup(model, cfg.backbone)
    model.to(device).train()
    setup = time.perf_counter()
    if isinstance(method, DSEE):
        method.initialise_omega(model)
    setup = time.perf_counter() - setup
    params = [p for _, p in method.parameters_to_train(model)]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=False)
    autocast = torch.autocast(device, dtype=torch.bfloat16) if device in ("cpu", "cuda") else nullcontext()
    times = []
    for i, batch in enumerate(data):
        batch = {k: v.to(device) for k, v in batch.items()}
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "method": name, "median_s": statistics.median(times), "mean_s": statistics.fmean(times),
        "trainable_params": sum(p.numel() for p in params), "setup_s": setup, "steps": len(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--omega", default="magnitude", choices=["magnitude", "grebsmo", "random"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose(["backbone=minilm", "task=rte"])
    data = batches(cfg, args.warmup + args.steps)
    tokens = sum(int(b["attention_mask"].numel()) for b in data[args.warmup:]) / args.steps
    methods = {
        "finetune": Method(),
        "lora r=16": LoRA(r=16, alpha=32, init="gaussian"),
        "dsee phase 1 (r=16, |Omega|=16)": DSEE(r=16, alpha=32, num_sparse=16, prune="none", omega=args.omega),
    }
    results = []
    for name, method in methods.items():
        results.append(time_method(name, method, cfg, data, args.warmup, args.device))
        print(f"{name}: median {results[-1]['median_s']:.3f} s/step", flush=True)
    base = results[0]["median_s"]
    print(f"MiniLM-L6 on RTE, batch 32 (mean padded length {tokens / 32:.0f}), bf16 autocast, {args.device}, "
          f"{args.threads} threads, {args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'method':34s} {'median s/step':>14s} {'mean':>8s} {'vs finetune':>12s} {'trainable':>11s} {'one-off s':>10s}")
    for r in results:
        print(f"{r['method']:34s} {r['median_s']:14.3f} {r['mean_s']:8.3f} {r['median_s'] / base:11.2f}x "
              f"{r['trainable_params']:11d} {r['setup_s']:10.1f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
