"""What the catalog tasks' evaluations share: the run they evaluate (its task, its catalog) and the report table."""

from __future__ import annotations

from ecombot.catalog import Product, builtin_catalog_path, read_catalog
from ecombot.errors import EcombotError
from ecombot.run_dir import RunDir


def catalog_run(adapter: str, task: str) -> tuple[RunDir, str, list[Product]]:
    """The run, the catalog it trained on and that catalog's products; an error if the run is of another task."""
    run = RunDir(adapter)
    run.check_adapter()
    config = (run.info() or {}).get("config", {})
    if config.get("task") != task:
        raise EcombotError(f"{adapter}: not a {task} run (its task is {config.get('task', 'support')!r}); --task "
                           f"{task} evaluates adapters trained with `ecombot train --task {task} --catalog FILE`")
    catalog = config["catalog"]
    return run, catalog, read_catalog(builtin_catalog_path() if catalog == "builtin" else catalog)


def estimate_cell(estimate: dict | None, scale: float = 1) -> str:
    if estimate is None:
        return "–"
    low, high = estimate["ci95"]
    return f"{estimate['value'] * scale:.3g} [{low * scale:.3g}, {high * scale:.3g}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
