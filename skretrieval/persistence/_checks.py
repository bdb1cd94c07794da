"""Checking a fitted state against its class's declaration (:class:`StateSpec`)."""

from __future__ import annotations

import re
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator

from ..utils._state import DIMENSION
from ._registry import NODE_KEYS, SUPPORTED_CLASSES, short, state_spec

__all__ = ["InvalidState", "check_state", "declaration_problems", "is_int"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def declaration_problems():
    """Inconsistencies of the declared states of :data:`SUPPORTED_CLASSES`."""
    problems = []
    for cls in SUPPORTED_CLASSES.values():
        spec = state_spec(cls)
        params = set(cls._get_param_names())
        names = set(spec.attributes) | set(spec.transient)
        for attr in sorted(names):
            if not (_IDENTIFIER.match(attr) and not attr.startswith("__")
                    and (attr.startswith("_") or attr.endswith("_"))):
                problems.append(f"{cls.__name__}.{attr}: not a fitted attribute name")
            if attr in params or hasattr(cls, attr):
                problems.append(f"{cls.__name__}.{attr}: shadows a parameter or class member")
        for attr, decl in spec.attributes.items():
            for ref in sorted(decl.references() - set(spec.attributes) - params):
                problems.append(f"{cls.__name__}.{attr}: refers to unknown {ref!r}")
            if decl.file is not None and (decl.kind != ("arrays",) or decl.file in NODE_KEYS):
                problems.append(f"{cls.__name__}.{attr}: file= needs kind 'arrays'")
        for param in list(spec.paths) + [p for p in (spec.device, spec.steps) if p]:
            if param not in params:
                problems.append(f"{cls.__name__}: {param!r} is not a parameter")
    return problems




class InvalidState(Exception):
    """A value that does not fit its declaration."""

    def __init__(self, attr, expected, got):
        super().__init__(f"attribute {attr!r}: expected {expected}, got {got}")


_KIND_NAMES = {"b": "bool", "i": "int", "u": "unsigned int", "f": "float", "c": "complex",
               "U": "str", "S": "bytes", "O": "object (str or int items)"}


def is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_))


