"""``load_checkpoint``: a published retrieval checkpoint as a scikit-learn Pipeline."""

from __future__ import annotations

import hashlib
import os

import torch
from sklearn.pipeline import Pipeline

from ..extraction._extractor import ConvFeatureExtractor
from ..neighbors._retriever import NearestNeighborRetriever
from ..utils._files import atomic_write
from ._heads import MultiScaleHead
from ._reading import read_checkpoint, sniff_format
from ._recipes import cirtorch_recipe, naver_recipe, state_dict_recipe

__all__ = ["PRESETS", "checkpoint_cache_dir", "load_checkpoint", "read_recipe"]

#: The evaluation presets: ``"ss"`` single scale, ``"ms"`` the authors'
#: multi-scale protocol, ``"auto"`` the one of the table the authors report.
PRESETS = ("auto", "ss", "ms")

_READERS = {"cirtorch": cirtorch_recipe, "naver": naver_recipe, "state_dict": state_dict_recipe}


def checkpoint_cache_dir():
    """Where converted backbone weights are written:
    ``$SKRETRIEVAL_CHECKPOINT_DIR``, else ``~/.cache/skretrieval/checkpoints``."""
    return os.environ.get("SKRETRIEVAL_CHECKPOINT_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "skretrieval", "checkpoints")


def _digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _weights_file(recipe, path, cache_dir):
    """The torchvision state-dict file of the recipe's backbone (written once)."""
    if recipe.state is None:
        return os.fspath(path)
    folder = os.fspath(cache_dir) if cache_dir is not None else checkpoint_cache_dir()
    os.makedirs(folder, exist_ok=True)
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    target = os.path.join(folder, f"{stem}-{_digest(path)}-{recipe.backbone}.pth")
    if not os.path.isfile(target):
        with atomic_write(target) as fh:
            torch.save(recipe.state, fh)
    return target


def read_recipe(path, *, whitening="auto", backbone=None, **options):
    """The :class:`Recipe` of a checkpoint (no network built).

    Parameters are those of :func:`load_checkpoint`; ``options`` go to the
    family's reader (naver: ``whiten_power``, ``whiten_dims``).
    """
    obj = read_checkpoint(path)
    family = sniff_format(obj, os.fspath(path))
    if family == "state_dict":
        if whitening not in ("auto", None, False):
            raise ValueError(f"{os.fspath(path)!r} is a plain state dict: it stores no "
                             f"whitening {whitening!r}")
        return state_dict_recipe(obj, os.fspath(path), backbone=backbone, **options)
    if backbone is not None:
        raise ValueError(f"{os.fspath(path)!r} is a {family} checkpoint: it names its "
                         "own backbone (backbone= is for plain state dicts)")
    return _READERS[family](obj, os.fspath(path), whitening=whitening, **options)


def load_checkpoint(path, *, preset="auto", whitening="auto", backbone=None, max_size=1024,
                    scales=None, device="auto", batch_size=None, cache="auto",
                    cache_dir=None, n_neighbors=10, verbose=0, return_recipe=False,
                    **options):
    """A published retrieval checkpoint as a ready-to-index scikit-learn Pipeline.

    The format is sniffed from the file: a cirtorch checkpoint
    (filipradenovic/cnnimageretrieval-pytorch: ``retrievalSfM120k-*-gem``,
    ``rSfM120k-tl-*-gem-w``, ``gl18-tl-*-gem-w``), a deep-image-retrieval one
    (naver: ``Resnet101-AP-GeM``, ``Resnet-101-AP-GeM-LM18``, ...) or a plain
    state dict (torchvision, or timm/open_clip with ``backbone=``).  Files are
    read with ``torch.load(weights_only=True)``; see ``docs/pretrained.md``.

    The pipeline is ``ConvFeatureExtractor`` (the checkpoint's backbone, cut
    where the authors cut it, fitted) -> the network's pooling (the learned
    GeM ``p``) -> its projection layer as a frozen
    :class:`~skretrieval.LearnedWhitener` -> the stored whitening (cirtorch's
    ``Lw``, naver's PCA) as a frozen whitener -> an unfitted
    :class:`~skretrieval.NearestNeighborRetriever`.  With several scales the
    pooling and projection run per scale inside a :class:`MultiScaleHead`
    that combines the scales as the authors do.  Fit it on the database
    images; the whitenings stay as read.

    Parameters
    ----------
    path : str or path-like
        The checkpoint file.
    preset : {"auto", "ss", "ms"}, default="auto"
        ``"ss"``: single scale.  ``"ms"``: the authors' multi-scale
        protocol: cirtorch's scales ``[1, 1/sqrt(2), 1/2]`` combined by the
        power mean of exponent the GeM ``p`` (``examples/test.py``), or
        ``[1, sqrt(2), 1/sqrt(2)]`` averaged for the networks with a
        whitening layer (``examples/test_e2e.py``); deep-image-retrieval's
        GeM (p = 3) of the per-scale descriptors over ``[1, 1/sqrt(2), 1/2]``.
        ``"auto"``: the protocol of the tables the authors report
        (cirtorch: "ms", deep-image-retrieval: "ss").
    whitening : "auto", str or None, default="auto"
        The stored whitening to apply after the network, by its training set
        (cirtorch ``'retrieval-SfM-120k'``, naver ``'Landmarks_clean'``);
        "auto": that one when present (else the only one); None: none.
    backbone : str, default=None
        The architecture of a plain state dict (sniffed for torchvision's
        resnet, vgg, alexnet, densenet and mobilenet_v2 files); required for
        ``"timm:<model>"`` and ``"open_clip:<arch>/<tag>"`` files.
    max_size : int, default=1024
        Longest image side at scale 1 (cirtorch's and naver's test size).
    scales : sequence of float, default=None
        Scales instead of the preset's.
    device, batch_size, cache, verbose
        Passed to :class:`~skretrieval.ConvFeatureExtractor`.
    cache_dir : str or path-like, default=None
        Where the backbone's weights are written in torchvision's layout
        (default :func:`checkpoint_cache_dir`); written once per checkpoint.
    n_neighbors : int, default=10
        Of the retriever.
    return_recipe : bool, default=False
        Also return the :class:`Recipe` read from the file (its
        ``description``, ``whitening_name``, the preset scales, ...).
    **options
        naver checkpoints: ``whiten_power`` (0.25, their ``--whitenp``),
        ``whiten_dims`` (their ``--whitenv``); plain state dicts: ``p`` (3).

    Returns
    -------
    pipe : Pipeline
        Extractor fitted, whitenings frozen, retriever to fit on a database.
    recipe : Recipe
        Only with ``return_recipe=True``.

    Raises
    ------
    CheckpointFormatError
        For an unreadable, unknown or unsupported file, naming what it holds.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    recipe = read_recipe(path, whitening=whitening, backbone=backbone, **options)
    chosen = recipe.default_preset if preset == "auto" else preset
    scales = tuple(float(s) for s in (scales if scales is not None else recipe.scales[chosen]))
    weights = _weights_file(recipe, path, cache_dir)
    extractor = ConvFeatureExtractor(recipe.backbone, weights=weights, layer=recipe.layer,
                                     max_size=max_size, scales=scales, device=device,
                                     batch_size=batch_size, cache=cache, verbose=verbose)
    extractor.fit()
    steps = [("extractor", extractor)]
    if len(scales) == 1:
        steps.append(("pooler", recipe.pooler))
        if recipe.projection is not None:
            steps.append(("projection", recipe.projection))
    else:
        steps.append(("head", MultiScaleHead(recipe.pooler, projection=recipe.projection,
                                             power=recipe.power, eps=recipe.power_eps)))
    post = recipe.post.get("ss" if len(scales) == 1 else "ms")
    if post is not None:
        steps.append(("whitening", post))
    steps.append(("retriever", NearestNeighborRetriever(n_neighbors=n_neighbors)))
    pipe = Pipeline(steps)
    return (pipe, recipe) if return_recipe else pipe
