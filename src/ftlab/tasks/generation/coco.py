"""METEOR, ROUGE-L and CIDEr from the MS-COCO caption evaluation code (PyPI `pycocoevalcap`), called the way the E2E
challenge's `measure_scores.py` calls them, plus the Java check they need.

`measure_scores.py` builds a COCO object and runs `COCOEvalCap.evaluate()`, i.e. Stanford PTBTokenizer (CoreNLP 3.4.1
jar, `-preserveLines -lowerCase`, then the COCO punctuation list is dropped) on references and outputs, then BLEU,
METEOR, ROUGE_L and CIDEr. We call the same tokenizer and scorer classes directly: `COCOEvalCap.evaluate()` of
pycocoevalcap 1.2 also runs SPICE, which downloads Stanford models at first use and so cannot run offline, and its
BLEU is not the one E2E reports (E2E's BLEU/NIST come from mteval, see `ftlab.tasks.generation.metrics`).

METEOR is `meteor-1.5.jar -l en -norm` (shipped inside pycocoevalcap), fed segment statistics over stdin; the
corpus score is the jar's aggregate over all segments (not a mean of segment scores). PTBTokenizer and METEOR need a
Java runtime; without one, METEOR is reported as unavailable and ROUGE-L/CIDEr fall back to a 13a tokenisation
(lower-cased, COCO punctuation removed), which is flagged in the result.
"""
from __future__ import annotations

import shutil
import subprocess
from typing import Sequence

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

# the COCO caption code's punctuation list, removed after PTB tokenisation (pycocoevalcap/tokenizer/ptbtokenizer.py)
COCO_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_13A = Tokenizer13a()


def java_problem() -> str | None:
    """None when a working `java` is on PATH, else why not (used as the 'unavailable' reason)."""
    java = shutil.which("java")
    if java is None:
        return "no `java` on PATH: METEOR (meteor-1.5.jar) and the PTB tokenizer need a Java runtime (apt-get install default-jre-headless)"
    try:
        subprocess.run([java, "-version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        return f"`java -version` failed ({type(err).__name__}: {err})"
    return None


def ptb_tokenize(texts_per_item: Sequence[Sequence[str]]) -> list[list[str]]:
    """COCO's tokenisation (Stanford PTBTokenizer, lower-cased, punctuation dropped) of every text of every item."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # PTBTokenizer keeps one output line per input line; an empty text would still map to its own line
    captions = {i: [{"caption": t if t.strip() else "."} for t in texts] for i, texts in enumerate(texts_per_item)}
    tokenized = PTBTokenizer().tokenize(captions)
    return [tokenized[i] for i in range(len(texts_per_item))]


def fallback_tokenize(texts_per_item: Sequence[Sequence[str]]) -> list[list[str]]:
    """Java-free stand-in for ptb_tokenize: 13a tokens, lower-cased, COCO punctuation dropped."""
    return [
        [" ".join(w for w in _13A(t).lower().split() if w not in COCO_PUNCTUATION) for t in texts]
        for texts in texts_per_item
    ]


def _as_coco(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[dict, dict]:
    return {i: list(r) for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}


def meteor(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR 1.5 (`-l en -norm`), 0..1. Needs Java."""
    from pycocoevalcap.meteor.meteor import Meteor

    gts, res = _as_coco(hyps, refs)
    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
    return float(score)


def rouge_l(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """COCO ROUGE-L (LCS F-measure with beta 1.2, best reference per item, mean over items), 0..1."""
    from pycocoevalcap.rouge.rouge import Rouge

    score, _ = Rouge().compute_score(*_as_coco(hyps, refs))
    return float(score)


def cider(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """COCO CIDEr (CIDEr-D, sigma 6, document frequencies from this reference set)."""
    from pycocoevalcap.cider.cider import Cider

    score, _ = Cider().compute_score(*_as_coco(hyps, refs))
    return float(score)
