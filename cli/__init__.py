"""The `cielr` command line: one module per sub-command group in cli/commands, each exposing
``register(app)``; cli/main.py builds the Typer app.

Layering: the top layer beside flows/. It owns argument parsing, messages and exit codes, and the
commands that never start a flow (ssr, plan, config, models, doctor, deploy). It may import
flows (to start them), tasks (the key module, the runtime's settings and store), storage and
cielr_core; nothing imports it.
"""
