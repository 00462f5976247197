"""Pipeline steps: plain functions (settings + input run ids -> output run id) and their Prefect tasks."""
