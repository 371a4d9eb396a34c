"""A benchmark harness for neural-network pruning and compression."""

__version__ = "0.1.0"
