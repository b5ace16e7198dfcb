"""Benchmarks (run as scripts: `python bench/<name>.py`); a package so that mypy names
`bench/api.py` `bench.api`, apart from the gateway package `api`."""
