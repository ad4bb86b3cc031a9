"""Training data for the catalog tasks: the store's catalog turned into chat conversations that the recipe then
reads, splits and trains on like any data file (one pipeline for every task)."""

from __future__ import annotations

import dataclasses

from ecombot.catalog import builtin_catalog_path, read_catalog
from ecombot.catalog.copy import write_copy_data
from ecombot.catalog.recommend import CANDIDATES, write_recommend_data
from ecombot.config import TrainConfig
from ecombot.errors import ConfigError
from ecombot.run_dir import RunDir


def catalog_path(catalog: str):
    return builtin_catalog_path() if catalog == "builtin" else catalog


def task_data(cfg: TrainConfig, run: RunDir) -> tuple[TrainConfig, str | None]:
    """The config with `data` pointing at the task's conversations (written in the run directory) and no knowledge
    passages (a description comes from the product's own fields), and a line saying what was built; a support run
    is returned as it is."""
    if cfg.task == "support":
        return cfg, None
    built = run.task_data_file(cfg.task)
    if cfg.data and cfg.data != str(built):  # (a resumed run's config names the file built before)
        raise ConfigError(f"the {cfg.task} task builds its data from --catalog; leave --data unset (got {cfg.data})")
    products = read_catalog(catalog_path(cfg.catalog))
    if cfg.task == "copy":
        path, skipped = write_copy_data(products, built)
        line = (f"copy task: {len(products) - skipped} products of {cfg.catalog} as training conversations"
                + (f"; {skipped} without a description left out" if skipped else ""))
    else:
        path, made = write_recommend_data(products, built, cfg.seed)
        line = (f"recommend task: {made} requests generated from the {len(products)} products of {cfg.catalog}, "
                f"each with the {CANDIDATES} products the catalog search finds")
    return dataclasses.replace(cfg, data=str(path), knowledge="none"), line
