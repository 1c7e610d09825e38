"""Paper claims as data (conf/claims/<paper>.yaml), tested on the runs the tables count: `python -m ftlab.tables`
writes results/claims.md, results/claims.csv and results/claims.png.

A claim compares two rows of one experiment's table (A and B, by row label or by the file's `rows:` alias) on each of
its tasks, with one relation:

    A - B >= c          difference of means, Welch's t interval
    |A - B| <= c        the same interval, inside [-c, c]
    A / B >= r          "A keeps at least r of B": the Welch interval of A - r*B (no division by a noisy mean)
    std(A) <= std(B)    seed-to-seed spread: percentile bootstrap interval of std(A) - std(B) (ftlab.report.intervals)

Verdicts: **holds** (the 95% interval lies inside the claimed region), **does not hold** (entirely outside),
**inconclusive** (otherwise, or fewer than 2 runs on a side), **no runs** (a side has no protocol-matching run),
**did not learn** (a side's mean does not clear the did-not-learn gate, ftlab.report.gates). Only the records a table counts
(ftlab.report.protocol) are used, so a claim can never see a run the table excluded.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from .gates import Gate
from .intervals import BOOTSTRAP_ROUNDS, bootstrap_std_difference, welch_interval
from .tables import METRIC_NAMES

RELATIONS = ("A - B >= c", "|A - B| <= c", "A / B >= r", "std(A) <= std(B)")
PARAMETER = {"A - B >= c": "c", "|A - B| <= c": "c", "A / B >= r": "r", "std(A) <= std(B)": None}
VERDICTS = ("holds", "does not hold", "inconclusive", "no runs", "did not learn")
INTERVAL_METHOD = {
    "A - B >= c": "Welch t, mean(A) - mean(B)",
    "|A - B| <= c": "Welch t, mean(A) - mean(B)",
    "A / B >= r": "Welch t, mean(A) - r*mean(B)",
    "std(A) <= std(B)": f"bootstrap ({BOOTSTRAP_ROUNDS} resamples of seeds), std(A) - std(B)",
}


STATEMENTS = {"A - B >= c": "{a} − {b} ≥ {p:g}", "|A - B| <= c": "|{a} − {b}| ≤ {p:g}",
              "A / B >= r": "{a} ≥ {p:g} · {b}", "std(A) <= std(B)": "std({a}) ≤ std({b})"}


@dataclass(frozen=True, eq=False)   # eq=False: hashed by identity (the report groups outcomes by claim)
class Claim:
    id: str
    paper: str
    table: str            # experiment_name of the table whose rows A and B are
    quote: str
    source: str
    a: str                # row labels in that table
    b: str
    tasks: tuple[str, ...]
    metrics: dict[str, str]
    relation: str
    parameter: float | None
    file: str

    def region(self) -> tuple[float, float]:
        """The claimed region of the estimate (A - B, A - r*B, or std(A) - std(B))."""
        if self.relation == "A - B >= c":
            return self.parameter, math.inf
        if self.relation == "|A - B| <= c":
            return -self.parameter, self.parameter
        if self.relation == "A / B >= r":
            return 0.0, math.inf
        return -math.inf, 0.0

    def statement(self) -> str:
        """The relation with the row labels and its parameter filled in, e.g. "NxM 2:4 ≥ 0.98 · Dense"."""
        return STATEMENTS[self.relation].format(a=self.a, b=self.b, p=self.parameter)


@dataclass(frozen=True)
class Outcome:
    claim: Claim
    task: str
    metric: str
    split: str | None
    n_a: int
    n_b: int
    a_value: float | None     # mean (std for a std claim) of A's runs
    b_value: float | None
    estimate: float | None
    low: float | None
    high: float | None
    verdict: str


def _fail(claim_id: str, path: Path, message: str) -> ConfigError:
    return ConfigError(f"claim {claim_id!r} in {path}: {message}")


def load_claims(path: Path, tables: dict[str, tuple[DictConfig, Any]]) -> list[Claim]:
    """The claims of one conf/claims/*.yaml, checked against the tables they point at; a malformed claim raises
    ConfigError naming its id and the file."""
    spec = OmegaConf.load(path)
    aliases = dict(spec.get("rows") or {})
    claims = []
    for index, entry in enumerate(spec.get("claims") or []):
        claim_id = entry.get("id") or f"#{index + 1}"
        relation = entry.get("relation")
        if relation not in RELATIONS:
            raise _fail(claim_id, path, f"unknown relation {relation!r}; valid relations: {list(RELATIONS)}")
        name = PARAMETER[relation]
        if name is not None and entry.get(name) is None:
            raise _fail(claim_id, path, f"relation {relation!r} needs a value for {name!r}")
        table_name = entry.get("table") or spec.get("table")
        if table_name not in tables:
            raise _fail(claim_id, path, f"no experiment with a table named {table_name!r}; tables: {sorted(tables)}")
        experiment = tables[table_name][0]
        labels = [row.label for row in experiment.table.rows]
        sides = []
        for side in ("A", "B"):
            given = entry.get(side)
            if given is None:
                raise _fail(claim_id, path, f"missing {side} (a row label of table {table_name!r}, or an alias of `rows:`)")
            label = aliases.get(given, given)
            if label not in labels:
                raise _fail(claim_id, path, f"{side} = {given!r}: table {table_name!r} has no row {label!r}; rows: {labels}")
            sides.append(label)
        tasks = entry.get("tasks") or spec.get("tasks")
        if not tasks:
            raise _fail(claim_id, path, "no tasks (give `tasks:` in the claim or at the top of the file)")
        columns = {}
        for column in experiment.table.columns:
            columns.setdefault(column.task, column.metric)
        metrics = {**columns, **dict(entry.get("metrics") or {})}
        missing = [task for task in tasks if task not in metrics]
        if missing:
            raise _fail(claim_id, path, f"no metric for {missing}: table {table_name!r} has no such column; "
                                        f"give `metrics: {{task: metric}}`")
        claims.append(Claim(
            id=str(claim_id), paper=str(entry.get("paper") or spec.get("paper") or ""), table=table_name,
            quote=str(entry.get("quote") or ""), source=str(entry.get("source") or ""), a=sides[0], b=sides[1],
            tasks=tuple(tasks), metrics={task: metrics[task] for task in tasks}, relation=relation,
            parameter=None if name is None else float(entry[name]), file=path.name))
    ids = [c.id for c in claims]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise _fail(duplicated[0], path, "the id is used twice")
    return claims


def _column_split(experiment: DictConfig, task: str, metric: str) -> str | None:
    for column in experiment.table.columns:
        if column.task == task and column.metric == metric:
            return column.get("split")
    return None


def evaluate(claim: Claim, task: str, tables: dict[str, tuple[DictConfig, Any]], gate: Gate) -> Outcome:
    """One claim on one task, from the runs its table counts."""
    experiment, runs = tables[claim.table]
    metric = claim.metrics[task]
    split = _column_split(experiment, task, metric)
    a = [v for v in (r.best_score(split, metric) for r in runs.runs(claim.a, task)) if v is not None]
    b = [v for v in (r.best_score(split, metric) for r in runs.runs(claim.b, task)) if v is not None]
    is_std = claim.relation == "std(A) <= std(B)"

    def summary(values: list[float]) -> float | None:
        if not values or (is_std and len(values) < 2):
            return None
        return statistics.stdev(values) if is_std else statistics.fmean(values)

    a_value, b_value = summary(a), summary(b)
    r = claim.parameter if claim.relation == "A / B >= r" else 1.0
    estimate = low = high = None
    if a_value is not None and b_value is not None:
        estimate = a_value - r * b_value
    if not a or not b:
        verdict = "no runs"
    elif gate.fails(task, metric, a) or gate.fails(task, metric, b):
        verdict = "did not learn"
    elif len(a) < 2 or len(b) < 2:
        verdict = "inconclusive"
    else:
        if is_std:
            estimate, low, high = bootstrap_std_difference(a, b)
        else:
            estimate, low, high = welch_interval(a, b, r)
        verdict = interval_verdict(low, high, claim.region())
    return Outcome(claim, task, metric, split, len(a), len(b), a_value, b_value, estimate, low, high, verdict)


def interval_verdict(low: float, high: float, region: tuple[float, float]) -> str:
    """holds: [low, high] inside the (closed) region; does not hold: disjoint from it; inconclusive otherwise."""
    lo, hi = region
    if lo <= low and high <= hi:
        return "holds"
    if high < lo or low > hi:
        return "does not hold"
    return "inconclusive"


def claim_files(claims_dir: Path) -> list[Path]:
    files = sorted(claims_dir.glob("*.yaml"))
    if not files:
        raise ConfigError(f"no claims found: {claims_dir}/*.yaml (the tables command tests every paper claim there)")
    return files


def evaluate_all(claims_dir: Path, tables: dict[str, tuple[DictConfig, Any]], gate: Gate) -> list[Outcome]:
    outcomes = []
    for path in claim_files(claims_dir):
        for claim in load_claims(path, tables):
            outcomes += [evaluate(claim, task, tables, gate) for task in claim.tasks]
    return outcomes


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _region_text(region: tuple[float, float]) -> str:
    lo, hi = region
    if math.isinf(hi):
        return f"≥ {lo:g}"
    if math.isinf(lo):
        return f"≤ {hi:g}"
    return f"[{lo:g}, {hi:g}]"


def render_markdown(outcomes: list[Outcome], tables: dict[str, tuple[DictConfig, Any]], gate: Gate) -> str:
    md = io.StringIO()
    md.write("# Paper claims tested on our runs\n\n")
    md.write("Generated by `python -m ftlab.tables` from the claims in `conf/claims/*.yaml` and the run records the "
             "tables count; do not edit by hand. Read this first: it says which of the papers' sentences our runs "
             "support, contradict, or cannot decide.\n\n")
    md.write("- **Runs**: per claim and task, the runs of two rows (A, B) of one table (`results/<table>.md`), only "
             "those matching the table's protocol (ftlab.report.protocol: the config the row would launch today, seed "
             "aside; the table header names every excluded record). One value per run: its best-on-dev score on "
             "the table's metric for that task. Our runs are not the papers' setting (each table says how).\n")
    md.write("- **Interval**: 95%. A − B and |A − B| claims: Welch's t interval of the difference of means (unequal "
             "variances, Welch–Satterthwaite degrees of freedom, scipy.stats.t). Ratio claims \"A ≥ r·B\": Welch's "
             "interval of mean(A) − r·mean(B), variance s²_A/n_A + r²·s²_B/n_B (no division by a noisy B). Std "
             f"claims: percentile bootstrap of std(A) − std(B), {BOOTSTRAP_ROUNDS} resamples of each side's seeds "
             "from a fixed generator.\n")
    md.write("- **Verdict**: **holds** = the interval lies inside the claimed region; **does not hold** = entirely "
             "outside it; **inconclusive** = it straddles the boundary, or a side has fewer than 2 runs; **no runs** "
             "= a side has no protocol-matching run; **did not learn** = a side's mean does not clear the "
             f"did-not-learn gate: the trivial predictor's dev score + a margin ({gate.source}).\n\n")
    md.write("## Summary\n\n| claim | paper | A vs B (table) | relation | " + "verdict per task |\n|---|---|---|---|---|\n")
    order = list(dict.fromkeys(o.claim for o in outcomes))
    for claim in order:
        verdicts = ", ".join(f"{o.task}: **{o.verdict}**" for o in outcomes if o.claim is claim)
        md.write(f"| {claim.id} | {claim.paper} | {claim.a} vs {claim.b} (`{claim.table}`) | {claim.statement()} | "
                 f"{verdicts} |\n")
    for claim in order:
        md.write(f"\n## {claim.id}: {claim.statement()}\n\n")
        md.write(f"> {claim.quote}\n\n— {claim.paper}, {claim.source} (`conf/claims/{claim.file}`)\n\n")
        md.write(f"A = \"{claim.a}\", B = \"{claim.b}\": rows of `results/{tables[claim.table][0].table.name}.md` "
                 f"(experiment `{claim.table}`). Estimate: {INTERVAL_METHOD[claim.relation]}; claimed region "
                 f"{_region_text(claim.region())}.\n\n")
        stat = "std" if claim.relation == "std(A) <= std(B)" else "mean"
        md.write(f"| task | metric | n A | n B | {stat} A | {stat} B | estimate | 95% interval | verdict |\n"
                 "|---|---|---|---|---|---|---|---|---|\n")
        for o in (o for o in outcomes if o.claim is claim):
            interval = "—" if o.low is None else f"[{o.low:.2f}, {o.high:.2f}]"
            md.write(f"| {o.task} | {METRIC_NAMES.get(o.metric, o.metric)} | {o.n_a} | {o.n_b} | {_num(o.a_value)} | "
                     f"{_num(o.b_value)} | {_num(o.estimate)} | {interval} | **{o.verdict}** |\n")
    return md.getvalue()


CSV_FIELDS = ["claim", "paper", "file", "table", "a", "b", "relation", "parameter", "task", "metric", "split", "n_a",
              "n_b", "a_value", "b_value", "estimate", "low", "high", "interval", "verdict"]


def render_csv(outcomes: list[Outcome]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for o in outcomes:
        c = o.claim
        numbers = ["" if v is None else f"{v:.4f}" for v in (o.a_value, o.b_value, o.estimate, o.low, o.high)]
        writer.writerow([c.id, c.paper, c.file, c.table, c.a, c.b, c.relation,
                         "" if c.parameter is None else f"{c.parameter:g}", o.task, o.metric, o.split or "", o.n_a,
                         o.n_b, *numbers, INTERVAL_METHOD[c.relation], o.verdict])
    return out.getvalue()
