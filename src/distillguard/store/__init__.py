"""Persistence. SQLite in the data directory by default; named, ordered migrations."""

from distillguard.store.sqlite import connect

__all__ = ["connect"]
