"""The built-in catalog of the fictional store Harbor & Pine, written by scripts/build_builtin_catalog.py."""
