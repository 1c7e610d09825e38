"""Training and evaluation throughput of ftlab vs the Hugging Face Trainer on MiniLM + real RTE, measured interleaved.

    python benchmarks/throughput.py [--rounds 12] [--block 4] [--batch-size 32] [--precisions bf16 fp32]

Compared at the same model, data, batch size and precision:
  ftlab            dynamic padding to a multiple of 8 + length-grouped batches + eager attention + ftlab.kernels'
                   dropout on CPU (the framework's defaults, as run.py trains)
  ftlab-no-kernels the same with torch's dropout (kernels.fast_dropout=false)
  trainer-static   HF Trainer with run_glue.py's defaults: every sequence padded to max_length 128
  trainer-dynamic  HF Trainer with DataCollatorWithPadding (dynamic padding, random batches)
The training loops and a matmul-peak probe take turns on the CPU (benchmarks/interleave.py): each round every
pipeline runs --block steps of its own sampler (ftlab's length-grouped batches, the Trainer's random ones; both ftlab
variants see the same batches, as do both Trainers), or with --same-examples the same examples in every pipeline
(ftlab sorts a round's examples by length; the Trainer batches them as drawn). Ratios: the median of the per-round
ratios with their min and max, and the ratio of the totals over all rounds. Time is measured
inside training steps (forward, backward, clipping, optimizer); the first --warmup rounds are not timed.
MFU = achieved model FLOP/s / the matmul peak measured in the same round. Model FLOPs per real (non-padding) token:
6 x non-embedding parameters + 12 x layers x hidden x sequence length (attention scores and values, forward and
backward); padding tokens do not count, so padding shows as lost MFU. Evaluation: whole dev-set passes, alternated.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import transformers
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from ftlab.backbones import attention_for, load_model, load_tokenizer
from ftlab.config import CONF_DIR, PROJECT_ROOT, register_resolvers
from ftlab.kernels import use_cpu_kernels
from ftlab.methods.finetune import FineTune
from ftlab.tasks.classification.datamodule import ClassificationDataModule
from ftlab.tasks.classification.glue import read_local_split
from ftlab.tasks.classification.module import ClassificationModule

from interleave import StepTurns, alternate, ratio_summary, run_in_turns

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA_DIR = Path(os.environ.get("FTLAB_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


class LightningTurns(pl.Callback):
    """Takes turns at Lightning's step boundaries (benchmarks/interleave.py)."""

    def __init__(self, turns: StepTurns):
        self.turns = turns

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.turns.begin()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        mask = batch["attention_mask"]
        self.turns.end(mask.shape[0], int(mask.sum()), mask.numel())


class TrainerTurns(TrainerCallback):
    """Takes turns at the HF Trainer's step boundaries; it hides the batch from callbacks, so the collator reports
    each batch's size into `last`."""

    def __init__(self, turns: StepTurns):
        self.turns, self.last = turns, (0, 0, 0)

    def on_step_begin(self, args, state, control, **kwargs):
        self.turns.begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.turns.end(*self.last)


def flops_per_token(model: torch.nn.Module, seq_len: float) -> float:
    """6N for the non-embedding weights (forward + backward) plus the attention score/value matmuls."""
    cfg = model.config
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    return 6 * non_embedding + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def round_orders(lengths: list[int], batch: int, block: int, rounds: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """The same examples for every pipeline in every round: round r takes the r-th chunk of `block` batches of one
    seeded permutation. ftlab sorts its chunk longest first (what its LengthGroupedSampler does within each group of
    batches); the Trainer takes the chunk as drawn (its random batches). Returns (ftlab order, Trainer order)."""
    perm = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    chunk = batch * block
    if rounds * chunk > len(perm):
        raise SystemExit(f"{rounds} rounds of {block} batches of {batch} need {rounds * chunk} examples; "
                         f"the training set has {len(perm)}: lower --rounds or --block")
    trainer_order = perm[:rounds * chunk]
    ftlab_order = [i for r in range(rounds) for i in sorted(trainer_order[r * chunk:(r + 1) * chunk],
                                                            key=lambda i: -lengths[i])]
    return ftlab_order, trainer_order


class OrderedData(ClassificationDataModule):
    """ftlab's datamodule (tokenisation, collation, padding to a multiple of 8) with the benchmark's example order."""

    order: list[int] = []

    def train_dataloader(self) -> DataLoader:
        if not self.order:
            return super().train_dataloader()
        return DataLoader(self.load_split("train"), batch_size=self.batch_size, sampler=self.order,
                          collate_fn=self.collate)


class OrderedTrainer(Trainer):
    """The HF Trainer with the benchmark's example order."""

    order: list[int] = []

    def _get_train_sampler(self, *args, **kwargs):
        return self.order or super()._get_train_sampler(*args, **kwargs)


def ftlab_parts(cfg, precision: str, kernels: bool = True, order: list[int] | None = None):
    """The model, datamodule and LightningModule as run.py builds them on CPU (eager attention, ftlab.kernels' dropout,
    dynamic padding to a multiple of 8, length-grouped batches, fused AdamW); `kernels=False`: torch's dropout."""
    tokenizer = load_tokenizer(cfg.backbone)
    model = load_model(cfg.backbone, attn_implementation=attention_for("cpu"), num_labels=2)
    model.train()
    if kernels:
        use_cpu_kernels(model)
    data = OrderedData(cfg.task, cfg.data, tokenizer, DATA_DIR, None, cfg.train.batch_size, 0)
    data.order = order or []
    return model, data, ClassificationModule(model, FineTune(), cfg.task, cfg.optim)


def lightning_trainer(precision: str, steps: int, callbacks: list, validate: bool = False) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", precision="bf16-mixed" if precision == "bf16" else "32-true", max_steps=steps,
        limit_val_batches=None if validate else 0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, gradient_clip_val=1.0,
    )


