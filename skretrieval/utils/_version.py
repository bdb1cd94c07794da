"""The version of skretrieval, here so that every subpackage can read it
without importing the package root (``skretrieval.__version__`` is this)."""

__version__ = "0.2.0"
