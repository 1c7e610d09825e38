"""Data-to-text readers on the real staged files (counts as in ../shared/data/SOURCES.md), the LoRA linearisation,
reference grouping per unique input, target-only labels, and the errors for unusable rows and files."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ftlab.backbones import load_tokenizer
from ftlab.errors import DataError
from ftlab.tasks.generation.datamodule import encode_prompts, encode_training_rows, group_references, special_ids
from ftlab.tasks.generation.linearize import delinearize_e2e, delinearize_triples, linearize_e2e, linearize_triples, parse_e2e_mr
from ftlab.tasks.generation.readers import read_dart_json, read_e2e_csv, read_webnlg_xml

from conftest import DATA_DIR, compose_config


def _entries(rows: list[dict]) -> int:
    return len({r["where"].split(" lex ")[0].split(" annotation ")[0] for r in rows})


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(compose_config(["backbone=tiny-gpt2"]).backbone)


@pytest.mark.parametrize("file, rows, unique", [
    ("trainset.csv", 42061, 4862), ("devset.csv", 4672, 547), ("testset_w_refs.csv", 4693, 630), ("testset.csv", 630, 630),
])
def test_e2e_reader_counts(file: str, rows: int, unique: int) -> None:
    read = read_e2e_csv(DATA_DIR / "e2e" / file)
    assert len(read) == rows and len({r["input"] for r in read}) == unique
    if file == "testset.csv":
        assert all(r["target"] is None for r in read)
    else:
        assert all(r["target"] for r in read)


def test_e2e_linearisation_is_loras_format_and_round_trips() -> None:
    first = read_e2e_csv(DATA_DIR / "e2e" / "trainset.csv")[0]
    assert first["input"] == "name : The Vaults | Type : pub | price : more than £30 | customer rating : 5 out of 5 | near : Café Adriatic"
    assert first["target"] == "The Vaults pub near Café Adriatic has a 5 star rating.  Prices start at £30."
    with (DATA_DIR / "e2e" / "devset.csv").open(encoding="utf-8", newline="") as handle:
        mrs = {row["mr"] for row in csv.DictReader(handle)}
    for mr in mrs:
        slots = parse_e2e_mr(mr)
        assert ", ".join(f"{a}[{v}]" for a, v in delinearize_e2e(linearize_e2e(slots))) == mr


def test_webnlg_reader_counts_and_comment_filter() -> None:
    expected = {"train": (6940, 18102), "dev": (872, 2268), "test/testdata_with_lex.xml": (1862, 4928)}
    for split, (entries, lexes) in expected.items():
        everything = read_webnlg_xml(DATA_DIR / "webnlg" / split, {"keep_comments": None})
        assert (_entries(everything), len(everything)) == (entries, lexes)
    # LoRA keeps only lexicalisations marked "good": dev drops 10 "toFix" ones (train drops 77: 18,025 kept)
    assert len(read_webnlg_xml(DATA_DIR / "webnlg" / "dev", {"keep_comments": ["good"]})) == 2258
    no_lex = read_webnlg_xml(DATA_DIR / "webnlg" / "test" / "testdata_no_lex.xml")
    assert len(no_lex) == 1862 and all(r["target"] is None for r in no_lex)


def test_triple_linearisation_round_trips() -> None:
    webnlg = read_webnlg_xml(DATA_DIR / "webnlg" / "dev")
    assert webnlg[0]["input"] == "Aarhus : leaderName : Jacob_Bundsgaard"
    dart = read_dart_json(DATA_DIR / "dart" / "dart-v1.1.1-full-dev.json")
    assert (_entries(dart), len(dart)) == (2768, 6980)
    assert dart[0]["input"] == "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina"
    for row in webnlg + dart:
        assert linearize_triples(delinearize_triples(row["input"])) == row["input"]
    # an object may itself contain " : " (a DART score); only subject and relation are split off
    assert delinearize_triples("Donegal : result : 2-10 : 0-14") == [("Donegal", "result", "2-10 : 0-14")]


def test_references_grouped_per_unique_input_and_mapped_back() -> None:
    rows = read_e2e_csv(DATA_DIR / "e2e" / "testset_w_refs.csv")
    grouped = group_references(rows, "test")
    assert len(grouped.inputs) == 630 and len(grouped.line_to_input) == 4693
    assert sum(len(r) for r in grouped.references) == 4693
    for row, i in zip(rows, grouped.line_to_input):
        assert grouped.inputs[i] == row["input"] and row["target"] in grouped.references[i]
    subset = group_references(rows, "test", limit=10)
    assert len(subset.inputs) == 10 and sum(i >= 0 for i in subset.line_to_input) == sum(len(r) for r in subset.references)


def test_reference_free_file_cannot_be_evaluated() -> None:
    with pytest.raises(DataError, match="testset_w_refs.csv"):
        group_references(read_e2e_csv(DATA_DIR / "e2e" / "testset.csv"), "test")


def test_training_row_without_reference_names_file_and_line(tmp_path: Path, tokenizer) -> None:
    bad = tmp_path / "train.csv"
    bad.write_text('mr,ref\n"name[A], eatType[pub]",A is a pub.\n"name[B], eatType[pub]",\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv:3.*no reference"):
        encode_training_rows(read_e2e_csv(bad), tokenizer, 64)
    bad.write_text('mr,ref\n"name[A] eatType pub",x\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv:2.*malformed E2E meaning representation"):
        read_e2e_csv(bad)


def test_labels_mask_the_prompt_and_end_with_eos(tokenizer) -> None:
    rows = read_e2e_csv(DATA_DIR / "e2e" / "devset.csv")[:4]
    encoded = encode_training_rows(rows, tokenizer, 512)
    prompts = encode_prompts([r["input"] for r in rows], tokenizer, 512)
    sep, eos = special_ids(tokenizer)
    for row, enc, prompt in zip(rows, encoded, prompts):
        n = len(prompt)
        assert enc["input_ids"][:n] == prompt and prompt[-1] == sep
        assert enc["labels"][:n] == [-100] * n and -100 not in enc["labels"][n:]
        assert enc["labels"][n:] == enc["input_ids"][n:] and enc["input_ids"][-1] == eos
        assert tokenizer.decode(enc["labels"][n:-1]) == tokenizer.decode(tokenizer(row["target"], add_special_tokens=False)["input_ids"])


def test_task_configs_point_at_the_staged_files() -> None:
    for task in ("e2e", "webnlg", "dart"):
        cfg = OmegaConf.to_container(compose_config([f"task={task}"]).task, resolve=True)
        assert cfg["kind"] == "generation"
        for split in cfg["eval_splits"] + cfg["test_splits"] + (["train"] if task != "dart" else []):
            assert (DATA_DIR / cfg["local"]["dir"] / cfg["splits"][split]["file"]).exists(), (task, split)
