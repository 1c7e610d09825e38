"""Check exported N:M models independently of ftlab's own verifier: read each run's saved safetensors with plain torch
and count the non-zeros of every group of m consecutive weights along the input dim of the BERT-family block linears.

    python scripts/verify_nm_export.py results/records/nxm_cpu      # runs made with method.save_model=true

Prints one line per run and exits non-zero if any exported block linear breaks the pattern (or no export is found).
Deliberately imports nothing from ftlab: this is the second opinion on `sparsity.verify_nm`.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
# The six block linears of a BERT-family encoder layer (nn.Linear: weight is (out, in)); embeddings, pooler and
# classifier never match.
BLOCK_LINEAR = re.compile(
    r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense"
    r"|output\.dense)\.weight$"
)


def check_export(folder: Path, n: int, m: int) -> dict[str, float | int | bool]:
    """Per-run totals: block linears found, groups, groups with > n non-zeros, groups with exactly n, density."""
    state = load_file(str(folder / "model.safetensors"))
    blocks = {k: v for k, v in state.items() if BLOCK_LINEAR.search(k)}
    groups = over = exact = nonzero = numel = 0
    for weight in blocks.values():
        per_group = (weight != 0).reshape(weight.shape[0], weight.shape[1] // m, m).sum(-1)
        groups += per_group.numel()
        over += int((per_group > n).sum())
        exact += int((per_group == n).sum())
        nonzero += int((weight != 0).sum())
        numel += weight.numel()
    return {"layers": len(blocks), "groups": groups, "violating_groups": over, "exactly_n_groups": exact,
            "density": nonzero / numel if numel else float("nan"), "ok": bool(blocks) and over == 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path, nargs="+", help="record folders (or record files)")
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--m", type=int, default=4)
    args = parser.parse_args(argv)
    files = [f for p in args.records for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]
    checked, failed = 0, 0
    for file in files:
        record = json.loads(file.read_text())
        saved = (record.get("method_report") or {}).get("saved_model")
        if not saved or record["config"]["method"]["name"] not in ("asp", "nxm"):
            continue
        folder = Path(saved) if Path(saved).is_absolute() else ROOT / saved
        if not (folder / "model.safetensors").exists():
            print(f"{record['name']}: export missing at {saved}")
            failed += 1
            continue
        result = check_export(folder, args.n, args.m)
        checked, failed = checked + 1, failed + (not result["ok"])
        print(f"{record['name']}: {result['layers']} block linears, {result['groups']} groups of {args.m}, "
              f"{result['violating_groups']} with > {args.n} non-zeros, {result['exactly_n_groups']} with exactly "
              f"{args.n}, density {result['density']:.4f} -> {'OK' if result['ok'] else 'FAIL'}")
    if not checked:
        print("no asp/nxm record with a saved export (run with method.save_model=true)")
        return 1
    print(f"{checked} exports checked, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
