"""Batched decoding of unique inputs with `model.generate`, and the output files written beside each run.

Defaults are the LoRA GPT-2 recipe (beam 10, length penalty 0.8, no-repeat-ngram 4, at most 64 new tokens;
`microsoft/LoRA` examples/NLG/README.md); `task.decoding.num_beams=1` gives greedy decoding for CPU runs. Decoding
stops at the tokenizer's EOS (the token the targets were trained to end with; LoRA's beam script also lists the
GPT-2 "\\n\\n" id 628, which a model trained on these targets does not need). HF's beam search divides a finished
beam's log-probability by (generated length) ** length_penalty.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from transformers import PreTrainedTokenizerBase

from ...config import portable_path
from .datamodule import EvalSet


def generation_kwargs(decoding: DictConfig, tokenizer: PreTrainedTokenizerBase, pad_id: int) -> dict[str, Any]:
    beams = int(decoding.num_beams)
    kwargs = {
        "max_new_tokens": int(decoding.max_new_tokens), "num_beams": beams, "do_sample": False,
        "no_repeat_ngram_size": int(decoding.no_repeat_ngram_size), "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": pad_id, "repetition_penalty": float(decoding.get("repetition_penalty", 1.0)),
    }
    if beams > 1:
        kwargs.update(length_penalty=float(decoding.length_penalty), early_stopping=bool(decoding.get("early_stopping", True)))
    return kwargs


@torch.no_grad()
def generate_batch(model: nn.Module, batch: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase, kwargs: dict[str, Any]) -> list[str]:
    """Texts generated after each (left-padded) prompt, special tokens dropped, whitespace stripped."""
    out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
    new_tokens = out[:, batch["input_ids"].shape[1]:]
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def write_outputs(folder: Path, tag: str, eval_set: EvalSet, hypotheses: list[str]) -> dict[str, str]:
    """Write `<tag>.hyp.txt` (one output per unique input), `<tag>.lines.jsonl` (every original line with its
    output) and `<split>.refs.txt` (references grouped per input, blank-line separated: E2E measure_scores.py's
    multi-reference format, so the official scripts can re-score the run). Returns the paths written (project-relative
    inside the project: they go into run records)."""
    folder.mkdir(parents=True, exist_ok=True)
    hyp_path, lines_path = folder / f"{tag}.hyp.txt", folder / f"{tag}.lines.jsonl"
    refs_path = folder / f"{eval_set.split}.refs.txt"
    hyp_path.write_text("".join(h.replace("\n", " ") + "\n" for h in hypotheses), encoding="utf-8")
    with lines_path.open("w", encoding="utf-8") as handle:
        for line, (unique, where) in enumerate(zip(eval_set.line_to_input, eval_set.wheres)):
            if unique >= 0:
                handle.write(json.dumps({"line": line, "where": where, "input_id": unique,
                                         "input": eval_set.inputs[unique], "hypothesis": hypotheses[unique]},
                                        ensure_ascii=False) + "\n")
    if not refs_path.exists():
        refs_path.write_text("\n".join("".join(r.replace("\n", " ") + "\n" for r in refs) for refs in eval_set.references),
                             encoding="utf-8")
    return {"hypotheses": portable_path(hyp_path), "lines": portable_path(lines_path), "references": portable_path(refs_path)}
