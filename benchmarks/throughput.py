"""Training throughput of ftlab vs the Hugging Face Trainer on MiniLM + real RTE, fp32 and bf16, with an MFU estimate.

    python benchmarks/throughput.py [--steps 20] [--batch-size 32] [--precisions fp32 bf16]

Compared at the same model, data, batch size and precision:
  ftlab            dynamic padding to a multiple of 8 + length-grouped batches + eager attention on CPU (the
                   framework's defaults, as run.py trains)
  trainer-static   HF Trainer with run_glue.py's defaults: every sequence padded to max_length 128
  trainer-dynamic  HF Trainer with DataCollatorWithPadding (dynamic padding, random batches)
Time is measured inside training steps (forward, backward, optimizer), skipping the first `--warmup` steps.
MFU = achieved model FLOP/s (6 x non-embedding params x real tokens + attention) / a matmul peak measured here.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from ftlab.backbones import attention_for, load_model, load_tokenizer
from ftlab.config import CONF_DIR, PROJECT_ROOT, register_resolvers
from ftlab.methods.finetune import FineTune
from ftlab.tasks.classification.datamodule import ClassificationDataModule
from ftlab.tasks.classification.glue import read_local_split
from ftlab.tasks.classification.module import ClassificationModule

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA_DIR = Path(os.environ.get("FTLAB_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


class StepTimer:
    """Seconds, samples and real tokens inside steps after the first `warmup` steps."""

    def __init__(self, warmup: int):
        self.warmup, self.steps, self.seconds, self.samples, self.tokens, self._t = warmup, 0, 0.0, 0, 0, 0.0

    def start(self) -> None:
        self._t = time.perf_counter()

    def stop(self, samples: int, tokens: int) -> None:
        self.steps += 1
        if self.steps > self.warmup:
            self.seconds += time.perf_counter() - self._t
            self.samples += samples
            self.tokens += tokens


class LightningTimer(pl.Callback):
    def __init__(self, timer: StepTimer):
        self.timer = timer

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.timer.start()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.timer.stop(batch["labels"].shape[0], int(batch["attention_mask"].sum()))


class HFTimer(TrainerCallback):
    """The HF Trainer hides the batch from callbacks: the data collator wrapper below reports its size."""

    def __init__(self, timer: StepTimer):
        self.timer, self.last = timer, (0, 0)

    def on_step_begin(self, args, state, control, **kwargs):
        self.timer.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.timer.stop(*self.last)


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


def flops_per_token(model: torch.nn.Module, seq_len: float) -> float:
    """6N for the non-embedding weights (forward + backward) plus the attention score/value matmuls."""
    cfg = model.config
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    return 6 * non_embedding + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def run_ftlab(cfg, steps: int, warmup: int, precision: str) -> StepTimer:
    pl.seed_everything(0, verbose=False)
    tokenizer = load_tokenizer(cfg.backbone)
    model = load_model(cfg.backbone, attn_implementation=attention_for("cpu"), num_labels=2)  # as run.py on CPU
    model.train()
    data = ClassificationDataModule(cfg.task, cfg.data, tokenizer, DATA_DIR, None, cfg.train.batch_size, 0)
    module = ClassificationModule(model, FineTune(), cfg.task, cfg.optim)
    timer = StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator="cpu", precision="bf16-mixed" if precision == "bf16" else "32-true", max_steps=steps,
        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[LightningTimer(timer)], gradient_clip_val=1.0,
    )
    trainer.fit(module, datamodule=data)
    return timer


def run_trainer(cfg, steps: int, warmup: int, precision: str, static: bool, out: Path) -> StepTimer:
    from datasets import Dataset

    tokenizer = load_tokenizer(cfg.backbone)
    model = load_model(cfg.backbone, num_labels=2)  # transformers' default attention, as run_glue.py loads it
    rows = read_local_split(DATA_DIR, cfg.task, "train")
    fields = list(cfg.task.text_fields)
    enc = tokenizer(*[[r[f] for r in rows] for f in fields], truncation=True, max_length=128,
                    padding="max_length" if static else False)
    dataset = Dataset.from_dict({**enc, "labels": [r["label"] for r in rows]})
    timer = StepTimer(warmup)
    hf_timer = HFTimer(timer)
    pad = DataCollatorWithPadding(tokenizer)

    def collate(features):
        batch = pad(features)
        hf_timer.last = (batch["input_ids"].shape[0], int(batch["attention_mask"].sum()))
        return batch

    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.train.batch_size, max_steps=steps, learning_rate=5e-5,
        bf16=precision == "bf16", use_cpu=True, report_to=[], save_strategy="no", logging_steps=1000,
        disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[hf_timer]).train()
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--task", default="rte")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = compose([f"task={args.task}", f"train.batch_size={args.batch_size}"])
    out = PROJECT_ROOT / "outputs" / "bench"
    model = load_model(cfg.backbone, num_labels=2)
    print(f"MiniLM-L6 on real {args.task.upper()} train, batch {args.batch_size}, {args.steps} steps "
          f"({args.warmup} warm-up steps not timed), {torch.get_num_threads()} threads")
    print(f"{'precision':<9} {'pipeline':<16} {'samples/s':>10} {'tokens/s':>10} {'pad-free tok/step':>18} {'MFU':>7}")
    for precision in args.precisions:
        peak = matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32)
        results = {
            "ftlab": run_ftlab(cfg, args.steps, args.warmup, precision),
            "trainer-static": run_trainer(cfg, args.steps, args.warmup, precision, True, out),
            "trainer-dynamic": run_trainer(cfg, args.steps, args.warmup, precision, False, out),
        }
        for name, t in results.items():
            seq = t.tokens / max(t.samples, 1)
            mfu = flops_per_token(model, seq) * t.tokens / t.seconds / peak
            print(f"{precision:<9} {name:<16} {t.samples / t.seconds:>10.1f} {t.tokens / t.seconds:>10.0f} "
                  f"{t.tokens / max(t.steps - args.warmup, 1):>18.0f} {mfu:>6.1%}")
        base = results["ftlab"].samples / results["ftlab"].seconds
        for name in ("trainer-static", "trainer-dynamic"):
            other = results[name].samples / results[name].seconds
            print(f"{precision:<9} ftlab / {name}: {base / other:.2f}x")
        print(f"{precision:<9} matmul peak measured here: {peak / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
