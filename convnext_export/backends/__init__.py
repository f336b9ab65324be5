"""Runtimes behind one small protocol; optional ones are imported lazily."""

from .base import (Backend, BackendSpec, BackendUnavailable, backend_names, backend_spec, default_backend_names,
                   get_backend)

__all__ = ["Backend", "BackendSpec", "BackendUnavailable", "backend_names", "backend_spec", "default_backend_names",
           "get_backend"]
