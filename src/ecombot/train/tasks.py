"""Training data from the catalog: for the catalog tasks, the store's catalog turned into chat conversations that
the recipe then reads, splits and trains on like any data file (one pipeline for every task; a multi-task run
splits each task's data on its own and trains on them together); for a support run with a catalog, questions about
its products beside the data and its products' passages in the knowledge base. In a distributed run the main
process writes the catalog tasks' data; the other ranks wait for the files."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from ecombot.catalog import Product, questions, read_catalog
from ecombot.catalog.copy import write_copy_data
from ecombot.catalog.recommend import CANDIDATES, write_recommend_data
from ecombot.config import TrainConfig
from ecombot.data import Conversation
from ecombot.errors import ConfigError, DataError
from ecombot.knowledge import Passage
from ecombot.run_dir import RunDir

WAIT_S = 600  # how long another rank waits for the main process to write the task's data


def task_data(cfg: TrainConfig, run: RunDir, main: bool = True
              ) -> tuple[TrainConfig, list[str], list[tuple[str, Path]]]:
    """The config with its catalog's path made absolute and, when the main task is a catalog task, `data` pointing at
    its conversations (written in the run directory) and no knowledge passages (a description comes from the
    product's own fields); a line per catalog task saying what was built; and the other tasks of a multi-task run
    with their data files (each split on its own by the recipe). A support run is returned as it is (its catalog:
    product questions and passages, product_question_maker)."""
    if cfg.catalog:
        cfg = dataclasses.replace(cfg, catalog=absolute_catalog(cfg.catalog))
    built = {task: run.task_data_file(task) for task in cfg.tasks if task != "support"}
    first = cfg.tasks[0]
    if first != "support":
        if cfg.data and Path(cfg.data).resolve() != built[first].resolve():  # (a resumed run's config names it)
            raise ConfigError(f"the {cfg.task} task builds its data from --catalog; leave --data unset (got "
                              f"{cfg.data})")
        cfg = dataclasses.replace(cfg, data=str(built[first]), knowledge="none")
    others = [(task, built[task]) for task in cfg.tasks[1:]]
    if not main:
        deadline = time.time() + WAIT_S
        while not all(path.is_file() for path in built.values()) and time.time() < deadline:
            time.sleep(1)
        return cfg, [], others
    products = read_catalog(cfg.catalog) if built else []
    return cfg, [write_task_data(task, products, path, cfg) for task, path in built.items()], others


def write_task_data(task: str, products: list[Product], path: Path, cfg: TrainConfig) -> str:
    """A catalog task's conversations written to `path`; the line saying what they are."""
    if task == "copy":
        _, skipped = write_copy_data(products, path)
        if skipped == len(products):
            raise DataError(cfg.catalog, None, "description", "no product has a description to learn the copy from")
        return (f"copy task: {len(products) - skipped} products of {cfg.catalog} as training conversations"
                + (f"; {skipped} without a description left out" if skipped else ""))
    _, made = write_recommend_data(products, path, cfg.seed)
    return (f"recommend task: {made} requests generated from the {len(products)} products of {cfg.catalog}, "
            f"each with the {CANDIDATES} products the catalog search finds")


def product_question_maker(cfg: TrainConfig, say: Callable[[str], None]
                           ) -> Callable[[list[Conversation]], list[Conversation]] | None:
    """A support run with a catalog: what makes questions about its products (catalog/questions.py) given the data's
    conversations, sized to them, saying how many; None without a catalog."""
    if "support" not in cfg.tasks or not cfg.catalog:
        return None

    def make(data: list[Conversation]) -> list[Conversation]:
        products = read_catalog(cfg.catalog)
        limit = max(1, int(questions.QUESTIONS_PER_CONVERSATION * len(data)))
        made = questions.product_questions(products, limit, cfg.seed)
        say(f"support with a catalog: {len(made)} questions about products of {cfg.catalog} ({len(products)} "
            f"products) join the {len(data)} conversations of the data, answered from the product's passage")
        return made
    return make


def catalog_documents(cfg: TrainConfig) -> list[tuple[str, list[Passage]]]:
    """A support run's catalog as knowledge-base documents (source, a passage per product), so its product
    questions are grounded in the product's passage as chat and serve will find it; none without a catalog."""
    if "support" not in cfg.tasks or not cfg.catalog:
        return []
    from ecombot.catalog.knowledge import catalog_passages

    return [catalog_passages(cfg.catalog)]


def absolute_catalog(catalog: str) -> str:
    """The catalog as the run records it: a file's absolute path (a resumed run may start elsewhere), or builtin."""
    return catalog if catalog == "builtin" else str(Path(catalog).resolve())
