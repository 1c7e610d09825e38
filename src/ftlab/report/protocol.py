"""Does a run record belong to a table's protocol? `python -m ftlab.tables` asks this of every record it might count.

A table row declares runs of its experiment: `python run.py experiment=<e> method=<row.method> task=<column.task>`
plus the row's `where` values. The protocol of a cell is that config (with the record's seed), composed here with
Hydra's compose API from the same conf/ folder run.py reads, reduced to its run-deciding part
(`ftlab.config.identity_of`). A record counts in the cell only if `identity_of(record.config)` equals it, ignoring
`seed` alone (seeds are the restarts a cell pools).

Rules, decided here and stated in every table's header:

* A key the protocol has and the record lacks (the record predates the key) matches only if the row's `where` sets
  that exact key to null: the row then says "runs from before this key existed", as wtacrs_cpu's "QK^T exact" row
  does. Any other missing key is a mismatch: the old run cannot be shown to have had today's value.
* A key the record has and the protocol lacks (removed since, or added on the command line) is a mismatch.
* Keys the experiment sweeps (`hydra.sweeper.params`) other than method, task and seed take the record's own value
  when that value is one of the sweep's points (a calibration's `optim.lr`, a paper table's grid indices): every point of
  the declared sweep is a run of the experiment; a value outside the sweep is not.
* `records_from` experiments' records are checked against THIS table's protocol: another experiment's run counts
  only if it is exactly the run this table would have launched.

Compositions are cached per (experiment, method, task, seed, where, swept values): a table of r rows and c columns
composes at most r x c configs per seed and sweep point, however many records it reads.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import identity_of
from ..errors import ConfigError
from ..records import RunRecord

IGNORED = ("seed",)            # the restarts a cell pools over
ROW_AND_COLUMN_KEYS = ("method", "task", "seed")  # set by the row, the column, or ignored: never taken from a record


def _override_value(value: Any) -> str:
    """A Python value in Hydra's override grammar (null, true, 0.3, 'text')."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    text = str(value)
    plain = text.replace("_", "").replace("-", "").replace(".", "").isalnum()
    return text if plain else "'" + text.replace("'", "\\'") + "'"


def lookup(config: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    """(present, value) of a dotted key in a nested dict."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def differences(protocol: dict[str, Any], run: dict[str, Any], null_where: set[str], prefix: str = "") -> list[str]:
    """Dotted keys where `run` departs from `protocol` under the module's rules, as 'key: protocol X, run Y'."""
    out = []
    for key in sorted(set(protocol) | set(run)):
        dotted = f"{prefix}{key}"
        if not prefix and key in IGNORED:
            continue
        if key not in run:
            if not (dotted in null_where and protocol[key] is None):
                out.append(f"{dotted}: protocol {protocol[key]!r}, run lacks it")
        elif key not in protocol:
            out.append(f"{dotted}: run {run[key]!r}, protocol lacks it")
        elif isinstance(protocol[key], dict) and isinstance(run[key], dict):
            out += differences(protocol[key], run[key], null_where, f"{dotted}.")
        elif protocol[key] != run[key]:
            out.append(f"{dotted}: protocol {protocol[key]!r}, run {run[key]!r}")
    return out


def sweep_points(experiment: DictConfig) -> dict[str, list[tuple[str, Any]]]:
    """The experiment's swept keys other than method/task/seed -> their points as (override string, typed value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(experiment, "hydra.sweeper.params") or {}
    parser = OverridesParser.create()
    out = {}
    for key, spec in params.items():
        if key.lstrip("+~") in ROW_AND_COLUMN_KEYS:
            continue
        override = parser.parse_overrides([f"{key}={spec}"])[0]
        if override.is_sweep_override():
            texts = list(override.sweep_string_iterator())
        else:
            texts = [override.get_value_element_as_str()]
        # typed, so that a record's 0.01 finds the sweep's "1e-2"
        out[key.lstrip("+~")] = [(text, parser.parse_override(f"k={text}").value()) for text in texts]
    return out


class Protocol:
    """Composes and caches the protocol of each table cell; `mismatches` says why a record is off-protocol."""

    def __init__(self, conf_dir: Path) -> None:
        self.conf_dir = Path(conf_dir).resolve()
        self._cache: dict[tuple, dict[str, Any]] = {}

    def compose(self, experiment: str, overrides: list[str]) -> dict[str, Any]:
        """identity_of the config `run.py experiment=<experiment> <overrides>` would run."""
        key = (experiment, tuple(overrides))
        if key not in self._cache:
            self._cache[key] = identity_of(OmegaConf.to_container(self._compose(experiment, overrides), resolve=True))
        return self._cache[key]

    def _compose(self, experiment: str, overrides: list[str]) -> DictConfig:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        if not (self.conf_dir / "experiment" / f"{experiment}.yaml").is_file():
            raise ConfigError(f"no experiment file {self.conf_dir / 'experiment' / (experiment + '.yaml')}: a table's "
                              f"experiment_name must name its own conf/experiment/<name>.yaml")
        # a caller's Hydra (a test, a notebook) may hold the global instance: set it aside and give it back after
        saved = copy.deepcopy(GlobalHydra.instance()) if GlobalHydra.instance().is_initialized() else None
        GlobalHydra.instance().clear()
        try:
            # the version base run.py composes with, so the protocol is the config run.py would run
            with initialize_config_dir(config_dir=str(self.conf_dir), version_base="1.3"):
                return compose(config_name="config", overrides=[f"experiment={experiment}", *overrides])
        except Exception as err:  # Hydra raises several types; the user needs the cell that failed
            raise ConfigError(f"cannot compose the protocol of experiment {experiment} with {overrides}: {err}") from err
        finally:
            if saved is not None:
                from hydra.core.singleton import Singleton

                Singleton._instances[GlobalHydra] = saved

    def mismatches(self, experiment: DictConfig, row: DictConfig, task: str, record: RunRecord) -> list[str]:
        """Empty when `record` is a run of this row and task under the experiment's protocol; else the differences."""
        where = OmegaConf.to_container(row.get("where") or OmegaConf.create({}))
        config = record.config
        # the record's seed composes too: a method may read it (reinit's `method.seed: ${seed}`); `seed` itself is then
        # equal by construction and ignored in the comparison
        overrides = [f"method={row.method}", f"task={task}", f"seed={_override_value(config.get('seed'))}"]
        for key, points in sweep_points(experiment).items():
            if key in where:
                continue  # the row pins it
            present, value = lookup(config, key)
            if (self.conf_dir / key).is_dir() and isinstance(value, dict):  # a config group: its option's name
                value = value.get("name")
            chosen = [text for text, typed in points if present and typed == value and type(typed) is type(value)]
            if chosen:
                overrides.append(f"{key}={chosen[0]}")
        overrides += [f"++{key}={_override_value(value)}" for key, value in sorted(where.items())]
        protocol = self.compose(experiment.experiment_name, overrides)
        null_where = {key for key, value in where.items() if value is None}
        return differences(protocol, identity_of(config), null_where)
