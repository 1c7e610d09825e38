"""NLG metrics on small hand-checked examples: maxima for identical outputs, BLEU / NIST / TER worked out by hand,
multi-reference behaviour, and METEOR reported unavailable (the rest still computed) when Java is missing."""
from __future__ import annotations

import math

import pytest

from ftlab.tasks.generation import coco, metrics
from ftlab.tasks.generation.metrics import score_generation
from ftlab.tasks.generation.nist import BETA, corpus_nist

HYP = "The cat sat on the mat."
REFS = [["the cat sat on a mat.", "A cat was sitting on the mat."], ["Blue Spice is a coffee shop in the city centre."]]


def test_bleu_matches_a_hand_computation() -> None:
    # unigrams 5/6, bigrams 3/5, trigrams 2/4, 4-grams 1/3, equal lengths: BLEU = (1/12)^(1/4)
    assert metrics.bleu(["the cat sat on the mat"], [["the cat sat on a mat"]]) == pytest.approx(100 * (1 / 12) ** 0.25)
    # lower-cased (mteval-v13a's default), and a second reference can only help
    assert metrics.bleu(["The Cat sat on the MAT"], [["the cat sat on a mat"]]) == pytest.approx(100 * (1 / 12) ** 0.25)
    assert metrics.bleu(["the cat sat on the mat"], [["the cat sat on a mat", "the cat sat on the mat"]]) == pytest.approx(100)


def test_bleu_accepts_a_variable_number_of_references() -> None:
    hyps = ["the cat sat on the mat", "blue spice is a coffee shop"]
    refs = [["a dog", "the cat sat on a mat", "the cat sat on the mat"], ["blue spice is a coffee shop"]]
    assert metrics.bleu(hyps, refs) == pytest.approx(100)  # the 3rd reference of input 1 counts though input 2 has one
    assert 0 < metrics.bleu(hyps, [refs[0][:2], refs[1]]) < 100


def test_nist_matches_a_hand_computation() -> None:
    # one reference "the cat sat": every unigram has information log2(3/1), every longer n-gram log2(1/1) = 0
    assert corpus_nist(["the cat sat"], [["the cat sat"]]) == pytest.approx(math.log2(3))
    # a hypothesis 2/3 as long: same information per hit, length penalty exp(-beta ln(2/3)^2) = 1/2 exactly
    assert math.exp(-BETA * math.log(2 / 3) ** 2) == pytest.approx(0.5)
    assert corpus_nist(["the cat"], [["the cat sat"]]) == pytest.approx(0.5 * math.log2(3))
    assert corpus_nist(["a dog"], [["the cat sat"]]) == 0.0


def test_ter_is_min_over_references_averaged_over_inputs() -> None:
    # 3 insertions against a 6-word reference = 0.5; a second input matching exactly = 0
    assert metrics.ter(["the cat sat", "a dog"], [["the cat sat on the mat"], ["a dog"]]) == pytest.approx(0.25)
    assert metrics.ter(["the cat sat"], [["the cat sat on the mat", "The cat sat"]]) == 0.0


def test_identical_outputs_get_the_maximum_and_java_metrics_run() -> None:
    problem = coco.java_problem()
    if problem:
        pytest.skip(problem)
    perfect = [refs[0] for refs in REFS]
    scores = score_generation(perfect, REFS, ["bleu", "nist", "meteor", "rouge_l", "cider"], "e2e")
    assert "unavailable" not in scores
    assert scores["bleu"] == pytest.approx(100) and scores["meteor"] == pytest.approx(1.0) and scores["rouge_l"] == pytest.approx(1.0)
    worse = score_generation([HYP, "A shop."], REFS, ["bleu", "nist", "rouge_l", "cider"], "e2e")
    for name in ("bleu", "nist", "rouge_l", "cider"):
        assert 0 <= worse[name] < scores[name], name


def test_webnlg_protocol_identical_outputs() -> None:
    perfect = [refs[-1] for refs in REFS]
    scores = score_generation(perfect, REFS, ["bleu", "ter"], "webnlg")
    assert scores == {"bleu": pytest.approx(100), "ter": 0.0}


def test_missing_java_marks_meteor_unavailable_and_computes_the_rest(monkeypatch) -> None:
    monkeypatch.setattr(coco, "java_problem", lambda: "no `java` on PATH (test)")
    scores = score_generation([HYP, REFS[1][0]], REFS, ["bleu", "nist", "meteor", "rouge_l", "cider"], "e2e")
    assert scores["meteor"] is None and "java" in scores["unavailable"]["meteor"]
    assert "tokenizer" in scores["unavailable"]  # ROUGE-L/CIDEr fell back to 13a tokens, and the record says so
    assert all(isinstance(scores[n], float) and scores[n] > 0 for n in ("bleu", "nist", "rouge_l", "cider"))


def test_unknown_metric_or_protocol_is_a_config_error() -> None:
    from ftlab.errors import ConfigError

    with pytest.raises(ConfigError, match="ter"):
        score_generation(["a"], [["a"]], ["ter"], "e2e")
    with pytest.raises(ConfigError, match="protocol"):
        score_generation(["a"], [["a"]], ["bleu"], "rouge")
