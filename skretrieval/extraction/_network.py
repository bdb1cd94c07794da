"""The home of the torch network: devices (and, from here on, building and caching cut networks).

:func:`resolve_device` turns a ``device`` parameter into a torch device string;
every estimator that runs a network (the extractor, the trainer, a loaded
model) resolves its device here.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device):
    """The torch device string for a ``device`` parameter.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (CUDA if available, else Apple's MPS, else the CPU) or any
        torch device name (``"cpu"``, ``"cuda:1"``...).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If CUDA is asked for and not available.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use 'cpu' or 'auto'")
    return str(dev)
