"""The ``skretrieval`` command (``index``, ``search``, ``evaluate``, ``demo``)."""

from ._main import build_parser, main

__all__ = ["build_parser", "main"]
