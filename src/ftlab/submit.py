"""`python -m ftlab.submit <records or folders…> [--out DIR]`: the GLUE server's TSVs and zip from run records.

Each record must carry test-set predictions (`predict.splits=[test]` at launch; a completed run launched again with it
is not retrained: its best checkpoint predicts). One file per server task: CoLA, SST-2, MRPC, STS-B, QQP, MNLI-m,
MNLI-mm (an MNLI run's test_matched / test_mismatched), AX (the MNLI run's diagnostic predictions), QNLI, RTE, WNLI;
each `index<TAB>prediction` with the task's label names (STS-B: a score clipped to [0, 5]). Several records of one
task: the best on dev is used, and said so. The zip holds the files at its root, as the server expects.
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

from . import records
from .records import RunRecord

# (task, split) -> the server's file name
SERVER_FILES = {
    ("cola", "test"): "CoLA.tsv", ("sst2", "test"): "SST-2.tsv", ("mrpc", "test"): "MRPC.tsv",
    ("stsb", "test"): "STS-B.tsv", ("qqp", "test"): "QQP.tsv", ("mnli", "test_matched"): "MNLI-m.tsv",
    ("mnli", "test_mismatched"): "MNLI-mm.tsv", ("mnli", "ax"): "AX.tsv", ("qnli", "test"): "QNLI.tsv",
    ("rte", "test"): "RTE.tsv", ("wnli", "test"): "WNLI.tsv",
}


class SubmitError(Exception):
    pass


def _records(paths: list[str]) -> list[RunRecord]:
    found = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found.extend(records.iter_records(path))
        else:
            record = records.read(path)
            if record is None:
                raise SubmitError(f"{path}: no such record")
            found.append(record)
    return found


def _label(record: RunRecord, prediction: float) -> str:
    task = record.task
    if task["kind"] == "regression":
        return f"{min(max(prediction, 0.0), 5.0):.3f}"
    return str(task["local"]["label_values"][int(prediction)])


def choose(found: list[RunRecord]) -> tuple[dict[str, tuple[RunRecord, str]], list[str]]:
    """{server file: (record, split)} of the best-on-dev record per file, and notes on what was left out."""
    chosen: dict[str, tuple[RunRecord, str]] = {}
    notes = []
    for record in found:
        predicted = record.test_predictions
        if not record.completed or not predicted:
            notes.append(f"{record.name}: no test predictions; launch its command again with "
                         f"predict.splits=[test] (MNLI: [test_matched,test_mismatched,ax]): the completed run is "
                         f"reused and its best checkpoint predicts")
            continue
        for split in predicted:
            server = SERVER_FILES.get((record.task_name, split))
            if server is None:
                notes.append(f"{record.name}: {split} of task {record.task_name} is no GLUE server file; skipped")
                continue
            previous = chosen.get(server)
            if previous is None or (record.best_score() or float("-inf")) > (previous[0].best_score() or float("-inf")):
                if previous is not None:
                    notes.append(f"{server}: {record.name} is better on dev than {previous[0].name}")
                chosen[server] = (record, split)
    return chosen, notes


def write(chosen: dict[str, tuple[RunRecord, str]], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    archive = out / "glue_submission.zip"
    with zipfile.ZipFile(archive.with_suffix(".zip.tmp"), "w", zipfile.ZIP_DEFLATED) as bundle:
        for server, (record, split) in sorted(chosen.items()):
            entry = record.test_predictions[split]
            if len(entry["index"]) != len(entry["predictions"]) or len(set(entry["index"])) != len(entry["index"]):
                raise SubmitError(f"{record.name}: {split} predictions do not match their index column")
            lines = ["index\tprediction"] + [f"{i}\t{_label(record, p)}"
                                             for i, p in zip(entry["index"], entry["predictions"])]
            text = "\n".join(lines) + "\n"
            (out / server).write_text(text)
            bundle.writestr(server, text)
    archive.with_suffix(".zip.tmp").replace(archive)
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftlab.submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="+", help="record files or folders of records")
    parser.add_argument("--out", default="outputs/glue_submission", help="folder of the TSVs and the zip")
    args = parser.parse_args(argv)
    try:
        chosen, notes = choose(_records(args.records))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        if not chosen:
            raise SubmitError("no record with test predictions: nothing to submit")
        archive = write(chosen, Path(args.out))
    except (SubmitError, records.RecordError) as err:
        print(f"ftlab.submit: {err}", file=sys.stderr)
        return 1
    for server, (record, split) in sorted(chosen.items()):
        entry = record.test_predictions[split]
        print(f"{server:<12} {entry['rows']:>6} rows  dev {record.best_score()}  {record.name} ({split})")
    missing = sorted(set(SERVER_FILES.values()) - set(chosen))
    if missing:
        print(f"the GLUE server scores a zip with all {len(SERVER_FILES)} files; missing: {', '.join(missing)}",
              file=sys.stderr)
    print(f"wrote {archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
