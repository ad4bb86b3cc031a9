"""The built-in dataset: original support conversations for the fictional store Harbor & Pine.

Written for ecombot by scripts/build_builtin_dataset.py; the answers follow policy.md.
"""

from importlib import resources
from pathlib import Path


def builtin_path() -> Path:
    return Path(str(resources.files(__name__).joinpath("harbor_pine_support.jsonl")))


def policy_path() -> Path:
    """The store policy every built-in answer follows: quickstart's knowledge base."""
    return Path(str(resources.files(__name__).joinpath("policy.md")))


def policy_text() -> str:
    return policy_path().read_text(encoding="utf-8")
