"""Prefect flows (edit_image, edit_dataset, evaluate) and the `cielr` command line."""
