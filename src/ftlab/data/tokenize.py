"""Tokenise a split once and keep it on disk, keyed by the rows, the tokenizer and the maximum length."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from datasets import Dataset, load_from_disk
from transformers import PreTrainedTokenizerBase

from .glue import Row


def _fingerprint(rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase, text_fields: Sequence[str], max_length: int) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer), list(text_fields), max_length]).encode())
    digest.update(json.dumps(rows, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def tokenize_rows(
    rows: Sequence[Row],
    tokenizer: PreTrainedTokenizerBase,
    text_fields: Sequence[str],
    max_length: int,
    cache_dir: Path | None,
) -> Dataset:
    """A Dataset with input_ids, attention_mask (token_type_ids where the model uses them), labels, idx and length."""
    path = cache_dir / _fingerprint(rows, tokenizer, text_fields, max_length) if cache_dir else None
    if path is not None and path.is_dir():
        return load_from_disk(str(path))
    texts = [[row[field] for row in rows] for field in text_fields]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    columns = {key: list(value) for key, value in encoded.items()}
    columns["labels"] = [row["label"] for row in rows]
    columns["idx"] = list(range(len(rows)))
    columns["length"] = [len(ids) for ids in columns["input_ids"]]
    dataset = Dataset.from_dict(columns)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        dataset.save_to_disk(str(tmp))
        tmp.rename(path)
        dataset = load_from_disk(str(path))
    return dataset
