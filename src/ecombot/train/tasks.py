"""Training data for the catalog tasks: the store's catalog turned into chat conversations that the recipe then
reads, splits and trains on like any data file (one pipeline for every task). In a distributed run the main process
writes them; the other ranks wait for the file."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ecombot.catalog import read_catalog
from ecombot.catalog.copy import write_copy_data
from ecombot.catalog.recommend import CANDIDATES, write_recommend_data
from ecombot.config import TrainConfig
from ecombot.errors import ConfigError, DataError
from ecombot.run_dir import RunDir

WAIT_S = 600  # how long another rank waits for the main process to write the task's data


def task_data(cfg: TrainConfig, run: RunDir, main: bool = True) -> tuple[TrainConfig, str | None]:
    """The config with `data` pointing at the task's conversations (written in the run directory), the catalog's
    path made absolute and no knowledge passages (a description comes from the product's own fields), and a line
    saying what was built; a support run is returned as it is."""
    if cfg.task == "support":
        return cfg, None
    built = run.task_data_file(cfg.task)
    if cfg.data and Path(cfg.data).resolve() != built.resolve():  # (a resumed run's config names the file built)
        raise ConfigError(f"the {cfg.task} task builds its data from --catalog; leave --data unset (got {cfg.data})")
    catalog = cfg.catalog if cfg.catalog == "builtin" else str(Path(cfg.catalog).resolve())
    cfg = dataclasses.replace(cfg, data=str(built), catalog=catalog, knowledge="none")
    if not main:
        deadline = time.time() + WAIT_S
        while not built.is_file() and time.time() < deadline:
            time.sleep(1)
        return cfg, None
    products = read_catalog(catalog)
    if cfg.task == "copy":
        path, skipped = write_copy_data(products, built)
        if skipped == len(products):
            raise DataError(catalog, None, "description", "no product has a description to learn the copy from")
        line = (f"copy task: {len(products) - skipped} products of {cfg.catalog} as training conversations"
                + (f"; {skipped} without a description left out" if skipped else ""))
    else:
        path, made = write_recommend_data(products, built, cfg.seed)
        line = (f"recommend task: {made} requests generated from the {len(products)} products of {cfg.catalog}, "
                f"each with the {CANDIDATES} products the catalog search finds")
    return cfg, line
