"""The scheduler in three parts: ``dag`` (which tasks, in which order; no Ray), ``backends`` (where they
run: Ray, or in this process), ``sink`` (where results go: Parquet first, MLflow after)."""
