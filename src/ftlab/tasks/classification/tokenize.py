"""Tokenise a split once and keep it on disk, keyed by the rows, the tokenizer and the maximum length."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

from datasets import Dataset, load_from_disk
from filelock import FileLock
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
    if path is None:
        return _tokenize(rows, tokenizer, text_fields, max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    # two launches with a cold cache: one tokenises and publishes by rename, the other waits and reads its result
    with FileLock(str(path) + ".lock"):
        if not path.is_dir():
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)  # left by a process killed mid-write
            _tokenize(rows, tokenizer, text_fields, max_length).save_to_disk(str(tmp))
            os.replace(tmp, path)
    return load_from_disk(str(path))


def _tokenize(rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase, text_fields: Sequence[str], max_length: int) -> Dataset:
    texts = [[row[field] for row in rows] for field in text_fields]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    columns = {key: list(value) for key, value in encoded.items()}
    columns["labels"] = [row["label"] for row in rows]
    columns["idx"] = list(range(len(rows)))
    columns["length"] = [len(ids) for ids in columns["input_ids"]]
    return Dataset.from_dict(columns)
