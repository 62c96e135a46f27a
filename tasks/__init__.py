"""Thin Prefect task wrappers around cielr_core functions: cache keys, retries, persistence."""
