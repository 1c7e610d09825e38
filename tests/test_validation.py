"""Up-front validation (ftlab.validation): every bad key or data file fails in one line that names the key or the
file:line, before any model or data load; every shipped method, task and experiment passes (no false positives)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from ftlab.config import CONF_DIR
from ftlab.data.textfile import MAX_FIELD_CHARS
from ftlab.errors import ConfigError, DataError
from ftlab.tasks.classification.glue import read_glue_tsv
from ftlab.tasks.generation.readers import read_dart_json, read_e2e_csv, read_webnlg_xml
from ftlab.validation import validate_data_files, validate_run_config

from conftest import DATA_DIR, GLUE_AVAILABLE

GENERATION_TASKS = ("e2e", "webnlg", "dart")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def compose_many():
    """compose(overrides) inside one Hydra initialisation for the whole module (each compose still costs ~0.2 s)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda *overrides, hydra=False: compose("config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.fixture(autouse=True)
def no_model_or_data_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation must fail before anything heavy: loading a tokenizer, a model or tokenising rows is an error here."""
    import ftlab.backbones
    import ftlab.tasks.classification.tokenize

    def loaded(*args, **kwargs):
        raise AssertionError("validation loaded a model, a tokenizer or tokenised data")

    for module, name in ((ftlab.backbones, "load_model"), (ftlab.backbones, "load_tokenizer"),
                         (ftlab.tasks.classification.tokenize, "tokenize_rows")):
        monkeypatch.setattr(module, name, loaded)


# -- run config ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["method=nxm", "method.rho=abc"], "method.rho must be a float (NxMADMM.__init__), got 'abc'"),
    (["optim.lr=-1e-3"], "optim.lr must be > 0, got -0.001"),
    (["optim.lr=abc"], "optim.lr must be a float, got 'abc'"),
    (["task.lr=-1"], "optim.lr must be > 0, got -1 (from ${task.lr})"),
    (["seed=abc"], "seed must be an int, got 'abc'"),
    (["threads=0"], "threads must be null or >= 1, got 0"),
    (["train.epochs=0"], "train.epochs must be >= 1 (or -1 with train.max_steps > 0), got 0"),
    (["train.max_steps=-2"], "train.max_steps must be >= -1"),
    (["train.batch_size=0"], "train.batch_size must be >= 1, got 0"),
    (["train.batch_size=8.5"], "train.batch_size must be an int, got 8.5"),
    (["train.accumulate_grad_batches=0"], "train.accumulate_grad_batches must be >= 1, got 0"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay must be >= 0, got -0.1"),
    (["optim.warmup_ratio=1"], "optim.warmup_ratio must be in [0, 1), got 1"),
    (["optim.warmup_steps=-5"], "optim.warmup_steps must be >= 0, got -5"),
    (["optim.betas=[0.9,1.0]"], "optim.betas[1] must be in [0, 1), got 1.0"),
    (["optim.eps=0"], "optim.eps must be > 0, got 0"),
    (["data.max_train_samples=0"], "data.max_train_samples must be null or >= 1, got 0"),
    (["data.max_eval_samples=0"], "data.max_eval_samples must be null or >= 1, got 0"),
    (["data.max_length=0"], "data.max_length must be >= 1, got 0"),
    (["data.eval_batch_size=0"], "data.eval_batch_size must be >= 1, got 0"),
    (["data.source=web"], "data.source must be one of ['local', 'hub'], got 'web'"),
    (["task=e2e", "backbone=tiny-gpt2", "task.decoding.num_beams=0"], "task.decoding.num_beams must be >= 1, got 0"),
    (["task=webnlg", "backbone=tiny-gpt2", "task.decoding.max_new_tokens=0"],
     "task.decoding.max_new_tokens must be >= 1, got 0"),
    (["task=e2e", "backbone=tiny-gpt2", "data.source=hub"], "data.source must be 'local' for a generation task"),
    (["task.selection.split=test"], "task.selection.split must be one of task.eval_splits ['dev'], got 'test'"),
    (["+trainer.max_epochs=1"],
     "trainer.max_epochs is set by ftlab, not by trainer.*: use train.epochs / train.max_steps (the trainer's "
     "max_epochs comes from train.epochs)"),
    (["+trainer.max_steps=10"], "use train.epochs / train.max_steps"),
    (["+trainer.no_such_arg=1"], "trainer.no_such_arg is not a parameter of pytorch_lightning.Trainer"),
    (["trainer.precision=bf17"], "trainer.precision must be null or one of"),
    (["method=nxm", "+method.foo=1"], "method.foo is not a parameter of ftlab.methods.sparsity.admm.NxMADMM; accepted method.* "
                                      "keys: rho, n, m, iteration_every, masked_retrain_epochs"),
    (["+method.p=0.1"], "method.p is not a parameter of ftlab.methods.finetune.FineTune"),
    (["method=nxm", "method.iteration_every=0"], "method.iteration_every must be >= 1, got 0"),
    (["method=nxm", "method.rho=0"], "method.rho must be > 0, got 0"),
    (["method=lora", "method.r=0"], "method.r must be >= 1, got 0"),
    (["method=lora", "method.r=8.0"], "method.r must be an int (LoRA.__init__), got 8.0"),
    (["method=lora", "method.roles=q"], "method.roles must be a list of strings (LoRA.__init__), got 'q'"),
    (["method=wtacrs", "method.budget=0"], "method.budget must be in (0, 1], got 0"),
    (["method=mixout", "method.p=1.0"], "method.p must be in [0, 1), got 1.0"),
    (["method=dps", "method.p=true"], "method.p must be a float (DPS.__init__), got True"),
    (["method=child_tuning_d", "method.reserve_p=0"], "method.reserve_p must be in (0, 1], got 0"),
    (["method=rdrop", "method.dropout=abc"], "method.dropout must be null or a float (RDrop.__init__), got 'abc'"),
    (["method=dsee", "method.density=1.5"], "method.density must be in (0, 1], got 1.5"),
    (["method._target_=ftlab.methods.nope.Nope"], "method._target_='ftlab.methods.nope.Nope' cannot be imported"),
])
def test_bad_key_fails_in_one_line_naming_it(compose_many, overrides: list[str], message: str) -> None:
    cfg = compose_many("backbone=tiny-bert", *overrides)
    with pytest.raises(ConfigError) as err:
        validate_run_config(cfg)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_floats_accept_ints_and_max_steps_lifts_the_epoch_rule(compose_many) -> None:
    validate_run_config(compose_many("backbone=tiny-bert", "method=nxm", "method.rho=1", "optim.lr=1"))
    validate_run_config(compose_many("backbone=tiny-bert", "train.epochs=-1", "train.max_steps=10"))
    validate_run_config(compose_many("backbone=tiny-gpt2", "task=e2e", "train.max_steps=0"))  # evaluate only


# -- no false positives ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", options("method"))
def test_every_method_passes_with_the_default_task(compose_many, method: str) -> None:
    # DSEE prunes after method.phase1_epochs=5 by default: a task's 5 epochs leave no recovery, which validation
    # refuses (the paper's RTE run is 5 + 10 epochs); tests/test_evidence2.py checks that message
    extra = ["train.epochs=15"] if method == "dsee" else []
    validate_run_config(compose_many("backbone=tiny-bert", f"method={method}", *extra))


def backbone_for(task: str) -> str:
    return "tiny-gpt2" if task in GENERATION_TASKS else "tiny-bert"


@pytest.mark.parametrize("task", options("task"))
def test_every_task_passes(compose_many, task: str) -> None:
    validate_run_config(compose_many(f"backbone={backbone_for(task)}", f"task={task}"))


@pytest.mark.parametrize("task", sorted(set(GLUE_AVAILABLE) | {"e2e", "webnlg"}))
def test_staged_data_files_pass(compose_many, task: str) -> None:
    validate_data_files(compose_many(f"backbone={backbone_for(task)}", f"task={task}", f"paths.data_dir={DATA_DIR}"))


def test_missing_split_file_is_named(compose_many) -> None:
    """DART's training file is not staged here: the run would fail at data load, so validation fails first."""
    with pytest.raises(DataError, match=r"data file not found: .*dart-v1\.1\.1-full-train\.json"):
        validate_data_files(compose_many("backbone=tiny-gpt2", "task=dart", f"paths.data_dir={DATA_DIR}"))


def sweep_points(cfg: DictConfig) -> list[tuple[str, str]]:
    """(key, value) of every sweep value, one key at a time (the full product would be thousands of composes)."""
    points = []
    parser = OverridesParser.create()
    for key, spec in cfg.hydra.sweeper.params.items():
        if key == "seed":
            continue
        override = parser.parse_override(f"{key}={spec}")
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [str(spec)]
        points += [(key, value) for value in values]
    return points


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_and_its_sweep_values_pass(compose_many, experiment: str) -> None:
    cfg = compose_many(f"experiment={experiment}", hydra=True)
    validate_run_config(cfg)
    for key, value in sweep_points(cfg):
        validate_run_config(compose_many(f"experiment={experiment}", f"{key}={value}"))


# -- data files ------------------------------------------------------------------------------------------------------
RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


@pytest.fixture
def rte_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    (folder / "dev.tsv").write_text(RTE_HEADER + "0\ta\tb\tentailment\n", encoding="utf-8")
    return folder


def rte_cfg(compose_many, data_dir: Path) -> DictConfig:
    return compose_many("backbone=tiny-bert", "task=rte", f"paths.data_dir={data_dir}")


def test_non_utf8_byte_is_named_with_file_line_and_column(compose_many, rte_dir: Path) -> None:
    (rte_dir / "train.tsv").write_bytes((RTE_HEADER + "0\tok\tok\tentailment\n1\tcaf\xe9\tb\tentailment\n")
                                        .encode("latin-1"))
    expected = f"{rte_dir / 'train.tsv'}:3: not valid UTF-8 (byte 0xe9 at column 6); re-save the file as UTF-8"
    cfg = rte_cfg(compose_many, rte_dir.parent.parent)
    with pytest.raises(DataError) as err:
        validate_data_files(cfg)
    assert str(err.value) == expected
    with pytest.raises(DataError) as err:
        read_glue_tsv(rte_dir / "train.tsv", cfg.task)
    assert str(err.value) == expected


def test_column_counts_characters_not_bytes(compose_many, rte_dir: Path) -> None:
    (rte_dir / "train.tsv").write_bytes(RTE_HEADER.encode() + "0\té\t".encode() + b"\xff\tb\tentailment\n")
    with pytest.raises(DataError, match=r"train\.tsv:2: not valid UTF-8 \(byte 0xff at column 5\)"):
        validate_data_files(rte_cfg(compose_many, rte_dir.parent.parent))


def test_header_only_split_is_an_error_naming_the_file(compose_many, rte_dir: Path) -> None:
    (rte_dir / "train.tsv").write_text(RTE_HEADER + "\n", encoding="utf-8")
    cfg = rte_cfg(compose_many, rte_dir.parent.parent)
    for check in (lambda: validate_data_files(cfg), lambda: read_glue_tsv(rte_dir / "train.tsv", cfg.task)):
        with pytest.raises(DataError, match=r"RTE/train\.tsv: no data rows after the header line"):
            check()


def test_absurd_field_is_refused_with_file_line_and_bound(compose_many, rte_dir: Path) -> None:
    huge = "x" * (MAX_FIELD_CHARS + 1)
    (rte_dir / "train.tsv").write_text(RTE_HEADER + "0\ta\tb\tentailment\n" + f"1\t{huge}\tb\tentailment\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: field 'sentence1' has 20,001 characters, over the bound "
                                        r"of 20,000"):
        read_glue_tsv(rte_dir / "train.tsv", rte_cfg(compose_many, rte_dir.parent.parent).task)


def test_missing_header_column_is_named_before_any_load(compose_many, rte_dir: Path) -> None:
    (rte_dir / "train.tsv").write_text("index\tsentence1\tlabel\n0\ta\tentailment\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.tsv:1: header has no column 'sentence2'"):
        validate_data_files(rte_cfg(compose_many, rte_dir.parent.parent))


def e2e_cfg(compose_many, data_dir: Path) -> DictConfig:
    return compose_many("backbone=tiny-gpt2", "task=e2e", f"paths.data_dir={data_dir}", "task.eval_splits=[dev]")


def test_e2e_errors_name_file_and_line(compose_many, tmp_path: Path) -> None:
    folder = tmp_path / "e2e"
    folder.mkdir()
    (folder / "devset.csv").write_text('mr,ref\n"name[A], eatType[pub]",A is a pub.\n', encoding="utf-8")
    train = folder / "trainset.csv"
    train.write_bytes(b'mr,ref\n"name[A], eatType[pub]","A is\na pub."\n"name[B]",B caf\xe9.\n')
    with pytest.raises(DataError, match=r"trainset\.csv:4: not valid UTF-8 \(byte 0xe9 at column 16\)"):
        validate_data_files(e2e_cfg(compose_many, tmp_path))
    with pytest.raises(DataError, match=r"trainset\.csv:4: not valid UTF-8"):
        read_e2e_csv(train)
    # the line a record starts on, counting the line break inside the quoted reference above
    train.write_text('mr,ref\n"name[A], eatType[pub]","A is\na pub."\n"name[B] eatType",B.\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"trainset\.csv:4: malformed E2E meaning representation"):
        read_e2e_csv(train)
    train.write_text("mr,ref\n", encoding="utf-8")
    for check in (lambda: validate_data_files(e2e_cfg(compose_many, tmp_path)), lambda: read_e2e_csv(train)):
        with pytest.raises(DataError, match=r"trainset\.csv: no rows after the header line"):
            check()


WEBNLG_ENTRY = ('<entry category="Airport" eid="{eid}" size="1"><modifiedtripleset><mtriple>{triple}</mtriple>'
                '</modifiedtripleset><lex comment="good" lid="Id1">{text}</lex></entry>')


def test_webnlg_errors_name_file_and_entry(tmp_path: Path) -> None:
    file = tmp_path / "dev.xml"
    entries = WEBNLG_ENTRY.format(eid=1, triple="A | b | C", text="A b C.") + \
        WEBNLG_ENTRY.format(eid=2, triple="A | b", text="A b.")
    file.write_text(f"<benchmark><entries>{entries}</entries></benchmark>", encoding="utf-8")
    with pytest.raises(DataError, match=r"dev\.xml:entry 2 \(Airport\): malformed triple 1 'A \| b'"):
        read_webnlg_xml(file)
    file.write_bytes(b"<benchmark>\n<entries>\xe9</entries></benchmark>")
    with pytest.raises(DataError, match=r"dev\.xml:2: not valid UTF-8 \(byte 0xe9 at column 10\)"):
        read_webnlg_xml(file)
    file.write_text("<benchmark><entries></entries></benchmark>", encoding="utf-8")
    with pytest.raises(DataError, match=r"dev\.xml: no <entry> elements"):
        read_webnlg_xml(file)


def test_dart_errors_name_file_and_record(tmp_path: Path) -> None:
    file = tmp_path / "dart.json"
    good = {"tripleset": [["A", "b", "C"]], "annotations": [{"text": "A b C.", "source": "x"}]}
    file.write_text(json.dumps([good, {"tripleset": [["A", "b"]], "annotations": []}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"dart\.json:record 1: triple 0 must be \[subject, relation, object\]"):
        read_dart_json(file)
    file.write_text('[\n{"tripleset": ]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"dart\.json:2: not valid JSON"):
        read_dart_json(file)
    file.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match=r"dart\.json: the JSON list of records is empty"):
        read_dart_json(file)


def test_missing_data_folder_names_the_file_it_needs(compose_many, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"data file not found: {tmp_path}/glue/RTE/train.tsv"):
        validate_data_files(rte_cfg(compose_many, tmp_path))
