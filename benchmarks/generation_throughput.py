"""Decoding throughput on unique E2E test MRs: ftlab's batched beam search (left-padded batches, KV cache, the
framework's decode path) vs `model.generate` called once per MR, alternated in rounds on the same MRs.

    python benchmarks/generation_throughput.py [--mrs 16] [--batch-size 16] [--beams 10] [--rounds 2]

Both use the LoRA paper's decoding (beam 10, length penalty 0.8, no-repeat-ngram 4) from conf/task/e2e.yaml and the
untuned SmolLM2-135M (speed does not depend on the weights having learned; output lengths do, and are reported).
Tokens/s counts generated tokens up to EOS (padding after EOS does not count).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import transformers

from ftlab.backbones import load_tokenizer
from ftlab.tasks.generation.datamodule import GenerationDataModule
from ftlab.tasks.generation.decode import generation_kwargs
from ftlab.tasks.generation.module import GenerationModule

from interleave import alternate, ratio_summary
from throughput import DATA_DIR, compose

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def new_tokens(out: torch.Tensor, prompt_len: int, eos: int) -> int:
    """Generated tokens up to and including the first EOS of each row."""
    new = out[:, prompt_len:]
    finished = (new == eos).int().cumsum(1)
    return int(((finished == 0) | ((finished == 1) & (new == eos))).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mrs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = compose(["task=e2e", "backbone=smollm2", f"data.max_eval_samples={args.mrs}",
                   f"task.decoding.num_beams={args.beams}", f"task.decoding.max_new_tokens={args.max_new_tokens}"])
    tokenizer = load_tokenizer(cfg.backbone)
    model = GenerationModule.load_model(cfg.backbone, cfg.task)
    model.eval()
    data = GenerationDataModule(cfg.task, cfg.data, tokenizer, DATA_DIR, 1, 0)
    kwargs = generation_kwargs(cfg.task.decoding, tokenizer, data.pad_id)
    eos = tokenizer.eos_token_id
    batches = list(data.prompt_dataloader("test", args.batch_size))
    singles = list(data.prompt_dataloader("test", 1))

    @torch.no_grad()
    def decode(loader):
        def run():
            start, tokens = time.perf_counter(), 0
            for batch in loader:
                out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
                tokens += new_tokens(out, batch["input_ids"].shape[1], eos)
            return time.perf_counter() - start, tokens
        return run

    rates = alternate({"batched": decode(batches), "per-MR": decode(singles)}, args.rounds)
    print(f"SmolLM2-135M (untuned), {args.mrs} unique E2E test MRs, beam {args.beams}, length penalty "
          f"{cfg.task.decoding.length_penalty}, no-repeat {cfg.task.decoding.no_repeat_ngram_size}, "
          f"{torch.get_num_threads()} threads; {args.rounds} alternated rounds (+1 untimed)")
    for name, r in rates.items():
        print(f"{name:<8} {statistics.median(r):8.1f} generated tokens/s ({min(r):.1f}-{max(r):.1f})")
    mid, lo, hi = ratio_summary(rates["batched"], rates["per-MR"])
    print(f"batched (batch {args.batch_size}) / per-MR: {mid:.2f}x (per-round min {lo:.2f}, max {hi:.2f})")


if __name__ == "__main__":
    main()
