"""Every backbone x task x method composes and resolves; bad choices fail with the valid options listed; every
experiment still runs the configs it ran before reporting config moved out of the run config."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from ftlab import records
from ftlab.config import CONF_DIR, identity_of, register_resolvers, without_reporting

REQUIRED_TASK_KEYS = ("name", "kind", "metrics", "selection", "splits", "eval_splits", "epochs", "batch_size", "lr")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_config_groups_exist() -> None:
    assert {"minilm", "tiny-bert", "bert-base-uncased", "bert-large-uncased", "roberta-large",
            "distilbert-base-uncased", "electra-base", "deberta-v3-base"} <= set(options("backbone"))
    assert {"cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "stsb", "wnli"} <= set(options("task"))
    assert "finetune" in options("method")
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"csv", "wandb", "tensorboard"} <= set(options("logger"))


def one_of_each() -> list[tuple[str, str, str]]:
    """Each backbone, task and method once, the other two groups at their defaults. Groups meet only through
    interpolations, which resolving each file once exercises; a Hydra compose costs ~0.2 s, so the full product
    (thousands of configs) would cost CI minutes for no extra coverage."""
    combos = {(b, "rte", "finetune") for b in options("backbone")}
    combos |= {("minilm", t, "finetune") for t in options("task")}
    combos |= {("minilm", "rte", m) for m in options("method")}
    return sorted(combos)


def test_every_choice_composes_and_resolves() -> None:
    combos = one_of_each()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for backbone, task, method in combos:
            cfg = compose("config", overrides=[f"backbone={backbone}", f"task={task}", f"method={method}"])
            resolved = OmegaConf.to_container(cfg, resolve=True)
            assert resolved["backbone"]["name"] == backbone
            assert resolved["method"]["name"] and resolved["method"]["_target_"]
            assert all(k in resolved["task"] for k in REQUIRED_TASK_KEYS), task
            if resolved["task"]["kind"] != "generation":
                assert resolved["task"]["selection"]["metric"] in resolved["task"]["metrics"]
                assert resolved["task"]["selection"]["split"] in resolved["task"]["eval_splits"]
    assert len(combos) >= 8 + 9


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment: str) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.experiment_name, "an experiment names itself so the table command can find its records"
    assert cfg.hydra.sweeper.params, "an experiment declares its sweep"


@pytest.mark.parametrize("group", ["method", "task", "backbone"])
def test_unknown_option_lists_valid_ones(group: str) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        with pytest.raises(ConfigCompositionException) as err:
            compose("config", overrides=[f"{group}=no_such_thing"])
    message = str(err.value)
    assert "no_such_thing" in message
    assert options(group)[0] in message  # Hydra lists the available options


def test_unknown_key_is_rejected() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match="optim.no_such_key"):
            compose("config", overrides=["optim.no_such_key=1"])


def test_every_config_file_starts_with_its_command() -> None:
    for path in CONF_DIR.rglob("*.yaml"):
        first = path.read_text().splitlines()[0]
        assert first.startswith("#"), f"{path} must start with a comment showing the command that uses it"


# The record name (config part of the identity) of sample points of every experiment's sweep, computed from the conf/
# of commit 2b78396, before the table specs and the papers' per-task settings left the run config (issue 18), with the
# identity rule of today (ftlab.config.identity_of) applied to it after dropping those keys
# (ftlab.config.without_reporting). Written by `python tests/test_configs.py <conf folder of 2b78396>`.
IDENTITIES = Path(__file__).parent / "fixtures" / "experiment_identities.json"
ROW_AND_COLUMN_KEYS = ("method", "task", "seed")


def sweep_values(experiment_file: Path) -> dict[str, list[str]]:
    """The experiment's `hydra.sweeper.params`: key -> its points as override strings."""
    parser = OverridesParser.create()
    out = {}
    for key, spec in (OmegaConf.select(OmegaConf.load(experiment_file), "hydra.sweeper.params") or {}).items():
        override = parser.parse_overrides([f"{key}={spec}"])[0]
        out[key] = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                    else [override.get_value_element_as_str()])
    return out


def experiment_points(conf_dir: Path) -> dict[str, list[str]]:
    """Label -> overrides of the points checked per experiment: the sweep's first point, its last point (every swept
    key other than method, task and seed at its last value), each task at both, each method at the first."""
    points = {}
    for path in sorted((conf_dir / "experiment").glob("*.yaml")):
        values = sweep_values(path)
        first = {key: options[0] for key, options in values.items()}
        last = {key: options[0] if key in ROW_AND_COLUMN_KEYS else options[-1] for key, options in values.items()}
        chosen = [first, last, *({**base, "task": task} for base in (first, last) for task in values.get("task", []))]
        chosen += [{**first, "method": method} for method in values.get("method", [])]
        for point in chosen:
            overrides = [f"experiment={path.stem}", *(f"{key}={value}" for key, value in sorted(point.items()))]
            points[" ".join(overrides)] = overrides
    return points


def experiment_identities(conf_dir: Path) -> dict[str, str]:
    register_resolvers()
    out = {}
    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        for label, overrides in experiment_points(Path(conf_dir)).items():
            config = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
            out[label] = records.record_name(identity_of(without_reporting(config)))
    return out


def test_every_experiment_runs_the_configs_it_ran_before_reporting_config_moved_out() -> None:
    """Moving `table:` and `task.paper` to conf/report/ changed no run: every sampled sweep point of every experiment
    resolves to the run-deciding config it had (so the experiments that read a paper's per-task lr, batch size, epochs
    or grids from conf/report/papers/ get the numbers they got from task.paper), and its records keep their names."""
    expected = json.loads(IDENTITIES.read_text())["identities"]
    now = experiment_identities(CONF_DIR)
    assert sorted(now) == sorted(expected), "the sampled points changed: an experiment's sweep was edited"
    changed = {label: (expected[label], name) for label, name in now.items() if expected[label] != name}
    assert not changed, f"run config changed at {len(changed)} point(s): {changed}"


if __name__ == "__main__":  # python tests/test_configs.py <conf folder>: rewrite the fixture from that conf/
    source = Path(sys.argv[1])
    IDENTITIES.write_text(json.dumps({
        "generated": f"python tests/test_configs.py {source} (conf/ of commit 2b78396)",
        "identities": experiment_identities(source)}, indent=1, sort_keys=True) + "\n")
