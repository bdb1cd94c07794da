"""Growing a fitted retrieval pipeline, and index files on disk.

:func:`add_to_index` adds images to a fitted pipeline without refitting it,
by content: an image whose id is already in the database is skipped when its
content is the one indexed, and re-extracted (its entry replaced) when it
changed.  :func:`save_index`, :func:`load_index` and :func:`edit_index` are
the index files of ``skretrieval index``, written atomically, whose
read-modify-write cycles hold an exclusive lock.  An index file is a joblib
file (a pickle), or, when its name ends with ``.zip`` (or it is a model
folder), the pickle-free format of :mod:`skretrieval.persistence`, which
``skretrieval serve`` loads without ``--allow-pickle``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ..utils._files import (atomic_write, disk_full_error, file_lock, remove_stale_temps,
                            temp_prefix)
from ..extraction._images import Crop, image_key
from ..persistence import ModelFormatError, load_pipeline, save_pipeline

__all__ = [
    "IndexFile",
    "IndexUpdate",
    "add_to_index",
    "edit_index",
    "item_fingerprint",
    "load_index",
    "save_index",
    "set_feature_params",
]

_READ_BYTES = 1 << 20


def item_fingerprint(item):
    """Content fingerprint of an image (or of a descriptor row).

    Two items with the same fingerprint give the same descriptor; an image
    file edited in place, or another file under the same name, gets another
    one.

    Parameters
    ----------
    item : str, path-like, PIL.Image.Image, numpy.ndarray or Crop
        An image as :class:`~skretrieval.ConvFeatureExtractor` takes it, or
        a 1-d row of descriptors.

    Returns
    -------
    fingerprint : str
        ``"file:"`` + BLAKE2b-128 of the file's bytes for a path (the file
        is read, not only stat'ed); the content key of
        ``image_key`` for an array or a PIL image;
        ``"crop:<fingerprint of its image>:<box>"`` for a :class:`Crop`.

    Raises
    ------
    ImageLoadError
        If a file cannot be read.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import item_fingerprint
    >>> a = np.zeros((4, 4, 3), dtype=np.uint8)
    >>> item_fingerprint(a) == item_fingerprint(a.copy())
    True
    >>> item_fingerprint(a) == item_fingerprint(a + 1)
    False
    """
    if isinstance(item, Crop):
        return f"crop:{item_fingerprint(item.image)}:{item.box!r}"
    if isinstance(item, (str, os.PathLike)):
        h = hashlib.blake2b(digest_size=16)
        try:
            with open(item, "rb") as fh:
                for chunk in iter(lambda: fh.read(_READ_BYTES), b""):
                    h.update(chunk)
        except OSError:
            image_key(item)  # raises ImageLoadError naming the file if missing
            raise
        return "file:" + h.hexdigest()
    return image_key(item)


def _fingerprints(X):
    if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind in "fiub":
        return np.asarray([image_key(np.ascontiguousarray(row)) for row in X])
    return np.asarray([item_fingerprint(item) for item in X])


@dataclass
class IndexUpdate:
    """What :func:`add_to_index` did with each item it was given.

    Attributes
    ----------
    added : list
        Ids of the items that were not in the database.
    replaced : list
        Ids already in the database whose content changed (or was not
        known): re-extracted, their entry replaced.
    unchanged : list
        Ids already in the database with the same content: left as they were.
    """

    added: list = field(default_factory=list)
    replaced: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)

    def __str__(self):
        return (f"{len(self.added)} added, {len(self.replaced)} replaced (content "
                f"changed), {len(self.unchanged)} unchanged")


def _subset(X, rows):
    if isinstance(X, np.ndarray):
        return X[rows]
    return [X[i] for i in rows]


def add_to_index(pipeline, X, y=None, *, ids=None, on_existing="update",
                 return_report=False):
    """Add database items to a fitted retrieval pipeline, by content.

    Transforms ``X`` with all the steps but the last (extractor, pooler,
    whitening...) as they are, without refitting any of them, and adds the
    descriptors to the last step with its ``partial_fit`` (e.g.
    :meth:`NearestNeighborRetriever.partial_fit`), together with each item's
    content fingerprint (:func:`item_fingerprint`, kept in the retriever's
    ``fingerprints_``).  With an exact (``algorithm="brute"``) retriever, the
    result is the pipeline one would get by fitting the retriever on all the
    items with the upstream steps fitted as they are.

    Parameters
    ----------
    pipeline : Pipeline or estimator
        A fitted :class:`~sklearn.pipeline.Pipeline` whose last step has a
        ``partial_fit`` method (or such an estimator alone, which then gets
        ``X`` unchanged).

    X : list or array-like
        The new items, as the first step takes them (image paths, PIL images,
        arrays... for a pipeline starting with a
        :class:`~skretrieval.ConvFeatureExtractor`).

    y : array-like of shape (n_items,), default=None
        Their labels: required if the retriever was fitted with labels.

    ids : array-like of shape (n_items,), default=None
        Their ids (unique; e.g. image paths).  ``None`` numbers them after
        the largest integer id so far.

    on_existing : {"update", "skip", "raise"}, default="update"
        What to do with an item whose id is already in the database:

        * ``"update"``: compare its fingerprint with the indexed one; the
          same content is left as it is (not extracted again), another
          content (an image edited in place, another file under the same
          name) replaces the entry (its label too).  An entry indexed
          without a fingerprint (by an older version, or by ``fit`` without
          ``fingerprints``) counts as changed.
        * ``"skip"``: leave the indexed entry, whatever the content.
        * ``"raise"``: raise a :class:`ValueError` (nothing is changed).

    return_report : bool, default=False
        Also return an :class:`IndexUpdate` saying which ids were added,
        replaced and left unchanged.

    Returns
    -------
    pipeline : Pipeline or estimator
        The same object, with the new items in its database.

    report : IndexUpdate
        Only with ``return_report=True``.

    See Also
    --------
    NearestNeighborRetriever.partial_fit : The step that stores the items.
    NearestNeighborRetriever.remove : Remove items by id.
    edit_index : Change an index file under its lock.

    Notes
    -----
    An unreadable image raises before the database changes: the replaced
    entries are removed only once every new descriptor has been computed.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.pipeline import make_pipeline
    >>> from skretrieval import NearestNeighborRetriever, PCAWhitener, add_to_index
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_pipeline(PCAWhitener(n_components=4), NearestNeighborRetriever())
    >>> pipe = pipe.fit(rng.normal(size=(50, 8)))
    >>> _ = add_to_index(pipe, rng.normal(size=(5, 8)))
    >>> pipe[-1].n_samples_fit_, pipe[-1].ids_[-1]
    (55, np.int64(54))
    >>> new = rng.normal(size=(2, 8))
    >>> _, report = add_to_index(pipe, new, ids=[54, 55], return_report=True)
    >>> print(report)
    1 added, 1 replaced (content changed), 0 unchanged
    """
    if on_existing not in ("update", "skip", "raise"):
        raise ValueError(
            f"on_existing must be 'update', 'skip' or 'raise', got {on_existing!r}")
    if isinstance(pipeline, Pipeline):
        last = pipeline._final_estimator
        upstream = pipeline[:-1] if len(pipeline) > 1 else None
    else:
        last, upstream = pipeline, None
    if last is None or last == "passthrough" or not hasattr(last, "partial_fit"):
        raise TypeError(
            f"add_to_index needs a pipeline whose last step has a partial_fit "
            f"method (e.g. NearestNeighborRetriever), got {type(last).__name__}"
        )
    check_is_fitted(last)
    n_items = len(X)
    fingerprints = _fingerprints(X)
    report = IndexUpdate()
    replace_rows = np.zeros(0, dtype=np.intp)
    keep = np.arange(n_items)
    if ids is not None:
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.shape[0] != n_items:
            raise ValueError(f"ids must be a 1-d array of {n_items} values (one per "
                             f"item), got shape {ids.shape}.")
        known_ids = np.asarray(last.ids_)
        present = np.isin(ids, known_ids) if ids.shape[0] else np.zeros(0, bool)
        if present.any():
            if on_existing == "raise":
                taken = ids[present]
                raise ValueError(
                    f"{taken.shape[0]} id(s) already in the database: "
                    f"{taken[:5].tolist()}; pass on_existing='update' to replace "
                    "the changed ones, or remove() them first.")
            rows = last.rows_of(ids[present])
            stored = getattr(last, "fingerprints_", None)
            if on_existing == "skip" or stored is None:
                same = np.full(rows.shape[0], on_existing == "skip")
            else:
                same = (np.asarray(stored)[rows] == fingerprints[present]) & (
                    np.asarray(stored)[rows] != "")
            where = np.flatnonzero(present)
            report.unchanged = ids[where[same]].tolist()
            report.replaced = ids[where[~same]].tolist()
            replace_rows = rows[~same]
            keep = np.setdiff1d(keep, where[same])
        report.added = ids[~present].tolist()
    if keep.shape[0]:
        Xk = _subset(X, keep)
        Xt = Xk if upstream is None else upstream.transform(Xk)
        yk = None if y is None else np.asarray(y)[keep]
        idk = None if ids is None else ids[keep]
        if replace_rows.shape[0]:
            if replace_rows.shape[0] == last.n_samples_fit_:
                # remove() cannot empty the database: refit on the new items
                last.fit(Xt, yk, ids=idk, fingerprints=fingerprints[keep])
            else:
                last.remove(np.asarray(last.ids_)[replace_rows])
                last.partial_fit(Xt, yk, ids=idk, fingerprints=fingerprints[keep])
        else:
            last.partial_fit(Xt, yk, ids=idk, fingerprints=fingerprints[keep])
        if ids is None:
            report.added = np.asarray(last.ids_)[-keep.shape[0]:].tolist()
    return (pipeline, report) if return_report else pipeline


# ---------------------------------------------------------------------------
# index files
# ---------------------------------------------------------------------------
def set_feature_params(pipeline, **params):
    """Set run-time parameters on the feature steps that have them.

    The steps before the retriever (a
    :class:`~skretrieval.ConvFeatureExtractor`, a
    :class:`~skretrieval.local.SIFTExtractor`, a
    :class:`~skretrieval.local.DeepLocalFeatures`...) take different
    settings: each step gets those of ``params`` among its own parameters
    (``get_params(deep=False)``), the others are left out for it.  The one
    way the command line, ``serve`` and :func:`save_index` silence the
    progress output or turn a feature cache off, whatever the extractor.

    Parameters
    ----------
    pipeline : Pipeline or estimator
        A retrieval pipeline (its last step is left alone), or a single
        feature step.
    **params
        Parameter values, e.g. ``verbose=0, cache=None``.

    Returns
    -------
    previous : list of (estimator, dict)
        Each changed step with its values before the call (give them back
        with ``step.set_params(**values)``).

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from skretrieval.index import set_feature_params
    >>> from skretrieval.local import ASMKRetriever, SIFTExtractor
    >>> pipe = make_pipeline(SIFTExtractor(), ASMKRetriever())
    >>> [dict(old) for _, old in set_feature_params(pipe, verbose=0, cache=None)]
    [{'cache': 'auto'}]
    >>> pipe[0].cache is None
    True
    """
    steps = ([s for _, s in pipeline.steps[:-1]] if isinstance(pipeline, Pipeline)
             else [pipeline])
    previous = []
    for step in steps:
        if not hasattr(step, "get_params"):
            continue  # "passthrough" or a plain function
        own = step.get_params(deep=False)
        mine = {k: v for k, v in params.items() if k in own}
        if mine:
            previous.append((step, {k: own[k] for k in mine}))
            step.set_params(**mine)
    return previous


def _check_index(obj, path):
    if not (isinstance(obj, Pipeline) and len(obj) >= 2 and hasattr(obj[-1], "kneighbors")
            and getattr(obj[-1], "n_samples_fit_", None) is not None):
        raise ValueError(
            f"{os.fspath(path)!r} does not hold a fitted retrieval pipeline; expected "
            "a file written by 'skretrieval index' or skretrieval.save_index")
    return obj


def load_index(path):
    """Load an index file: a fitted retrieval pipeline.

    Parameters
    ----------
    path : str or path-like
        A file written by ``skretrieval index`` or :func:`save_index`: a
        joblib file, or a pickle-free model (a ``.zip`` file or a folder
        written by :func:`skretrieval.persistence.save_pipeline`).

    Returns
    -------
    pipeline : Pipeline
        The fitted pipeline (extractor ... retriever).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is neither a joblib file nor a pickle-free model of a fitted
        retrieval pipeline (a
        :class:`~skretrieval.persistence.ModelFormatError`, naming the file
        and what is wrong, for a ``.zip`` or a folder).

    Notes
    -----
    A joblib file is a pickle: loading one runs code chosen by whoever wrote
    it.  Only load joblib index files you or someone you trust wrote; a
    ``.zip`` index (or a folder) is read without pickle
    (:mod:`skretrieval.persistence`), always: a damaged one, or a pickle
    named ``.zip``, is refused, never unpickled.
    """
    import joblib

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"index file not found: {path!r}")
    # a .zip name or a folder is the pickle-free format, even when damaged: a
    # file meant to be read without pickle is never unpickled
    if os.path.isdir(path) or _is_zip_name(path) or is_model_file(path):
        try:
            pipeline = load_pipeline(path)
        except ModelFormatError as exc:
            raise ModelFormatError(f"cannot load the index: {exc}") from exc
        return _check_index(pipeline, path)
    try:
        obj = joblib.load(path)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure
        raise ValueError(
            f"cannot load {path!r} ({type(exc).__name__}: {exc}); expected a file "
            "written by 'skretrieval index' or skretrieval.save_index") from exc
    return _check_index(obj, path)


def _is_zip_name(path):
    return os.fspath(path).lower().endswith(".zip")


def is_model_file(path):
    """Whether ``path`` is a pickle-free model (a folder or zip with a manifest)."""
    import zipfile

    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "manifest.json"))
    try:
        with zipfile.ZipFile(path) as zf:
            return "manifest.json" in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def _dump(pipeline, path):
    import joblib

    # a saved index prints nothing and points at no cache of this machine
    saved = (set_feature_params(pipeline, verbose=0, cache=None)
             if isinstance(pipeline, Pipeline) else [])
    try:
        if _is_zip_name(path):  # the pickle-free format, written atomically
            _dump_model(pipeline, path)
        else:
            with atomic_write(path) as fh:
                joblib.dump(pipeline, fh)
    finally:
        for step, values in saved:
            step.set_params(**values)


def _dump_model(pipeline, path):
    """``save_pipeline`` of ``path`` through a temporary folder named after it,
    which the next writer (under the lock) removes if this one is killed."""
    import shutil
    import tempfile

    path = os.path.abspath(os.fspath(path))
    tmp = tempfile.mkdtemp(prefix=temp_prefix(path), dir=os.path.dirname(path))
    try:
        written = save_pipeline(pipeline, os.path.join(tmp, "index.zip"))
        os.replace(written, path)
    except OSError as exc:
        full = disk_full_error(exc, path)
        if full is None:
            raise
        raise full from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class IndexFile:
    """An index file held under its exclusive lock, to load and save it.

    ``with IndexFile(path) as f:`` takes the lock of ``path`` (the file
    ``<path>.lock``; a second writer of the same file waits, with a message
    on stderr, for the first to finish) and removes the temporary files that
    killed writers left; inside, :meth:`load` and :meth:`save` read and
    write the file (atomically).  :func:`save_index` and :func:`edit_index`
    are the short forms.

    Parameters
    ----------
    path : str or path-like
        The index file (it need not exist yet).
    timeout : float or None, default=None
        Seconds to wait for another writer (``None``: as long as it takes).

    Raises
    ------
    IndexLockedError
        On entering, if another process held the lock for longer than
        ``timeout``.
    """

    def __init__(self, path, *, timeout=None):
        self.path = os.fspath(path)
        self.timeout = timeout
        self._stack = None

    def __enter__(self):
        stack = contextlib.ExitStack()
        stack.enter_context(file_lock(self.path, timeout=self.timeout))
        self._stack = stack
        # what killed writers left: ours, and older versions' after an hour
        remove_stale_temps(self.path, legacy_prefixes=(".skretrieval-index-",))
        return self

    def __exit__(self, *exc):
        stack, self._stack = self._stack, None
        stack.close()
        return False

    def _check_held(self):
        if self._stack is None:
            raise RuntimeError("use the IndexFile in a 'with' block: it holds the lock")

    def exists(self):
        """Whether the file exists."""
        return os.path.exists(self.path)

    def load(self):
        """The pipeline in the file (see :func:`load_index`)."""
        self._check_held()
        return load_index(self.path)

    def save(self, pipeline):
        """Write ``pipeline`` to the file, atomically (see :func:`save_index`)."""
        self._check_held()
        _dump(pipeline, self.path)


def save_index(pipeline, path, *, timeout=None):
    """Save a fitted retrieval pipeline to an index file, atomically, locked.

    Writes a joblib file, or the pickle-free format of
    :mod:`skretrieval.persistence` when ``path`` ends with ``.zip``, through
    a temporary file renamed over ``path``: an
    interruption or a failed write (a full disk) leaves the previous file
    intact.  Holds ``path``'s lock (``<path>.lock``) while writing, and
    removes the temporary files that killed writers of ``path`` left.  The
    extractor's ``verbose`` and ``cache`` are saved as ``0`` and ``None``.

    Parameters
    ----------
    pipeline : Pipeline
        A fitted retrieval pipeline.
    path : str or path-like
        Where to write it.
    timeout : float or None, default=None
        Seconds to wait for another writer of ``path`` (``None``: as long as
        it takes).

    Raises
    ------
    IndexLockedError
        If another process held the lock for longer than ``timeout``.

    See Also
    --------
    edit_index : Load, change and save an index under one lock.
    load_index : Load an index file.
    """
    with IndexFile(path, timeout=timeout) as f:
        f.save(pipeline)


@contextlib.contextmanager
def edit_index(path, *, timeout=None, create=None):
    """Load an index file, yield it for changes, save it: all under its lock.

    The read-modify-write cycle of an index file (add images, remove some)
    for code that may run beside other writers of the same file: a second
    ``edit_index`` (or ``skretrieval index --append``) of the same file waits
    for the first to save, then sees its changes, so no writer's items are
    lost.  The file is saved only if the block exits normally; an exception
    (or an interruption) leaves it as it was.

    Parameters
    ----------
    path : str or path-like
        The index file.
    timeout : float or None, default=None
        Seconds to wait for another writer (``None``: as long as it takes).
    create : callable or None, default=None
        Called with no argument to make the pipeline when ``path`` does not
        exist yet (e.g. a function that fits a new one); without it, a
        missing file raises :class:`FileNotFoundError`.

    Yields
    ------
    pipeline : Pipeline
        The loaded pipeline; change it in place.

    Examples
    --------
    >>> from skretrieval import add_to_index, edit_index
    >>> with edit_index("index.joblib") as pipe:  # doctest: +SKIP
    ...     add_to_index(pipe, new_paths, ids=new_names)
    ...     pipe[-1].remove(["gone.jpg"])
    """
    with IndexFile(path, timeout=timeout) as f:
        pipeline = create() if create is not None and not f.exists() else f.load()
        yield pipeline
        f.save(pipeline)
