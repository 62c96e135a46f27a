"""CIELR: complex image editing via LLM reasoning. The method itself; never imports prefect."""

__version__ = "0.1.0"
