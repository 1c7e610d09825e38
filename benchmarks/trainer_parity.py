"""Accuracy parity: a plain Hugging Face Trainer fine-tune with ftlab's default settings, for comparison with
`python run.py -m experiment=glue_dense_cpu` (same model, data, epochs, lr, batch, precision; best epoch on dev).

    python benchmarks/trainer_parity.py --task rte --epochs 3 --lr 5e-5 --seeds 1 2 3
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from datasets import Dataset
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from ftlab.backbones import load_model, load_tokenizer
from ftlab.config import PROJECT_ROOT
from ftlab.report.tables import aggregate
from ftlab.tasks.classification.glue import read_local_split
from ftlab.tasks.classification.metrics import compute_metrics, predictions

from throughput import DATA_DIR, compose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="rte")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    cfg = compose([f"task={args.task}"])
    task = cfg.task
    tokenizer = load_tokenizer(cfg.backbone)
    bests = [train_once(cfg, tokenizer, args, seed) for seed in args.seeds]
    print(f"HF Trainer, MiniLM, {args.task} best-epoch {task.selection.metric} over seeds {args.seeds}: "
          f"{[round(b, 2) for b in bests]}; mean ± sample std {aggregate(bests, 'mean_std')}")  # as the tables


def train_once(cfg, tokenizer, args: argparse.Namespace, seed: int) -> float:
    """One Trainer fine-tune from the pretrained weights; returns the best epoch's selection metric."""
    task = cfg.task
    model = load_model(cfg.backbone, num_labels=task.num_labels,
                       problem_type="regression" if task.kind == "regression" else "single_label_classification")

    def encode(split: str) -> Dataset:
        rows = read_local_split(DATA_DIR, task, split)
        enc = tokenizer(*[[r[f] for r in rows] for f in task.text_fields], truncation=True, max_length=128)
        return Dataset.from_dict({**enc, "labels": [r["label"] for r in rows]})

    split, metric = task.selection.split, task.selection.metric

    def score(pred) -> dict[str, float]:
        return compute_metrics(task.metrics, predictions(pred.predictions, task.kind), pred.label_ids)

    training = TrainingArguments(
        output_dir=str(PROJECT_ROOT / "outputs" / "trainer_parity"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128, num_train_epochs=args.epochs, learning_rate=args.lr, bf16=True, use_cpu=True,
        eval_strategy="epoch", save_strategy="no", report_to=[], seed=seed, disable_tqdm=True, logging_steps=1000,
    )
    trainer = Trainer(model=model, args=training, train_dataset=encode("train"), eval_dataset=encode(split),
                      data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8), compute_metrics=score)
    trainer.train()
    history = [h[f"eval_{metric}"] for h in trainer.state.log_history if f"eval_{metric}" in h]
    print(f"HF Trainer, MiniLM, {args.task} seed {seed} {split} {metric} per epoch: {[round(v, 2) for v in history]}; "
          f"best {max(history):.2f}", flush=True)
    return max(history)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