def _is_json(v, depth=0):
    if depth > 64:
        return False
    if v is None or isinstance(v, (bool, int, float, str, np.bool_, np.integer, np.floating)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_is_json(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_json(x, depth + 1) for k, x in v.items())
    return False


_KIND_TESTS = {
    "int": is_int,
    "float": _is_real,
    "bool": lambda v: isinstance(v, (bool, np.bool_)),
    "str": lambda v: isinstance(v, str),
    "tuple": lambda v: isinstance(v, tuple),
    "array": lambda v: isinstance(v, np.ndarray),
    "arrays": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    "estimator": lambda v: isinstance(v, BaseEstimator),
    "json": _is_json,
}


class _Lookup:
    """Resolves the dimensions of declarations against a state and parameters."""

    def __init__(self, state, params):
        self.state = state
        self.params = params

    def dim(self, dim):
        if dim is None or isinstance(dim, Integral):
            return dim
        name, axis, sign, offset = DIMENSION.match(dim).groups()
        value = self.state[name] if name in self.state else self.params.get(name)
        if isinstance(value, np.ndarray):
            axis = int(axis or 0)
            if value.ndim <= axis:
                return None
            n = value.shape[axis]
        elif isinstance(value, (tuple, list)) and axis is None:
            n = len(value)
        elif is_int(value) and axis is None:
            n = int(value)
        else:
            return None  # missing, None or malformed (checked as its own attribute)
        if offset:
            n = n + int(offset) if sign == "+" else n - int(offset)
        return n

    def text(self, dim):
        if dim is None:
            return "*"
        if isinstance(dim, Integral):
            return str(dim)
        value = self.dim(dim)
        return dim if value is None else f"{dim}={value}"


def _expected(decl, lookup):
    parts = []
    for kind in decl.kind:
        if kind == "array":
            dtype = decl.dtype if decl.dtype is not None else "biuf"
            if isinstance(dtype, str):
                dtype = "/".join(dict.fromkeys(_KIND_NAMES.get(k, k) for k in dtype))
            else:
                dtype = " or ".join(dtype)
            text = f"an array of dtype {dtype}"
            if decl.shape is not None:
                dims = ", ".join(lookup.text(d) for d in decl.shape)
                text += f" and shape ({dims}{',' if len(decl.shape) == 1 else ''})"
            parts.append(text)
        elif kind == "tuple":
            text = "a tuple" + (f" of {decl.items}" if decl.items else "")
            if decl.shape:
                text += f" of length {lookup.text(decl.shape[0])}"
            parts.append(text)
        elif kind == "estimator":
            names = " or ".join(c.__name__ for c in decl.classes) if decl.classes else None
            parts.append(f"a fitted {names}" if names else "a fitted estimator")
        elif kind == "arrays":
            parts.append("a dict of numeric arrays")
        elif kind == "json":
            parts.append("a JSON-like value")
        elif kind == "str" and decl.choices:
            parts.append("one of " + ", ".join(repr(c) for c in decl.choices))
        else:
            parts.append({"int": "an int", "float": "a number", "bool": "a bool",
                          "str": "a str"}[kind])
    if decl.none:
        parts.append("None")
    return " or ".join(parts)


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    if isinstance(value, BaseEstimator):
        return f"a {type(value).__name__}"
    return f"{type(value).__name__} {short(value, 60)}"


def _check_value(attr, decl, value, lookup):
    """Raise :class:`InvalidState` unless ``value`` fits ``decl``."""
    if value is None:
        if decl.none:
            return
        raise InvalidState(attr, _expected(decl, lookup), "None")
    kind = next((k for k in decl.kind if _KIND_TESTS[k](value)), None)
    if kind is None:
        raise InvalidState(attr, _expected(decl, lookup), _describe(value))
    bounds = decl.values
    if kind == "array":
        dtype = decl.dtype if decl.dtype is not None else "biuf"
        ok = (value.dtype.name in dtype if isinstance(dtype, tuple)
              else value.dtype.kind in dtype and value.dtype.kind != "V")
        if not ok or (value.dtype.hasobject and value.dtype != object):
            raise InvalidState(attr, _expected(decl, lookup), _describe(value))
        if decl.shape is not None:
            want = tuple(lookup.dim(d) for d in decl.shape)
            if value.ndim != len(want) or any(
                    w is not None and w != n for w, n in zip(want, value.shape)):
                raise InvalidState(attr, _expected(decl, lookup), f"shape {value.shape}")
        if bounds is not None and value.size and value.dtype.kind in "iu":
            _check_bounds(attr, bounds, int(value.min()), int(value.max()), lookup)
    elif kind == "tuple":
        if decl.items is not None and not all(_KIND_TESTS[decl.items](x) for x in value):
            raise InvalidState(attr, _expected(decl, lookup), _describe(value))
        if decl.shape:
            n = lookup.dim(decl.shape[0])
            if n is not None and len(value) != n:
                raise InvalidState(attr, _expected(decl, lookup), f"{len(value)} items")
    elif kind == "estimator":
        if decl.classes and type(value) not in decl.classes:
            raise InvalidState(attr, _expected(decl, lookup), _describe(value))
    elif kind == "arrays":
        bad = [k for k, v in value.items()
               if not isinstance(v, np.ndarray) or v.dtype.kind not in "biuf"]
        if bad:
            raise InvalidState(attr, "a dict of numeric arrays",
                           f"non-numeric entries {', '.join(map(repr, bad[:3]))}")
    elif kind == "str":
        if decl.choices and value not in decl.choices:
            raise InvalidState(attr, _expected(decl, lookup), repr(value))
    elif kind == "int" and bounds is not None:
        _check_bounds(attr, bounds, int(value), int(value), lookup)


def _check_bounds(attr, bounds, vmin, vmax, lookup):
    low, high = (lookup.dim(b) for b in bounds)
    if (low is not None and vmin < low) or (high is not None and vmax > high):
        text = f"[{lookup.text(bounds[0])}, {lookup.text(bounds[1])}]"
        got = f"{vmin}" if vmin == vmax else f"values in [{vmin}, {vmax}]"
        raise InvalidState(attr, f"values in {text}", got)


def check_state(cls, spec, state, params):
    """Raise :class:`InvalidState` unless ``state`` fits ``spec`` (all of it when
    it is a fitted state, i.e. not empty)."""
    lookup = _Lookup(state, params)
    if state:
        groups = {}
        for attr, decl in spec.attributes.items():
            if isinstance(decl.optional, str):
                groups.setdefault(decl.optional, []).append(attr)
            elif not decl.optional and attr not in state:
                raise InvalidState(attr, f"the attribute (a fitted {cls.__name__} has it)",
                               "nothing")
        for members in groups.values():
            missing = [a for a in members if a not in state]
            if missing and len(missing) < len(members):
                raise InvalidState(missing[0], "the attribute (stored together with "
                               f"{', '.join(a for a in members if a in state)})", "nothing")
    for attr, value in state.items():
        _check_value(attr, spec.attributes[attr], value, lookup)
