"""The ‖∇Z‖ cache of WTA-CRS (WTA-CRS App. D, Alg. 1): output-gradient row norms from the last visit of each training example.

The sampling probabilities need ‖∇Z_i‖ during the forward pass, before ∇Z exists; the paper uses the norms recorded the
previous time the same example went through backward (one epoch stale).

Granularity — one norm per *token*, as the official code (`WTA:seq2seq/approxlinear/scheme.py`), not one per example as
the paper's Alg. 1 ("ignoring the sequence length"). The rows being sampled are tokens, and their gradient norms differ
by orders of magnitude inside one sequence (the [CLS]/<eos> position that feeds the head vs the rest); one norm per
example gives every token of a sequence the same factor and so throws that information away.

Keys — (dataset example index `batch["idx"]`, token position). ftlab pads dynamically, so a batch's length changes from
visit to visit, but it pads on the right and truncates once at tokenisation (the tokenised split is cached): token t
of example i is the same token on every visit, and positions past the example's length are always padding. A longer
batch reads padding slots never written, i.e. 0, which is right for encoder padding (its output gradient is exactly 0);
`row_probabilities`' floor keeps such rows at p > 0 anyway, so a wrong zero costs variance, never bias. Left padding
would break the keying (positions shift with the batch length): it is detected and reported once, and sampling stays
unbiased.

Bounds — per cache table, one bf16 row of `max_positions` norms per example seen, grown on demand, plus one "seen"
flag per example: bytes = tables × examples × (2·max_positions + 1). Tables: one per replaced linear, and for the
attention products one per head and operand (P·V: 1, QKᵀ: 2), or one per operand with `attention_norms=pooled`.
At 128 positions (257 B per table and example):

| model, level 2 | tables per-head (pooled) | per example | RTE (2.5k) | MNLI (393k), per-head (pooled) |
|---|---|---|---|---|
| MiniLM-L6 (6 layers, 12 heads) | 18 + 216 (18 + 18) | 60 kB (9.3 kB) | 150 MB (23 MB) | — |
| BERT-base (12 layers, 12 heads) | 36 + 432 (36 + 36) | 120 kB (18.5 kB) | 300 MB (46 MB) | 47 GB (7.3 GB) |

(the official code's per-token cache, docs/methods/wtacrs.md#norm-cache: ≈157 kB per example, 62 GB for MNLI). `max_bytes` caps the
size, and the cap is checked up front: the method tells the cache the training set's size (`expect`) before the
first step, so the first forward allocates every table at that size or fails with an error that says what to change,
instead of failing mid-epoch. The cache lives on the method instance in CPU memory: it is not a buffer, so it is not
in checkpoints (a resumed run restarts from p ∝ ‖X‖ for one epoch).
"""
from __future__ import annotations

import logging

import torch

from ...errors import ConfigError

log = logging.getLogger("ftlab")


