"""MLflow tracking and the run report: they read the store after the fact, never the steps."""
