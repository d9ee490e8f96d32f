"""circuitfind: automated circuit discovery for TransformerLens models.

The Python API (``circuitfind.api``) is importable from here: ``make_task``, ``find_circuit``,
``Circuit``, ``read_circuit_file``.  It is loaded on first use, so that ``circuitfind --help`` and
the report start without importing torch.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("circuitfind")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"

_API = {"make_task": "api", "find_circuit": "api", "Circuit": "api", "read_circuit_file": "runs.circuit_json",
        "load_specs": "methods"}  # every method's spec, by name
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from importlib import import_module

        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
