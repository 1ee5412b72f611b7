"""JSON conversion: library values (tensors, numpy, dataclasses with ``to_dict``) as strict JSON values.

Strict JSON has no NaN or Infinity: :func:`json_safe` writes them as ``null``,
and every writer of the library dumps with ``allow_nan=False`` so a bare
``NaN`` never reaches a file that another tool must parse.
"""

import json
import math
from pathlib import Path

import numpy as np


def plain(value):
    """Tensors, numpy values, tuples and dataclass-like objects (``to_dict``) as JSON-able Python values."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return plain(value.to_dict())
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def json_safe(value):
    """:func:`plain` values with non-finite floats as None: strict JSON has no NaN or Infinity."""
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def dumps_strict(value, **options) -> str:
    """``json.dumps`` of :func:`json_safe` ``value``: always strict JSON (NaN and infinities as null)."""
    return json.dumps(json_safe(value), allow_nan=False, **options)
