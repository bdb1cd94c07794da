"""Declarations of the state an estimator persists (see :mod:`skretrieval.persistence`).

Every estimator that :func:`skretrieval.persistence.save_pipeline` stores
declares, in a class attribute ``_state_spec`` (a :class:`StateSpec`), the
fitted attributes it persists and what they must look like; the loader
refuses any other attribute and any value that does not fit.  The
persistence module holds the same declarations for the scikit-learn classes
it supports.  Two optional methods complete the protocol:

``_persistent_state(self) -> dict``
    The attributes to store (default: ``vars(self)``); parameters and
    :attr:`StateSpec.transient` attributes are skipped.
``_after_load(self[, device])``
    Called on a fitted estimator once its attributes are restored (with the
    resolved ``device`` of ``load_pipeline(device=...)`` when the spec has a
    ``device`` parameter); an exception there is reported as an inconsistent
    model file.

Everything the persistence code knows of a class is in its declaration and
these two hooks: it writes no attribute by name and has no branch for a
class.  The declaration says which attributes are stored (and checked),
which are transient (set to their declared value after loading, before
``_after_load``), which parameters name locations (:class:`PathParam`),
which parameter takes ``load_pipeline(device=...)`` and which parameter
holds a list of named steps (a :class:`~sklearn.pipeline.Pipeline`'s
``steps``, stored as sub-entries).  The scikit-learn classes, which cannot
carry a ``_state_spec``, are declared in
``skretrieval.persistence._registry.SKLEARN_STATE``.

This module imports nothing from the package, so that every estimator module
can import it.
"""

from __future__ import annotations

import os
import re

__all__ = ["Attr", "PathParam", "StateSpec", "LABELS"]

#: dtype kinds of label arrays (``y_``): numbers, booleans, strings, and object
#: arrays of str or int items (stored as unicode / int64 arrays).
LABELS = "biufUO"

_KINDS = ("int", "float", "bool", "str", "tuple", "array", "arrays", "estimator", "json")
#: A dimension named in a shape: ``"name"``, ``"name[1]"``, ``"name+1"``.
DIMENSION = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d)\])?(?:([+-])(\d+))?$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class Attr:
    """What one persisted fitted attribute must look like.

    Parameters
    ----------
    kind : str or tuple of str
        The type of the value, or alternatives:

        * ``"int"``: an int (Python or numpy, not bool);
        * ``"float"``: a real number (int or float, Python or numpy, not bool);
        * ``"bool"``, ``"str"``;
        * ``"tuple"``: a tuple of ``items`` (of ``shape[0]`` items if given);
        * ``"array"``: a numpy array of ``dtype`` and ``shape``;
        * ``"arrays"``: a dict of str to numeric arrays (a network's state
          dict);
        * ``"estimator"``: a fitted sub-estimator (an instance of ``classes``
          when given), itself checked against its own class's declaration;
        * ``"json"``: any value made of None, bools, numbers, strings and
          lists / tuples / dicts of them (e.g. a training history).
    dtype : str or tuple of str, default=None
        For arrays: the allowed dtype kinds (``"f"``, ``"iu"``, ``"U"``,
        :data:`LABELS`...; ``"O"`` allows object arrays of str or int items)
        or a tuple of exact dtype names (``("float32", "float16")``).  None:
        numbers and booleans (``"biuf"``).
    shape : tuple, default=None
        For arrays (and tuples): one entry per dimension, which fixes the
        number of dimensions.  An entry is None (any size), an int, or a
        string naming another attribute or a parameter of the same estimator,
        optionally with an axis and an offset: ``"n_samples_fit_"`` (its value
        if an int, its length if an array or tuple), ``"X_fit_[1]"``
        (``X_fit_.shape[1]``), ``"global_+1"``.  A reference to a missing or
        None value is not checked.
    values : tuple of two (int or str or None), default=None
        Inclusive bounds of the values of an integer array or scalar
        (entries as in ``shape``; None: unbounded).
    choices : tuple of str, default=None
        The allowed values of a string.
    items : str, default=None
        The kind of the items of a tuple.
    classes : tuple of type, default=None
        The allowed classes of a sub-estimator.
    optional : bool or str, default=False
        Whether a fitted estimator may lack the attribute (e.g. one set only
        with some parameters, or added by a later version).  A string names a
        group: the attributes of a group are all present or all absent.
    none : bool, default=False
        Whether the value may be None.
    file : str, default=None
        For ``"arrays"``: store the dict in its own ``.npz`` file, referenced
        by this key of the estimator's manifest entry (the extractor's
        network: ``"trunk"``) instead of inside the estimator's arrays.
    """

    __slots__ = ("kind", "dtype", "shape", "values", "choices", "items", "classes",
                 "optional", "none", "file")

    def __init__(self, kind, *, dtype=None, shape=None, values=None, choices=None,
                 items=None, classes=None, optional=False, none=False, file=None):
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        unknown = [k for k in kinds if k not in _KINDS]
        if unknown or not kinds:
            raise ValueError(f"unknown attribute kind(s) {unknown}; use {_KINDS}")
        for dim in tuple(shape or ()) + tuple(values or ()):
            if isinstance(dim, str) and not DIMENSION.match(dim):
                raise ValueError(f"malformed dimension {dim!r}")
        self.kind = kinds
        self.dtype = dtype
        self.shape = None if shape is None else tuple(shape)
        self.values = values
        self.choices = choices
        self.items = items
        self.classes = classes
        self.optional = optional
        self.none = none
        self.file = file

    def references(self):
        """Names of the attributes and parameters this declaration refers to."""
        dims = tuple(self.shape or ()) + tuple(self.values or ())
        return {DIMENSION.match(d).group(1) for d in dims if isinstance(d, str)}

    def __repr__(self):
        fields = [repr(self.kind[0] if len(self.kind) == 1 else self.kind)]
        for name in self.__slots__[1:]:
            value = getattr(self, name)
            if value not in (None, False):
                fields.append(f"{name}={value!r}")
        return f"Attr({', '.join(fields)})"