def ftlab_training(cfg, steps: int, precision: str, order: list[int], kernels: bool = True):
    def run(turns: StepTurns) -> None:
        _, data, module = ftlab_parts(cfg, precision, kernels, order)
        lightning_trainer(precision, steps, [LightningTurns(turns)]).fit(module, datamodule=data)
    return run


def trainer_dataset(cfg, tokenizer, split: str, static: bool):
    """run_glue.py's preprocessing: truncation at 128, padded to 128 when static (its default)."""
    from datasets import Dataset

    rows = read_local_split(DATA_DIR, cfg.task, split)
    fields = list(cfg.task.text_fields)
    enc = tokenizer(*[[r[f] for r in rows] for f in fields], truncation=True, max_length=128,
                    padding="max_length" if static else False)
    return Dataset.from_dict({**enc, "labels": [r["label"] for r in rows]})


def hf_trainer(cfg, steps: int, precision: str, static: bool, out: Path, callbacks: list, collate,
               order: list[int] | None = None) -> Trainer:
    tokenizer = load_tokenizer(cfg.backbone)
    model = load_model(cfg.backbone, num_labels=2)  # transformers' default attention, as run_glue.py loads it
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.train.batch_size,
        per_device_eval_batch_size=cfg.data.eval_batch_size, max_steps=steps, learning_rate=5e-5,
        bf16=precision == "bf16", bf16_full_eval=False, use_cpu=True, report_to=[], save_strategy="no",
        logging_steps=1000, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    trainer = OrderedTrainer(model=model, args=args, train_dataset=trainer_dataset(cfg, tokenizer, "train", static),
                             eval_dataset=trainer_dataset(cfg, tokenizer, "dev", static), data_collator=collate,
                             callbacks=callbacks)
    trainer.order = order or []
    return trainer


def trainer_training(cfg, steps: int, precision: str, static: bool, out: Path, order: list[int]):
    def run(turns: StepTurns) -> None:
        callback = TrainerTurns(turns)
        pad = DataCollatorWithPadding(load_tokenizer(cfg.backbone))

        def collate(features):
            batch = pad(features)
            mask = batch["attention_mask"]
            callback.last = (mask.shape[0], int(mask.sum()), mask.numel())
            return batch

        hf_trainer(cfg, steps, precision, static, out, [callback], collate, order).train()
    return run


def peak_rounds(dtype: torch.dtype, rounds: int):
    """The matmul peak as one more participant: eight 2048^3 products per turn (FLOPs reported as 'samples')."""
    def run(turns: StepTurns) -> None:
        n = 2048
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(rounds):
            turns.begin()
            for _ in range(8):
                a @ b
            turns.end(8 * 2 * n**3, 0, 0)
    return run


def eval_passes(cfg, precision: str, out: Path):
    """One dev-set evaluation per call for ftlab (Lightning validate, length-sorted dynamic padding) and the HF Trainer
    (evaluate, static and dynamic padding), each returning (seconds, samples)."""
    _, data, module = ftlab_parts(cfg, precision)
    data.setup()
    dev = len(data.load_split("dev"))
    validator = lightning_trainer(precision, 1, [], validate=True)
    trainers = {static: hf_trainer(cfg, 1, precision, static, out, [], DataCollatorWithPadding(load_tokenizer(cfg.backbone)))
                for static in (True, False)}

    def timed(fn):
        def run():
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start, dev
        return run

    return {"ftlab": timed(lambda: validator.validate(module, datamodule=data, verbose=False)),
            "trainer-static": timed(lambda: trainers[True].evaluate()),
            "trainer-dynamic": timed(lambda: trainers[False].evaluate())}


