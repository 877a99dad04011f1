"""batchrunner: run Anthropic Messages request sets through an LLM gateway, one Parquet row per request."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
