"""Prefect flows: they only wire tasks."""
