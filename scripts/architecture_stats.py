"""Print the shape of src/ecombot: lines per package, the longest functions, and imports between stages.

Why: issue 14 asks for these figures before and after a restructuring; this keeps them rerunnable
(`python scripts/architecture_stats.py [SRC]`).
"""

from __future__ import annotations

import ast
import sys
from collections import Counter, defaultdict
from pathlib import Path


def package_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def imported_packages(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "ecombot":
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ecombot."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ecombot.")}
    return names


def package_imports(src: Path) -> dict[str, set[str]]:
    """For each package (or top-level module) of `src`, the other ones it imports (lazy imports included)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in sorted(src.rglob("*.py")):
        edges[package_of(path, src)] |= imported_packages(ast.parse(path.read_text(encoding="utf-8")))
    return {package: imported & set(edges) - {package} for package, imported in edges.items()}


def main(src: Path) -> None:
    lines: Counter[str] = Counter()
    functions: list[tuple[int, str]] = []
    for path in sorted(src.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines[package_of(path, src)] += len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(src)}:{node.name}"))
    edges = package_imports(src)
    print("lines per package:")
    for package, count in sorted(lines.items(), key=lambda item: -item[1]):
        print(f"  {package:12} {count:5}")
    print("longest functions:")
    for length, name in sorted(functions, reverse=True)[:10]:
        print(f"  {length:4}  {name}")
    print("imports between packages (package -> what it imports):")
    for package in sorted(edges):
        if edges[package]:
            print(f"  {package:12} -> {', '.join(sorted(edges[package]))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src" / "ecombot")