class NormCache:
    """Per-layer tables of ‖∇Z‖ keyed by (example index, token position), and the current batch's keys."""

    def __init__(self, max_positions: int, max_bytes: int, dtype: torch.dtype = torch.bfloat16):
        if max_positions < 1:
            raise ConfigError(f"WTA-CRS cache: max_positions={max_positions} must be >= 1; set it to data.max_length")
        self.max_positions, self.max_bytes, self.dtype = int(max_positions), int(max_bytes), dtype
        self.tables: dict[str, torch.Tensor] = {}
        self.seen: dict[str, torch.Tensor] = {}
        self.expected_examples = 0   # the training set's size when known: tables are allocated at it at once
        self.idx: torch.Tensor | None = None
        self._slots: dict[tuple[int, int], torch.Tensor] = {}
        self._warned_left_padding = False

    # -- the batch ------------------------------------------------------------------------------------------------
    def begin_batch(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Set the example indices of the batch about to go forward (call before every training forward)."""
        if idx.dim() != 1:
            raise ConfigError(f"WTA-CRS cache: batch['idx'] must be a 1-D tensor of example indices, got shape {tuple(idx.shape)}")
        self.idx = idx.detach().to("cpu", torch.long)
        self._slots = {}
        if attention_mask is not None and not self._warned_left_padding:
            mask = attention_mask.detach()
            if mask.dim() == 2 and bool((mask[:, 0] == 0).any()):
                self._warned_left_padding = True
                log.warning("WTA-CRS: the batch is left-padded, so cached gradient norms are keyed by shifting token "
                            "positions; sampling stays unbiased but its variance is higher. Pad on the right.")

    def slots(self, leading: tuple[int, ...]) -> torch.Tensor | None:
        """Flat cache slot (example · max_positions + position) of each row of an input with leading dims `leading`.

        None when the rows cannot be keyed: no batch set, or the input is not (batch, positions, ...) of this batch.
        """
        if self.idx is None:
            raise ConfigError(
                "WTA-CRS: an approximated layer ran a training forward with no batch indices set. Training through "
                "ftlab sets them from batch['idx'] (method.on_train_batch_start); in a custom loop call "
                "method.cache.begin_batch(batch['idx']) before each forward, or put the model in eval mode."
            )
        if len(leading) != 2 or leading[0] != self.idx.numel():
            return None
        key = (leading[0], leading[1])
        if key not in self._slots:
            positions = leading[1]
            if positions > self.max_positions:
                raise ConfigError(
                    f"WTA-CRS cache: a batch has {positions} token positions but the cache holds {self.max_positions}; "
                    f"set method.max_positions >= data.max_length ({positions} or more)"
                )
            self._grow(int(self.idx.max()) + 1)
            self._slots[key] = (self.idx[:, None] * self.max_positions + torch.arange(positions)).flatten()
        return self._slots[key]

    # -- the tables -----------------------------------------------------------------------------------------------
    def expect(self, examples: int) -> None:
        """Allocate for `examples` training examples from the start (the first forward then fails, not a later one)."""
        self.expected_examples = int(examples)

    def register(self, layer: str) -> None:
        if layer in self.tables:
            return
        rows = self._rows()
        self._check(len(self.tables) + 1, rows)
        self.tables[layer] = torch.zeros(rows, self.max_positions, dtype=self.dtype)
        self.seen[layer] = torch.zeros(rows, dtype=torch.bool)

    def _rows(self) -> int:
        return next(iter(self.tables.values())).shape[0] if self.tables else 0

    def _check(self, tables: int, examples: int) -> None:
        need = tables * examples * (self.max_positions * torch.finfo(self.dtype).bits // 8 + 1)
        if need > self.max_bytes:
            raise ConfigError(
                f"WTA-CRS cache would need {need / 2**20:.0f} MiB for {examples} examples x {tables} tables x "
                f"{self.max_positions} positions, over method.max_cache_mb={self.max_bytes / 2**20:.0f}; raise "
                f"method.max_cache_mb, set method.attention_norms=pooled (one table per attention operand, not per "
                f"head), lower data.max_length/method.max_positions, or sample fewer products (method.roles, "
                f"method.sample_scores=false, method.sample_attention=false)"
            )

    def _grow(self, examples: int) -> None:
        have = self._rows()
        if examples <= have:
            return
        target = max(examples, int(have * 1.5), self.expected_examples)  # amortised growth
        self._check(len(self.tables), target)
        for layer, table in self.tables.items():
            grown = torch.zeros(target, self.max_positions, dtype=self.dtype)
            grown[: table.shape[0]] = table
            self.tables[layer] = grown
            seen = torch.zeros(target, dtype=torch.bool)
            seen[: table.shape[0]] = self.seen[layer]
            self.seen[layer] = seen

    def lookup(self, layer: str, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cached norms, known) per row: known is False for rows of examples this layer has not written yet."""
        norms = self.tables[layer].view(-1)[slots].float()
        known = self.seen[layer][slots // self.max_positions]
        return norms, known

    def write(self, layer: str, slots: torch.Tensor, norms: torch.Tensor) -> None:
        """Store this backward's ‖∇Z_i‖ at the rows' slots and mark their examples seen."""
        self.tables[layer].view(-1)[slots] = norms.detach().to("cpu", self.dtype)
        self.seen[layer][slots // self.max_positions] = True

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tables.values()) + sum(s.numel() for s in self.seen.values())

    def examples(self) -> int:
        return int(max((s.sum() for s in self.seen.values()), default=0))
