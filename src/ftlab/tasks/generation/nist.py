"""Corpus NIST (Doddington 2002) as the E2E challenge's `measure_scores.py -p` computes it (its `pymteval`, which the
LoRA recipe runs), written here because no PyPI package implements that variant: sacrebleu has no NIST, and NLTK's
`corpus_nist` differs in tokenisation and in how it pools references of variable number.

Definition (mteval-v13a conventions): segments tokenised with the mteval-13a tokenizer (sacrebleu's `13a`) and
lower-cased; n = 1..5;
    info(w_1..w_n) = log2( count(w_1..w_{n-1}) / count(w_1..w_n) ), counts over ALL reference segments of the corpus,
                     count of the empty prefix = total number of reference tokens;
    NIST = BP * sum_n [ sum_segments sum_{matched n-grams} info * clipped_hits / total hypothesis n-grams ];
    BP   = exp(-beta * log(min(L_sys / L_ref, 1))^2), beta = -ln(0.5) / ln(1.5)^2, L_sys = hypothesis tokens,
           L_ref = sum over segments of the mean reference length;
clipped hits use, per n-gram, the maximum count over the segment's references. As in pymteval, the number of
hypothesis n-grams of a segment is counted as len - n + 1 even when that is negative (outputs shorter than n tokens),
and a zero total is replaced by 1; this only matters for outputs of fewer than 5 tokens.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

BETA = -math.log(0.5) / math.log(1.5) ** 2
_TOKENIZE = Tokenizer13a()


def _tokens(text: str) -> list[str]:
    return _TOKENIZE(text).lower().split()


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 5) -> float:
    """NIST of hypotheses[i] against the reference list references[i] (any number of references per segment)."""
    ref_counts: list[Counter] = [Counter() for _ in range(max_n + 1)]
    info_sum = [0.0] * max_n
    hyp_total = [0] * max_n
    hits_per_segment: list[list[Counter]] = []
    sys_len, ref_len = 0, 0.0
    for hyp, refs in zip(hypotheses, references, strict=True):
        hyp_tok, refs_tok = _tokens(hyp), [_tokens(r) for r in refs]
        segment_hits = []
        for n in range(1, max_n + 1):
            hyp_ngrams = _ngrams(hyp_tok, n)
            best_ref: Counter = Counter()
            for ref in refs_tok:
                ref_ngrams = _ngrams(ref, n)
                ref_counts[n].update(ref_ngrams)
                best_ref |= ref_ngrams  # element-wise max over the references
            segment_hits.append(hyp_ngrams & best_ref)  # clipped hits
            hyp_total[n - 1] += len(hyp_tok) - n + 1  # unclipped, as pymteval counts it
        hits_per_segment.append(segment_hits)
        ref_counts[0][()] += sum(len(r) for r in refs_tok)
        sys_len += len(hyp_tok)
        ref_len += sum(len(r) for r in refs_tok) / len(refs_tok)

    def info(ngram: tuple[str, ...]) -> float:
        return math.log2(ref_counts[len(ngram) - 1][ngram[:-1]] / ref_counts[len(ngram)][ngram])

    for segment_hits in hits_per_segment:
        for n, hits in enumerate(segment_hits):
            info_sum[n] += sum(info(g) * c for g, c in hits.items())
    score = sum(s / (t or 1) for s, t in zip(info_sum, hyp_total))
    ratio = sys_len / ref_len if ref_len else 0.0
    penalty = 1.0 if ratio >= 1 else (0.0 if ratio <= 0 else math.exp(-BETA * math.log(ratio) ** 2))
    return penalty * score
