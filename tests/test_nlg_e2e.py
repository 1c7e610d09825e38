"""Generation end to end: a tiny random GPT-2 trains on real E2E rows with LoRA on the q/v slices of its fused c_attn,
decodes each unique input once, maps the outputs back to every line and scores them; a zero-step run evaluates the
untuned model; the loss sees only target tokens."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ftlab.tasks.generation.module import target_loss

FAST = ["backbone=tiny-gpt2", "data.max_train_samples=16", "data.max_eval_samples=6", "train.batch_size=8",
        "task.decoding.max_new_tokens=6", "task.decoding.batch_size=4"]


def test_target_loss_ignores_the_prompt() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11)
    labels = torch.tensor([[-100, -100, -100, 4, 5, 6, 1], [-100, -100, 3, 2, 1, -100, -100]])
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert target_loss(logits, labels) == pytest.approx(expected.item())
    changed = logits.clone()
    changed[0, :2] += 5.0  # predictions made at prompt positions whose next token is still prompt
    changed[1, 5:] -= 3.0  # and after the target ended (padding)
    assert target_loss(changed, labels) == pytest.approx(expected.item())
    smoothed = target_loss(logits, labels, label_smoothing=0.1)
    assert smoothed.item() != pytest.approx(expected.item())


def test_tiny_gpt2_lora_trains_decodes_unique_inputs_and_maps_back(run_tiny) -> None:
    record = run_tiny("task=e2e", *FAST, "method=lora", "method.r=4", "method.alpha=32", "task.decoding.num_beams=2",
                      "task.metrics=[bleu,nist]")
    assert record["status"] == "completed"
    assert record["cost"]["optimizer_steps"] == 2
    # LoRA on the q and v thirds of c_attn only: 2 layers x 2 slices x (A: 4 x 32 + B: 32 x 4)
    assert record["parameters"]["trainable"] == 2 * 2 * (4 * 32 + 32 * 4)
    best = record["metrics"]["best"]
    assert set(best["metrics"]) == {"dev", "test"}
    for split in ("dev", "test"):
        assert set(best["metrics"][split]) == {"bleu", "nist"}
        assert 0.0 <= best["metrics"][split]["bleu"] <= 100.0
        assert len(best["predictions"][split]) == 6
    outputs = record["generation"]["outputs"][f"test.step{best['step']}"]
    hyps = Path(outputs["hypotheses"]).read_text(encoding="utf-8").splitlines()
    assert hyps == best["predictions"]["test"]
    lines = [json.loads(line) for line in Path(outputs["lines"]).read_text(encoding="utf-8").splitlines()]
    refs = Path(outputs["references"]).read_text(encoding="utf-8").strip("\n").split("\n\n")
    assert len(refs) == 6 and len(lines) == sum(len(r.splitlines()) for r in refs)  # every line of the 6 inputs
    assert {line["input_id"] for line in lines} == set(range(6))
    assert all(line["hypothesis"] == hyps[line["input_id"]] for line in lines)
    assert record["generation"]["data"]["test"]["unique_inputs"] == 6


def test_zero_steps_scores_the_untuned_model_on_webnlg(run_tiny) -> None:
    record = run_tiny("task=webnlg", *FAST, "train.max_steps=0", "task.decoding.num_beams=1", "task.metrics=[bleu,ter]")
    assert record["status"] == "completed" and record["cost"]["optimizer_steps"] == 0
    last = record["metrics"]["last"]
    assert last["step"] == 0 and set(last["metrics"]) == {"dev", "test"}
    assert all(0.0 <= last["metrics"][s]["ter"] for s in ("dev", "test"))
