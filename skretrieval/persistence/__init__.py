"""Pickle-free saving and loading of fitted pipelines (JSON + ``.npz``, checksummed).

:func:`save_pipeline` writes a folder or a zip that :func:`load_pipeline`
reads without running code from the file: only the classes of
:data:`SUPPORTED_CLASSES` are instantiated, every attribute must be declared
by its class, arrays are read with ``allow_pickle=False`` within size limits,
and no file location is taken from the model.
"""

from ._format import (
    FORMAT_VERSION,
    MAX_ARRAY_BYTES,
    MAX_COMPRESSION_RATIO,
    MAX_MANIFEST_BYTES,
    SUPPORTED_CLASSES,
    ModelFormatError,
    VersionMismatchWarning,
    load_pipeline,
    save_pipeline,
)

__all__ = [
    "FORMAT_VERSION",
    "MAX_ARRAY_BYTES",
    "MAX_COMPRESSION_RATIO",
    "MAX_MANIFEST_BYTES",
    "ModelFormatError",
    "SUPPORTED_CLASSES",
    "VersionMismatchWarning",
    "load_pipeline",
    "save_pipeline",
]
