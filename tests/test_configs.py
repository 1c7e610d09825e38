"""Every backbone x task x method composes and resolves; bad choices fail with the valid options listed."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from ftlab.config import CONF_DIR

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
