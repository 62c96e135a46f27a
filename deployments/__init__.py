"""Prefect deployments: prefect.yaml, work-pool job templates and the deploy helper.

Layering: beside the command line at the top; it names the flows by entrypoint and may import
prefect; `cielr deploy` (cli/commands/deploy.py) calls its helper.
"""
