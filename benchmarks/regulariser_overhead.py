"""Step time and extra memory of the DPS paper's regularisers against plain fine-tuning (its App. F Table 3 idea).

    python benchmarks/regulariser_overhead.py                       # MiniLM, real RTE, batch 32, bf16 autocast, CPU
    python benchmarks/regulariser_overhead.py --steps 6 --repeats 2 --out results/regulariser_overhead.md

For each method whose conf/method/<name>.yaml exists (finetune, mixout, dps, dps_mix, r3f, r4f, rdrop, reinit,
child_tuning_d), the real training path runs — Hydra config, `method.setup`, the Lightning module and its hooks,
AdamW — for a few optimizer steps on the same real RTE batches, and we measure:

* **step time**: CPU time of the process for each training batch (forward, method loss, backward, method hooks,
  optimizer step), median over the measured steps after `--warmup` unmeasured ones; the ratio is the median of the
  per-step ratios to finetune's step on the same batch (every method sees the same batches in the same order, and
  batch lengths differ). CPU time, one thread by default, because the machine is shared: wall time moves with the
  other jobs' load (it is reported too), CPU time of one thread does much less.
* **saved activations**: bytes of the tensors autograd saves for backward in one step, counted with
  `torch.autograd.graph.saved_tensors_hooks` (each storage once; parameters and buffers excluded) — the part of
  training memory that grows with the batch.
* **method state**: bytes of buffers and parameters the method added to the model, tensors it holds on its own
  instance, and the optimizer state (AdamW moments) beyond finetune's — the part that does not grow with the batch.

Targets of the issue: DPS ≤ 1.15x, Mixout ≤ 1.3x, R3F and R-Drop ≤ 2.1x the fine-tuning step time.

Benchmark-only settings: DPS uses ur so that phases last 2 steps (the measured window sees accumulation steps,
exploitation steps and a top-k selection, which a real run does once per 2U steps: a pessimistic mix);
CHILD-TUNING_D estimates its Fisher from 2 batches (its one-off pass over the training set is reported as setup
time, not step time). The machine is a shared VM: single runs of the same code have read R-Drop at 2.05x and 2.27x; use --repeats so
that drifting load is spread over all methods.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from ftlab.backbones import load_model, load_tokenizer
from ftlab.config import CONF_DIR, PROJECT_ROOT, register_resolvers
from ftlab.tasks.classification.datamodule import ClassificationDataModule
from ftlab.tasks.classification.module import ClassificationModule
from ftlab.train import build_method

METHODS = ["finetune", "mixout", "dps", "dps_mix", "r3f", "r4f", "rdrop", "reinit", "child_tuning_d"]
TARGETS = {"dps": 1.15, "dps_mix": 1.15, "mixout": 1.3, "r3f": 2.1, "r4f": 2.1, "rdrop": 2.1}
BENCH_OVERRIDES = {"child_tuning_d": ["method.fisher_batches=2"]}
PAPER_GB_BATCH16 = {  # DPS App. F Table 3, BERT-large, batch 16 (GB)
    "finetune": 10.6, "mixout": 12.9, "r3f": 17.7, "rdrop": 17.7, "child_tuning_d": 10.9, "dps": 16.3, "dps_mix": 21.1,
}


class StepProbe(pl.Callback):
    """Times every training batch; on the last one counts the bytes autograd saves for backward."""

    def __init__(self, measure_memory_at: int):
        self.measure_memory_at = measure_memory_at
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.saved_bytes = 0
        self.setup_seconds = 0.0
        self._start = 0.0
        self._hooks: Any = None
        self._seen: set[int] = set()
        self._excluded: set[int] = set()

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.setup_seconds = time.perf_counter() - self._fit_start   # the method's on_fit_start (Fisher pass, ...)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._seen and key not in self._excluded:
            self._seen.add(key)
            self.saved_bytes += storage.nbytes()
        return tensor

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.measure_memory_at:
            tensors = list(module.parameters()) + list(module.buffers())
            self._excluded = {t.untyped_storage().data_ptr() for t in tensors}
            self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
            self._hooks.__enter__()
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        elapsed, cpu = time.perf_counter() - self._start, time.process_time() - self._cpu_start
        if self._hooks is not None:
            self._hooks.__exit__(None, None, None)
            self._hooks = None
        else:
            self.times.append(elapsed)
            self.cpu_times.append(cpu)


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def instance_tensors(obj: Any, depth: int = 2) -> list[torch.Tensor]:
    """Tensors a method keeps on its instance (in attributes, dicts, lists), not modules."""
    found: list[torch.Tensor] = []
    values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, dict) and depth:
            found += [v for v in value.values() if isinstance(v, torch.Tensor)]
        elif isinstance(value, (list, tuple)) and depth:
            found += [v for v in value if isinstance(v, torch.Tensor)]
    return found


def run_method(name: str, args: argparse.Namespace) -> dict[str, Any]:
    steps = args.warmup + args.steps + 1   # + 1 step with the saved-tensor hooks on
    overrides = [
        f"method={name}", "backbone=minilm", "task=rte", f"train.batch_size={args.batch_size}",
        f"data.max_train_samples={args.batch_size * steps}", "data.group_by_length=false", f"seed={args.seed}",
        f"paths.data_dir={args.data_dir}", *BENCH_OVERRIDES.get(name, []),
    ]
    if name in ("dps", "dps_mix"):
        overrides.append(f"method.ur={2 / steps + 1e-9}")   # phases of 2 steps: a a e e a a ...
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    pl.seed_everything(args.seed, verbose=False)
    tokenizer = load_tokenizer(cfg.backbone)
    model = load_model(cfg.backbone, num_labels=cfg.task.num_labels)
    base = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    method = build_method(cfg)
    method.setup(model, cfg.backbone)
    added = [t for t in list(model.parameters()) + list(model.buffers()) if t.untyped_storage().data_ptr() not in base]
    data = ClassificationDataModule(cfg.task, cfg.data, tokenizer, Path(cfg.paths.data_dir),
                          Path(cfg.paths.cache_dir) / "tokenized", cfg.train.batch_size, cfg.seed)
    module = ClassificationModule(model, method, cfg.task, cfg.optim)
    probe = StepProbe(measure_memory_at=steps - 1)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision="bf16-mixed", gradient_clip_val=1.0, max_steps=steps, max_epochs=1,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[probe],
    )
    trainer.fit(module, datamodule=data)
    measured, measured_cpu = probe.times[args.warmup:], probe.cpu_times[args.warmup:]
    model_tensors = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    own = [t for t in instance_tensors(method) if t.untyped_storage().data_ptr() not in model_tensors]
    optimizer_state = [v for s in trainer.optimizers[0].state.values() for v in s.values()
                       if isinstance(v, torch.Tensor) and v.dim() > 0]
    return {
        "cpu_s": statistics.median(measured_cpu), "wall_s": statistics.median(measured), "steps": len(measured),
        "cpu_per_step": measured_cpu,
        "saved_bytes": probe.saved_bytes, "added_bytes": tensor_bytes(added) + tensor_bytes(own),
        "optimizer_bytes": tensor_bytes(optimizer_state), "setup_s": probe.setup_seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--steps", type=int, default=3, help="measured optimizer steps per method")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all methods (ratios pooled over rounds)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=os.environ.get("FTLAB_DATA_DIR", str(PROJECT_ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    register_resolvers()
    torch.set_num_threads(args.threads)
    available = [m for m in args.methods if (CONF_DIR / "method" / f"{m}.yaml").exists()]
    # rounds of every method in turn: load that drifts over minutes hits each method in each round, and every
    # method's step i is compared with finetune's step i of the same round
    rounds: list[dict[str, dict[str, Any]]] = []
    for round_index in range(args.repeats):
        rounds.append({})
        for name in available:
            print(f"round {round_index + 1}/{args.repeats}: {name} ...", file=sys.stderr, flush=True)
            rounds[-1][name] = run_method(name, args)
    results = {name: {**rounds[0][name], "cpu_s": statistics.median([c for r in rounds for c in r[name]["cpu_per_step"]]),
                      "wall_s": statistics.median([r[name]["wall_s"] for r in rounds])} for name in available}
    for name in available:
        results[name]["paired"] = ([t / f for r in rounds for t, f in zip(r[name]["cpu_per_step"], r["finetune"]["cpu_per_step"])]
                                   if "finetune" in available else [float("nan")])
    ref = results.get("finetune")
    lines = [
        f"# Regulariser overhead: MiniLM-L6, real RTE, batch {args.batch_size}, bf16 autocast, CPU {args.threads} threads, "
        f"{args.steps} measured steps after {args.warmup}, {args.repeats} round(s) of all methods",
        "",
        "| method | step CPU s | × finetune | per-step ratios min-max | target | step wall s | saved activations MB | × finetune | method state + extra optimizer MB | setup s | paper BERT-large b16 GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        # every method trains on the same batches in the same order: the ratio of step i to finetune's step i cancels
        # the batch-to-batch spread (sequence lengths differ), and the median of those ratios is the figure
        paired = r["paired"]
        ratio = statistics.median(paired)
        mem_ratio = r["saved_bytes"] / ref["saved_bytes"] if ref and ref["saved_bytes"] else float("nan")
        extra_opt = r["optimizer_bytes"] - ref["optimizer_bytes"] if ref else 0
        target = TARGETS.get(name)
        verdict = "" if target is None else f"≤ {target} {'ok' if ratio <= target else 'MISSED'}"
        lines.append(
            f"| {name} | {r['cpu_s']:.3f} | {ratio:.2f} | {min(paired):.2f}-{max(paired):.2f} | {verdict} | {r['wall_s']:.2f} | {r['saved_bytes'] / 2**20:.1f} | {mem_ratio:.2f} | "
            f"{(r['added_bytes'] + extra_opt) / 2**20:.1f} | {r['setup_s']:.1f} | {PAPER_GB_BATCH16.get(name, '—')} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