def total_rate(r, skip: int) -> float:
    return sum(r.samples[skip:]) / sum(r.seconds[skip:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="timed rounds (after --warmup untimed ones)")
    parser.add_argument("--block", type=int, default=4, help="steps each pipeline runs per turn")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds at the start")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precisions", nargs="+", default=["bf16"])
    parser.add_argument("--eval-rounds", type=int, default=3)
    parser.add_argument("--same-examples", action="store_true",
                        help="every pipeline trains on the same examples in each round (ftlab then groups lengths "
                             "within a round's examples only: a lower bound on what its sampler saves)")
    parser.add_argument("--task", default="rte")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = compose([f"task={args.task}", f"train.batch_size={args.batch_size}"])
    out = PROJECT_ROOT / "outputs" / "bench"
    model = load_model(cfg.backbone, num_labels=2)
    steps = (args.rounds + args.warmup) * args.block
    ftlab_order = trainer_order = None
    if args.same_examples:
        _, data, _ = ftlab_parts(cfg, "bf16")
        ftlab_order, trainer_order = round_orders(data.load_split("train")["length"], args.batch_size, args.block,
                                                  args.rounds + args.warmup)
    print(f"MiniLM-L6 on real {args.task.upper()} train, batch {args.batch_size}, {torch.get_num_threads()} threads; "
          f"interleaved: {args.rounds} rounds of {args.block} steps per pipeline (+{args.warmup} untimed)")
    for precision in args.precisions:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        rounds = run_in_turns({
            "ftlab": ftlab_training(cfg, steps, precision, ftlab_order),
            "ftlab-no-kernels": ftlab_training(cfg, steps, precision, ftlab_order, kernels=False),
            "trainer-static": trainer_training(cfg, steps, precision, True, out, trainer_order),
            "trainer-dynamic": trainer_training(cfg, steps, precision, False, out, trainer_order),
            "peak": peak_rounds(dtype, args.rounds + args.warmup),
        }, args.block)
        skip = args.warmup
        peak = rounds.pop("peak").rate("samples", skip)
        print(f"\n[train {precision}] per-round medians (min-max); MFU counts real tokens only (padding is waste)")
        print(f"{'pipeline':<16} {'samples/s':>22} {'real tok/s':>10} {'pad share':>9} {'MFU':>20}")
        for name, r in rounds.items():
            sps = r.rate("samples", skip)
            seq = sum(r.tokens[skip:]) / max(sum(r.samples[skip:]), 1)
            mfu = [flops_per_token(model, seq) * t / p for t, p in zip(r.rate("tokens", skip), peak)]
            pad = 1 - sum(r.tokens[skip:]) / max(sum(r.padded_tokens[skip:]), 1)
            print(f"{name:<16} {statistics.median(sps):>8.1f} ({min(sps):.1f}-{max(sps):.1f}) "
                  f"{statistics.median(r.rate('tokens', skip)):>10.0f} {pad:>8.0%} "
                  f"{statistics.median(mfu):>7.1%} ({min(mfu):.0%}-{max(mfu):.0%})")
        for name in ("ftlab-no-kernels", "trainer-static", "trainer-dynamic"):
            mid, lo, hi = ratio_summary(rounds["ftlab"].rate("samples", skip), rounds[name].rate("samples", skip))
            total = total_rate(rounds["ftlab"], skip) / total_rate(rounds[name], skip)
            print(f"ftlab / {name}: {mid:.2f}x (per-round min {lo:.2f}, max {hi:.2f}; totals {total:.2f}x)")
        print(f"{precision} matmul peak measured in the same rounds: {statistics.median(peak) / 1e9:.0f} GFLOP/s "
              f"(2048^3, min {min(peak) / 1e9:.0f}, max {max(peak) / 1e9:.0f})")
        if args.eval_rounds:
            rates = alternate(eval_passes(cfg, precision, out), args.eval_rounds)
            print(f"\n[eval {precision}] dev samples/s, {args.eval_rounds} alternated passes (+1 untimed)")
            for name, r in rates.items():
                print(f"{name:<16} {statistics.median(r):>8.1f} ({min(r):.1f}-{max(r):.1f})")
            for name in ("trainer-static", "trainer-dynamic"):
                mid, lo, hi = ratio_summary(rates["ftlab"], rates[name])
                print(f"ftlab / {name}: {mid:.2f}x (per-round min {lo:.2f}, max {hi:.2f})")


if __name__ == "__main__":
    main()
