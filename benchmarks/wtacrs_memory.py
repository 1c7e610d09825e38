"""Activation memory and step time of WTA-CRS vs full fine-tuning (and LoRA vs LoRA+WTA-CRS), measured on real RTE.

    python benchmarks/wtacrs_memory.py [--steps 6] [--batch-size 32] [--threads 2] [--out results]
    python benchmarks/wtacrs_memory.py --setups t5-base-shape --batch-size 10 --out /tmp/t5   # the paper's T5-base shapes
    python benchmarks/wtacrs_memory.py --device cuda --out /tmp/gpu   # on a GPU: + each step's CUDA allocator peak

For each setup (MiniLM-L6 with its real weights; the random tiny T5; random-init BERT-base and T5-base shapes, memory
only) and each method, at the same batch (the first,
longest, length-grouped batch of real RTE training rows) and bf16 autocast as in training:
  replaced layers   bytes autograd saves inside the layers WTA-CRS samples (attn_out, ffn1, ffn2 for full FT; the
                    adapted q, k, v modules for LoRA), measured with torch.autograd.graph.saved_tensors_hooks
  whole step        bytes of every distinct tensor saved during the forward = the step's saved-tensor peak
                    (parameters and their autocast copies excluded: they do not grow with the batch); measured on
                    a forward whose graph is then dropped
  step time         CPU seconds (process time) of forward + backward + AdamW step: on a shared machine wall time
                    mostly measures the other processes; median wall seconds are listed too. Methods of one
                    comparison group are interleaved round by round and the ratio is the median over rounds of the
                    per-round ratio to the baseline (min-max listed); the first round is warm-up
                    (it also fills the WTA-CRS caches: later rounds sample with p ∝ ‖X‖·‖∇Z‖, as from epoch 2 on)
  max batch         the largest batch whose saved-tensor peak + static memory (weights, grads, AdamW states) fits
                    the cap: saved bytes are measured at two batch sizes (8 and the full batch) and extrapolated
                    linearly (the idea of the paper's Figure 13, by this measurement rather than GPU peak memory)
  CUDA step peak    (--device cuda) the allocator's peak during forward + backward + AdamW step above what was
                    allocated before it (activations, gradients, temporaries), median over the timed rounds
Writes <out>/wtacrs_memory.json and .md (`--from-json` re-renders the .md of a saved JSON); `python -m
ftlab.report.plots.wtacrs_memory` draws the bars.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ftlab.backbones import block_linears, load_model, load_tokenizer
from ftlab.config import CONF_DIR, PROJECT_ROOT, register_resolvers
from ftlab.methods.base import Method
from ftlab.methods.lora.lora import LoRA
from ftlab.methods.wtacrs.method import WTACRS, LoRAWTACRS
from ftlab.tasks.classification.datamodule import ClassificationDataModule
from ftlab.telemetry.saved_tensors import SavedTensorMeter, SavedTensors

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA_DIR = Path(os.environ.get("FTLAB_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))
MIB = 2**20

# setup -> backbone, config overrides, saved-tensor cap for the max-batch column (MiB, on top of static memory), and
# whether steps are timed. The "-shape" setups are random-init models at the paper's architectures (no BERT or T5
# weights offline): saved-activation memory depends on the shapes only, so they show what the paper's models save;
# they are not timed (a T5-base step takes tens of seconds on this CPU).
SETUPS = {
    "minilm": {"backbone": "minilm", "overrides": [], "cap_mib": 2048, "timed": True},
    "tiny-t5": {"backbone": "tiny-t5", "overrides": [], "cap_mib": 256, "timed": True},
    "bert-base-shape": {"backbone": "tiny-bert", "cap_mib": 8192, "timed": False, "overrides": [
        "backbone.random_init.hidden_size=768", "backbone.random_init.num_hidden_layers=12",
        "backbone.random_init.num_attention_heads=12", "backbone.random_init.intermediate_size=3072"]},
    "t5-base-shape": {"backbone": "tiny-t5", "cap_mib": 8192, "timed": False, "overrides": [
        "backbone.random_init.d_model=768", "backbone.random_init.d_kv=64", "backbone.random_init.num_heads=12",
        "backbone.random_init.d_ff=3072", "backbone.random_init.num_layers=12",
        "backbone.random_init.num_decoder_layers=12"]},
}
FULL_ROLES = ["attn_out", "ffn1", "ffn2"]
LORA_ROLES = ["q", "k", "v"]


def methods() -> dict[str, tuple[Any, list[str], str]]:
    """label -> (factory, roles whose modules are "the replaced layers", baseline label for the ratios)."""
    return {
        "Full FT": (Method, FULL_ROLES, "Full FT"),
        # nothing sampled, but ftlab's attention function with its fused dropout (bool mask, not CPU's float noise):
        # separates what the fused dropout saves from what sampling saves
        "Full FT, fused dropout": (lambda: WTACRS(budget=1.0), FULL_ROLES, "Full FT"),
        "WTA-CRS@0.3": (lambda: WTACRS(budget=0.3), FULL_ROLES, "Full FT"),
        # the paper's level 2 minus QKᵀ sampling (method.sample_scores=false): what sampling Q's and K's gradients buys
        "WTA-CRS@0.3, QKᵀ exact": (lambda: WTACRS(budget=0.3, sample_scores=False), FULL_ROLES, "Full FT"),
        "WTA-CRS@0.1": (lambda: WTACRS(budget=0.1), FULL_ROLES, "Full FT"),
        "LoRA": (lambda: LoRA(r=32, alpha=32, dropout=0.1, roles=LORA_ROLES), LORA_ROLES, "LoRA"),
        # the same LoRA computed by lora_wtacrs's layer with nothing sampled: isolates the fused-dropout saving
        "LoRA, fused dropout": (lambda: LoRAWTACRS(budget=1.0), LORA_ROLES, "LoRA"),
        "LoRA+WTA-CRS@0.3": (lambda: LoRAWTACRS(budget=0.3), LORA_ROLES, "LoRA"),
        "LoRA+WTA-CRS@0.1": (lambda: LoRAWTACRS(budget=0.1), LORA_ROLES, "LoRA"),
    }


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def first_batch(cfg, tokenizer, batch_size: int) -> dict[str, torch.Tensor]:
    cache = Path(cfg.paths.cache_dir) / "tokenized"
    data = ClassificationDataModule(cfg.task, cfg.data, tokenizer, DATA_DIR, cache, batch_size, seed=0)
    data.setup()
    return next(iter(data.train_dataloader()))  # length-grouped: the first batch holds the longest sequence


class Runner:
    """One model + method + AdamW, stepping on a fixed batch."""

    def __init__(self, cfg, label: str, factory: Any, roles: list[str], device: torch.device = torch.device("cpu")):
        torch.manual_seed(0)
        self.model = load_model(cfg.backbone, num_labels=cfg.task.num_labels)
        self.method = factory()
        self.method.setup(self.model, cfg.backbone)
        self.device = device
        self.model.to(device).train()
        names = list(block_linears(self.model, cfg.backbone, roles))
        self.watch = {n: self.model.get_submodule(n) for n in names}
        params = [p for _, p in self.method.parameters_to_train(self.model)]
        self.optimizer = torch.optim.AdamW(params, lr=1e-5, fused=False)
        self.label = label
        self.static_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters()) + sum(
            p.numel() * p.element_size() * 3 for p in params)  # weights + grads + AdamW exp_avg, exp_avg_sq
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.cuda_peaks: list[int] = []  # bytes above what was allocated when the step began

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        """Forward + backward + AdamW step, timed."""
        inputs = {k: v for k, v in batch.items() if k != "idx"}
        self.method.on_train_batch_start(None, batch)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated()
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            loss = self.model(**inputs).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            self.cuda_peaks.append(torch.cuda.max_memory_allocated() - resident)
        self.times.append(time.perf_counter() - start)
        self.cpu_times.append(time.process_time() - cpu_start)

    def saved(self, batch: dict[str, torch.Tensor]) -> SavedTensors:
        """What a training forward saves for backward (the graph is dropped unused: saved tensors are all known once
        the forward ends)."""
        inputs = {k: v for k, v in batch.items() if k != "idx"}
        self.method.on_train_batch_start(None, batch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16), SavedTensorMeter(self.model, self.watch) as meter:
            self.model(**inputs)
        return meter.result


def rows(batch: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {k: v[:n] for k, v in batch.items()}


def bench_setup(name: str, batch_size: int, steps: int, device: torch.device = torch.device("cpu")) -> dict[str, Any]:
    setup = SETUPS[name]
    cap_mib, steps = setup["cap_mib"], steps if setup["timed"] else 0
    cfg = compose([f"backbone={setup['backbone']}", *setup["overrides"], "task=rte", f"paths.data_dir={DATA_DIR}"])
    tokenizer = load_tokenizer(cfg.backbone)
    batch = {k: v.to(device) for k, v in first_batch(cfg, tokenizer, batch_size).items()}
    small = rows(batch, 8)
    out: dict[str, Any] = {"backbone": name, "timed": setup["timed"], "batch": batch_size, "positions": int(batch["input_ids"].shape[1]),
                           "real_tokens": int(batch["attention_mask"].sum()), "cap_mib": cap_mib, "methods": {},
                           **({"device": torch.cuda.get_device_name(device)} if device.type == "cuda" else {})}
    groups: dict[str, list[str]] = {}
    for label, (_, _, baseline) in methods().items():
        groups.setdefault(baseline, []).append(label)
    for baseline, labels in groups.items():  # one comparison group in memory at a time
        runners = {label: Runner(cfg, label, methods()[label][0], methods()[label][1], device) for label in labels}
        for label, runner in runners.items():
            full, part = runner.saved(batch), runner.saved(small)
            slope = (full.total_bytes - part.total_bytes) / (batch_size - 8)
            intercept = full.total_bytes - slope * batch_size
            budget = cap_mib * MIB - runner.static_bytes - intercept
            out["methods"][label] = {
                "replaced_layers_bytes": full.watched_total, "whole_step_saved_bytes": full.total_bytes,
                "saved_bytes_at_batch_8": part.total_bytes, "static_bytes": runner.static_bytes,
                "max_batch_under_cap": max(int(budget // slope), 0) if slope > 0 else None,
                "largest_saved": full.largest(6),
            }
        for _ in range(steps + 1 if steps else 0):  # interleaved rounds (the first is warm-up): load hits all alike
            for runner in runners.values():
                runner.step(batch)
        base = out["methods"][baseline]
        base_cpu = runners[baseline].cpu_times[1:]
        for label, runner in runners.items():
            m = out["methods"][label]
            m["vs_baseline"] = baseline
            m["replaced_ratio"] = m["replaced_layers_bytes"] / base["replaced_layers_bytes"]
            m["whole_step_ratio"] = m["whole_step_saved_bytes"] / base["whole_step_saved_bytes"]
            if steps:
                m["step_seconds_median"] = statistics.median(runner.times[1:])
                m["step_cpu_seconds_median"] = statistics.median(runner.cpu_times[1:])
                # per round (same batch, adjacent in time), then the median: the VM's speed drifts between rounds
                ratios = [t / b for t, b in zip(runner.cpu_times[1:], base_cpu)]
                m["step_time_ratio"] = statistics.median(ratios)
                m["step_time_ratio_range"] = [min(ratios), max(ratios)]
            if runner.cuda_peaks[1:]:
                m["cuda_step_peak_bytes"] = statistics.median(runner.cuda_peaks[1:])
                m["cuda_step_peak_ratio"] = m["cuda_step_peak_bytes"] / statistics.median(runners[baseline].cuda_peaks[1:])
        del runners
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _release_freed_memory()
    return out


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise; the machine is shared)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# WTA-CRS activation memory and step time (benchmarks/wtacrs_memory.py)", ""]
    for r in results:
        shape = "" if r["timed"] else " (random-init, the paper's shapes; memory only, not timed)"
        lines += [f"## {r['backbone']}{shape}: real RTE, batch {r['batch']} x {r['positions']} positions "
                  f"({r['real_tokens']} real tokens), bf16 autocast, {r.get('device', 'CPU')}", "",
                  f"| method | replaced layers MiB (ratio) | whole-step saved MiB (ratio) | + weights, grads, AdamW MiB "
                  f"(ratio) | step CPU s (ratio, per-round min-max) | step wall s | max batch, {r['cap_mib']} MiB cap |",
                  "|---|---|---|---|---|---|---|"]
        for label, m in r["methods"].items():
            spread = m.get("step_time_ratio_range")
            spread = f", {spread[0]:.2f}-{spread[1]:.2f}" if spread else ""
            timing = (f"{m['step_cpu_seconds_median']:.2f} ({m['step_time_ratio']:.2f}x{spread}) | {m['step_seconds_median']:.2f}"
                      if r["timed"] else "— | —")
            base = r["methods"][m["vs_baseline"]]
            total, base_total = (x["whole_step_saved_bytes"] + x["static_bytes"] for x in (m, base))
            lines.append(
                f"| {label} | {m['replaced_layers_bytes'] / MIB:.2f} ({m['replaced_ratio']:.2f}x) | "
                f"{m['whole_step_saved_bytes'] / MIB:.1f} ({m['whole_step_ratio']:.2f}x) | "
                f"{total / MIB:.1f} ({total / base_total:.2f}x) | {timing} | {m['max_batch_under_cap']} |")
        lines += ["", f"Ratios are against {', '.join(sorted({m['vs_baseline'] for m in r['methods'].values()}))} "
                      f"(WTA-CRS vs Full FT, LoRA+WTA-CRS vs LoRA). Whole-step saved = the activations autograd holds "
                      f"when the forward ends (the step's peak of batch-dependent memory); the next column adds the "
                      f"fp32 weights, the trained parameters' gradients and AdamW's two moments, which do not shrink "
                      f"with sampling (so its ratio tends to the saved-tensor ratio as the batch grows).", ""]
        cuda = [(label, m) for label, m in r["methods"].items() if "cuda_step_peak_bytes" in m]
        if cuda:
            lines += ["CUDA allocator peak of a training step above the memory resident before it (MiB, ratio to the "
                      "baseline): " + "; ".join(f"{label} {m['cuda_step_peak_bytes'] / MIB:.1f} "
                                                f"({m['cuda_step_peak_ratio']:.2f}x)" for label, m in cuda), ""]
        w = r["methods"]["WTA-CRS@0.3"]
        checks = [("replaced layers <= 0.35x", w["replaced_ratio"] <= 0.35), ("whole step <= 0.6x", w["whole_step_ratio"] <= 0.6)]
        if r["timed"]:
            checks.append(("step time <= 1.2x", w["step_time_ratio"] <= 1.2))
        lines += ["Issue targets for WTA-CRS@0.3 vs Full FT: " + ", ".join(f"{n}: {'met' if ok else 'MISSED'}" for n, ok in checks), ""]
        for label in ("Full FT", "WTA-CRS@0.3"):
            lines += [f"Largest saved tensors under {label} (shape, dtype, produced by, count, MiB):", ""]
            lines += [f"- {g['shape']} {g['dtype']} {g['produced_by']} x{g['count']}: {g['bytes'] / MIB:.1f}"
                      for g in r["methods"][label]["largest_saved"]]
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed rounds per method (after one warm-up round)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="1: CPU time is compute, not spin-waiting threads")
    parser.add_argument("--setups", nargs="+", default=["minilm", "tiny-t5"], choices=list(SETUPS),
                        help="the -shape setups take ~5 min each at batch 10 on 2 cores")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results")
    parser.add_argument("--from-json", type=Path, help="re-render the tables of an earlier run's JSON, measuring nothing")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: the model and batch on the GPU, plus each step's CUDA allocator peak")
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        (args.out / "wtacrs_memory.md").write_text(markdown(results))
        print(markdown(results))
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    results = [bench_setup(s, args.batch_size, args.steps, device) for s in args.setups]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wtacrs_memory.json").write_text(json.dumps(results, indent=1))
    (args.out / "wtacrs_memory.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
