"""Prefect deployments: prefect.yaml, work-pool job templates and the deploy helper."""