class PathParam:
    """A parameter that may name a file, directory or cache location.

    :func:`skretrieval.persistence.load_pipeline` never takes such a location
    from a model file: a saved value other than ``keep`` (or, with
    ``keep_names``, a plain name such as a torchvision weights name) is
    replaced by ``safe``; ``load_pipeline(..., params=...)`` gives it back.

    Parameters
    ----------
    safe : object, default=None
        The value a location is replaced with.
    keep : tuple, default=(None,)
        Values that are not locations, restored as written.
    keep_names : bool, default=False
        Also restore strings that are plain identifiers (``"IMAGENET1K_V1"``)
        and do not name an existing file or directory.
    warn : str, default=None
        When set, replacing a location warns, with this consequence (e.g.
        "refitting would start from random weights").
    """

    __slots__ = ("safe", "keep", "keep_names", "warn")

    def __init__(self, safe=None, *, keep=(None,), keep_names=False, warn=None):
        self.safe = safe
        self.keep = tuple(keep)
        self.keep_names = keep_names
        self.warn = warn

    def restores(self, value):
        """Whether ``value`` (as decoded from a model file) is restored."""
        if any(value is k or (type(value) is type(k) and value == k) for k in self.keep):
            return True
        return (self.keep_names and isinstance(value, str) and bool(_NAME.match(value))
                and not os.path.exists(value))

    def __repr__(self):
        return (f"PathParam(safe={self.safe!r}, keep={self.keep!r}, "
                f"keep_names={self.keep_names!r})")


class StateSpec:
    """The persisted state of an estimator class.

    Parameters
    ----------
    attributes : dict of str to Attr, default=None
        The fitted attributes stored in model files, private ones included.
        Anything else in a model file is refused.
    transient : dict of str to object, default=None
        Attributes that are not stored (caches, torch modules, open files...)
        and their value after loading.  Files written by earlier versions
        may hold them as null or as that value, which is accepted (and
        discarded); any other value is refused.
    paths : dict of str to PathParam, default=None
        Parameters that may name files or directories (see
        :class:`PathParam`).
    device : str, default=None
        The parameter that ``load_pipeline(device=...)`` replaces; the
        estimator's ``_after_load`` then receives the resolved device.
    steps : str, default=None
        The parameter holding a list of ``(name, estimator)`` steps (a
        :class:`~sklearn.pipeline.Pipeline`'s ``steps``), stored as the
        ``"steps"`` entry of the estimator's manifest entry (``None`` and
        ``"passthrough"`` steps as such).  Each step must be fitted when
        saved; the estimator itself is not checked (it is fitted when its
        steps are).
    """

    __slots__ = ("attributes", "transient", "paths", "device", "steps")

    def __init__(self, attributes=None, *, transient=None, paths=None, device=None,
                 steps=None):
        self.attributes = dict(attributes or {})
        self.transient = dict(transient or {})
        self.paths = dict(paths or {})
        self.device = device
        self.steps = steps
        both = set(self.attributes) & set(self.transient)
        if both:
            raise ValueError(f"attributes both stored and transient: {sorted(both)}")

    def extend(self, attributes=None, *, transient=None, paths=None, device=None,
               steps=None):
        """A copy with more (or replaced) declarations, for subclasses."""
        return StateSpec(
            {**self.attributes, **(attributes or {})},
            transient={**self.transient, **(transient or {})},
            paths={**self.paths, **(paths or {})},
            device=self.device if device is None else device,
            steps=self.steps if steps is None else steps,
        )

    def __repr__(self):
        return (f"StateSpec(attributes={sorted(self.attributes)}, "
                f"transient={sorted(self.transient)}, paths={sorted(self.paths)}, "
                f"device={self.device!r}"
                + ("" if self.steps is None else f", steps={self.steps!r}") + ")")
