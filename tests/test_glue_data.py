"""The GLUE reader on the real staged files, and its errors on bad input."""
from __future__ import annotations

from pathlib import Path

import pytest

from ftlab.errors import DataError
from ftlab.tasks.classification.glue import read_glue_tsv, read_local_split

from conftest import DATA_DIR, compose_config

# rows per split, from ../shared/data/SOURCES.md
COUNTS = {
    "cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "stsb": (5749, 1500), "rte": (2490, 277),
    "wnli": (635, 71),
}


def task_cfg(name: str):
    return compose_config([f"task={name}"]).task


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_row_counts_and_labels(name: str) -> None:
    task = task_cfg(name)
    train, dev = (read_local_split(DATA_DIR, task, split) for split in ("train", "dev"))
    assert (len(train), len(dev)) == COUNTS[name]
    for rows in (train, dev):
        assert all(set(task.text_fields) <= set(r) and all(isinstance(r[f], str) for f in task.text_fields) for r in rows)
        labels = [r["label"] for r in rows]
        if task.kind == "regression":
            assert all(isinstance(v, float) and 0.0 <= v <= 5.0 for v in labels)
        else:
            assert set(labels) == set(range(task.num_labels))


def test_cola_has_no_header_and_keeps_first_row() -> None:
    rows = read_local_split(DATA_DIR, task_cfg("cola"), "dev")
    assert rows[0] == {"sentence": "The sailors rode the breeze clear of the rocks.", "label": 1}


def test_quotes_are_not_interpreted() -> None:
    """MRPC's second dev row has an unbalanced quote; a quote-aware reader would merge rows and lose some."""
    rows = read_local_split(DATA_DIR, task_cfg("mrpc"), "dev")
    assert rows[0]["sentence2"].startswith('" The foodservice pie business')
    assert rows[0]["label"] == 1


def test_stsb_labels_are_floats() -> None:
    rows = read_local_split(DATA_DIR, task_cfg("stsb"), "dev")
    assert rows[0]["label"] == 5.0 and rows[1]["label"] == 4.75


def test_malformed_row_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "dev.tsv"
    bad.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly two\n")
    with pytest.raises(DataError, match=r"dev\.tsv:3: malformed row: expected 4"):
        read_glue_tsv(bad, task_cfg("rte"))


def test_unknown_label_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "dev.tsv"
    bad.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(DataError, match=r"dev\.tsv:2: label 'maybe' is not one of"):
        read_glue_tsv(bad, task_cfg("rte"))


def test_missing_folder_says_where_it_looked_and_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        read_local_split(tmp_path, task_cfg("rte"), "train")
    assert str(tmp_path / "glue" / "RTE") in str(err.value)
    assert "paths.data_dir" in str(err.value) and "FTLAB_DATA_DIR" in str(err.value)


def test_missing_file_says_where_it_looked(tmp_path: Path) -> None:
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    with pytest.raises(DataError, match="train.tsv"):
        read_local_split(tmp_path, task_cfg("rte"), "train")
