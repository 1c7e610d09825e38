"""Data-to-text metrics with the official definitions the LoRA / DSEE GPT-2 tables used, multi-reference throughout.

Which implementation gives each number (`protocol` is the task's `metric_protocol`):

| metric  | protocol e2e (E2E `measure_scores.py -p`, as LoRA runs it)        | protocol webnlg (WebNLG/DART, LoRA's GenerationEval)  |
|---------|--------------------------------------------------------------------|--------------------------------------------------------|
| bleu    | sacrebleu corpus BLEU, 13a tokenizer, lower-cased (= mteval-v13a / pymteval BLEU, closest ref length, ties to the shorter) | same sacrebleu call (LoRA lower-cases and tokenises, then multi-bleu-detok = 13a) |
| nist    | `ftlab.tasks.generation.nist.corpus_nist` (pymteval's NIST; written by hand)   | -                                                      |
| meteor  | pycocoevalcap METEOR 1.5 jar on PTB-tokenised text (COCO pipeline) | same jar (`-l en -norm`) on lower-cased 13a-tokenised text |
| rouge_l | pycocoevalcap ROUGE-L on PTB-tokenised text                        | -                                                      |
| cider   | pycocoevalcap CIDEr(-D) on PTB-tokenised text                      | -                                                      |
| ter     | -                                                                  | sacrebleu sentence TER on lower-cased 13a text, min over the references, mean over inputs (GenerationEval's definition, which uses pyter) |

Scales follow the papers: BLEU 0-100, NIST raw, METEOR / ROUGE-L / TER 0-1, CIDEr raw. References are grouped per
unique input; inputs may have different numbers of references (sacrebleu takes `None` for a missing one, where
GenerationEval pads with empty strings - which can only change BLEU's closest-reference length when an output is
shorter than half of its shortest reference). A metric that cannot be computed (METEOR without Java) is None, with
the reason under the result's "unavailable" key; the others are still computed.
"""
from __future__ import annotations

from typing import Any, Sequence

from sacrebleu.metrics import BLEU, TER
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from ...errors import ConfigError
from . import coco
from .nist import corpus_nist

PROTOCOL_METRICS = {"e2e": ("bleu", "nist", "meteor", "rouge_l", "cider"), "webnlg": ("bleu", "meteor", "ter")}
_13A = Tokenizer13a()


def bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
    return float(BLEU(lowercase=True, tokenize="13a").corpus_score(list(hyps), streams).score)


def _lower_13a(text: str) -> str:
    return _13A(text.lower())


def ter(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    scorer = TER()
    per_input = [
        min(scorer.sentence_score(_lower_13a(h), [_lower_13a(r)]).score for r in rs) / 100.0
        for h, rs in zip(hyps, refs, strict=True)
    ]
    return sum(per_input) / len(per_input)


def score_generation(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], names: Sequence[str], protocol: str = "e2e"
) -> dict[str, Any]:
    """{metric: value or None} for `names`, plus "unavailable": {metric: reason} when something could not run."""
    if protocol not in PROTOCOL_METRICS:
        raise ConfigError(f"unknown metric_protocol {protocol!r}; choose one of {sorted(PROTOCOL_METRICS)}")
    unknown = [n for n in names if n not in PROTOCOL_METRICS[protocol]]
    if unknown:
        raise ConfigError(f"metric(s) {unknown} are not defined for protocol {protocol!r}; it has {PROTOCOL_METRICS[protocol]}")
    if len(hyps) != len(refs) or not hyps:
        raise ValueError(f"need one reference list per hypothesis, got {len(hyps)} hypotheses and {len(refs)} lists")
    if any(not r for r in refs):
        raise ValueError("every input needs at least one reference")
    out: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    java = coco.java_problem() if {"meteor", "rouge_l", "cider"} & set(names) else None
    if "bleu" in names:
        out["bleu"] = bleu(hyps, refs)
    if "nist" in names:
        out["nist"] = corpus_nist(hyps, refs)
    if "ter" in names:
        out["ter"] = ter(hyps, refs)
    if protocol == "e2e" and {"meteor", "rouge_l", "cider"} & set(names):
        tokenize = coco.fallback_tokenize if java else coco.ptb_tokenize
        tokenized = tokenize([[h] for h in hyps] + [list(r) for r in refs])
        t_hyps, t_refs = [t[0] for t in tokenized[: len(hyps)]], tokenized[len(hyps):]
        if java:
            unavailable["tokenizer"] = f"PTB tokenizer replaced by 13a for ROUGE-L/CIDEr: {java}"
    else:
        t_hyps, t_refs = [_lower_13a(h) for h in hyps], [[_lower_13a(r) for r in rs] for rs in refs]
    if "meteor" in names:
        out["meteor"] = None if java else coco.meteor(t_hyps, t_refs)
        if java:
            unavailable["meteor"] = java
    if "rouge_l" in names:
        out["rouge_l"] = coco.rouge_l(t_hyps, t_refs)
    if "cider" in names:
        out["cider"] = coco.cider(t_hyps, t_refs)
    if unavailable:
        out["unavailable"] = unavailable
    return out
