"""Runtimes behind one small protocol; optional ones are imported lazily."""

from .base import Backend, BackendUnavailable, get_backend, backend_names

__all__ = ["Backend", "BackendUnavailable", "get_backend", "backend_names"]
