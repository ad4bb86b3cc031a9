"""The stages import only the stages below them (ARCHITECTURE.md): evaluation and serving never reach into training,
speed-ups never into the stages they speed up. A new package must be placed in the map below."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package -> the packages it may import; the entry points (cli, quickstart, __main__) sit on top and may import any
MAY_IMPORT = {
    "errors": set(),
    "home": set(),
    "atomic": set(),
    "database": {"errors"},
    "speedups": {"atomic", "home"},
    "data": {"atomic", "errors"},
    "config": {"errors"},
    "run_dir": {"atomic", "errors"},
    "knowledge": {"data", "database", "errors", "home"},
    "catalog": {"atomic", "data", "errors", "knowledge"},
    "models": {"atomic", "data", "errors", "home", "run_dir", "speedups"},
    "train": {"catalog", "config", "data", "errors", "knowledge", "models", "run_dir", "speedups"},
    "chat": {"config", "errors", "knowledge", "models", "run_dir", "speedups"},
    "evaluate": {"atomic", "catalog", "chat", "config", "data", "errors", "knowledge", "models", "run_dir"},
    "serve": {"atomic", "catalog", "chat", "config", "database", "errors", "home", "knowledge", "models", "run_dir"},
    "export": {"atomic", "errors", "home", "models", "run_dir"},
    "learn": {"atomic", "config", "data", "database", "errors", "evaluate", "knowledge", "models", "run_dir", "serve",
              "train"},
}
ENTRY_POINTS = {"cli", "quickstart", "__main__", "__init__"}


def imports_between_packages() -> dict[str, set[str]]:
    spec = importlib.util.spec_from_file_location("architecture_stats", ROOT / "scripts" / "architecture_stats.py")
    stats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stats)
    return stats.package_imports(ROOT / "src" / "ecombot")


def test_every_package_is_placed_in_the_layer_map():
    assert set(imports_between_packages()) - ENTRY_POINTS == set(MAY_IMPORT)


def test_stages_import_only_the_stages_below_them():
    wrong = {package: sorted(imported - MAY_IMPORT[package])
             for package, imported in imports_between_packages().items()
             if package in MAY_IMPORT and imported - MAY_IMPORT[package]}
    assert wrong == {}


def test_the_check_sees_a_forbidden_import(tmp_path):
    """The scan reads `from ecombot import x` and `from ecombot.x.y import z` alike (so the test above can fail)."""
    spec = importlib.util.spec_from_file_location("architecture_stats", ROOT / "scripts" / "architecture_stats.py")
    stats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stats)
    (tmp_path / "evaluate").mkdir()
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "__init__.py").write_text("")
    (tmp_path / "evaluate" / "a.py").write_text("from ecombot import train\n")
    (tmp_path / "evaluate" / "b.py").write_text("def f():\n    from ecombot.train.recipe import train\n")
    assert stats.package_imports(tmp_path)["evaluate"] == {"train"}
