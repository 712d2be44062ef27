"""Parts of benchmarks/bench_store_scale.py: the DuckDB and Postgres stores side by side."""
