"""Hydra entry point: `python run.py task=rte`, `python run.py -m method=nxm task=rte,mrpc seed=1,2,3`.

Exit status: 0 when the run (every job of a multirun) completed or was already complete, or another process is running
it; 1 when a run failed (a multirun finishes its other jobs first); 2 for a config or data error found before
training; 130 / 143 when interrupted by SIGINT / SIGTERM (the record says `interrupted`; a relaunch resumes it).
"""
import logging
import signal
import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ftlab.config import CONF_DIR, register_resolvers

register_resolvers()
log = logging.getLogger("ftlab")


def _terminate(signum: int, frame: object) -> None:
    from ftlab.train import Interrupted

    raise Interrupted("SIGTERM", 143)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from ftlab.errors import FtlabError
    from ftlab.run_lock import RunLocked
    from ftlab.sweep import record_outcome, summary_lines, write_outcome
    from ftlab.train import Interrupted, launch_rank, run

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    job = hydra_cfg.job.get("num", 0)
    overrides = " ".join(hydra_cfg.overrides.task)
    started = time.perf_counter()

    def outcome(status: str, **extra: object) -> None:
        if launch_rank() != 0:  # a DDP rank > 0: rank 0 reports the job
            return
        entry = {"status": status, "overrides": overrides, "seconds": time.perf_counter() - started, **extra}
        if multirun:
            write_outcome(hydra_cfg.sweep.dir, job, entry)
        else:  # one run: the same one-line table a multirun ends with
            for line in summary_lines([{"job": job, **entry}]):
                log.info(line)

    try:
        if multirun:
            _refuse_spawned_ddp(cfg, launch_rank)
        record = run(cfg)
    except RunLocked as err:
        log.warning("%s", err)
        outcome("skipped", error=str(err))
        return None
    except Interrupted as err:
        outcome("interrupted", error=str(err))
        raise
    except Exception as err:
        outcome("failed", error=f"{type(err).__name__}: {err}")
        if multirun:  # recorded (status failed); the other jobs go on and the sweep exits 1 at the end
            log.error("job %s failed: %s: %s", job, type(err).__name__, err)
            return None
        if isinstance(err, FtlabError):
            log.error("%s", err)
            raise SystemExit(1) from err
        raise
    value = record.best_score()
    outcome(**record_outcome(record))
    if launch_rank() == 0:
        log.info("best %s = %s (record %s)", record.selection, value, record.name)
    return value


def _refuse_spawned_ddp(cfg: DictConfig, launch_rank) -> None:
    """Lightning's DDP starts its other ranks by running this command line again, and in a multirun that is the whole
    sweep: refuse it before any process starts. A launcher that starts every rank itself (SLURM tasks, torchrun) is
    fine."""
    import os

    from ftlab.errors import ConfigError

    strategy, devices = str(cfg.trainer.get("strategy") or ""), cfg.trainer.get("devices")
    started_by_launcher = "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS") or 1) > 1
    if strategy.startswith("ddp") and devices not in (1, "1") and launch_rank() == 0 and not started_by_launcher:
        raise ConfigError(
            f"trainer.strategy={strategy} with trainer.devices={devices} in a multirun: Lightning would start the other "
            "ranks by re-running the whole sweep. Run each point on its own (python run.py trainer=ddp ...), or launch "
            "one task per device: hydra/launcher=slurm_gpu hydra.launcher.tasks_per_node=N hydra.launcher.gpus_per_node=N")


def _refuse_trainer_owned(argv: list[str]) -> None:
    """`trainer.max_epochs=1` would fail inside Hydra ("not in struct", suggesting `+trainer.max_epochs=1`, which then
    collides with ftlab's own argument): name the key to use instead, before Hydra composes anything."""
    from ftlab.validation.run_config import TRAINER_OWNED

    instead = {"max_epochs": "train.epochs", "max_steps": "train.max_steps"}
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        name = key[len("trainer."):] if key.startswith("trainer.") else ""
        if name in TRAINER_OWNED:
            example = f"; e.g. {instead[name]}={value}" if name in instead and value else ""
            print(f"ftlab: {arg} is refused: {key} is set by ftlab, not by trainer.*: {TRAINER_OWNED[name]}{example}",
                  file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    _refuse_trainer_owned(sys.argv[1:])
    signal.signal(signal.SIGTERM, _terminate)
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as err:
        if type(err).__name__ == "Interrupted":
            print(f"ftlab: {err}; the record says so and a relaunch resumes it", file=sys.stderr)
            sys.exit(getattr(err, "code", 1))
        raise
