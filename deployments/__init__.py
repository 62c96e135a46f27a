"""Prefect deployments, work-pool job templates and the deploy helper."""
