"""Prefect flows: thin shells over rgops functions."""
