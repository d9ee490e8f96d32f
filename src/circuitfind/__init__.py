"""circuitfind: automated circuit discovery for TransformerLens models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("circuitfind")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"
