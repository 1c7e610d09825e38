"""Hydra entry point: `python run.py task=rte`, `python run.py -m method=nxm task=rte,mrpc seed=1,2,3`."""
import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ftlab.config import CONF_DIR, register_resolvers

register_resolvers()
log = logging.getLogger("ftlab")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from ftlab.train import run

    try:
        record = run(cfg)
    except Exception as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # one failed run is recorded (status failed) and must not stop the rest of the sweep
            log.error("run failed: %s: %s", type(err).__name__, err)
            return None
        raise
    best = (record.get("metrics") or {}).get("best") or {}
    split, metric = cfg.task.selection.split, cfg.task.selection.metric
    value = (best.get("metrics") or {}).get(split, {}).get(metric)
    log.info("best %s/%s = %s (record %s)", split, metric, value, record["name"])
    return value


if __name__ == "__main__":
    main()
