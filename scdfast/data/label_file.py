"""Reading `{split}_label.pkl` without running code.

The field's label files are pickles of (sample names, labels): a list of str and a list of
int. A pickle can name any importable callable and have the reader call it, so a downloaded
dataset could run code the moment it is opened. The reader here resolves no global at all:
plain lists, tuples, str and int need none, and anything else is refused with the file named.
"""
from __future__ import annotations

import pickle

import numpy as np

from scdfast.errors import ScdError


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it refers to {module}.{name}; a label file holds only lists of str and int")


def read_label_file(path: str) -> tuple[list[str] | None, np.ndarray]:
    """(sample names or None, int64 labels) from a pickled (names, labels) pair or a plain list
    of labels; a one-line ScdError naming the file for anything else."""
    try:
        with open(path, "rb") as f:
            payload = _PlainDataUnpickler(f).load()
    except FileNotFoundError:
        raise ScdError(f"{path}: no such file") from None
    except pickle.UnpicklingError as exc:
        raise ScdError(f"{path}: refused: {exc}") from None
    except Exception as exc:
        raise ScdError(f"{path}: cannot be read as a pickled (names, labels) pair ({exc.__class__.__name__})") from None
    names = None
    if isinstance(payload, (tuple, list)) and len(payload) == 2 and all(isinstance(p, (list, tuple)) for p in payload):
        names, payload = list(payload[0]), payload[1]
        bad = next((i for i, n in enumerate(names) if not isinstance(n, str)), None)
        if bad is not None:
            raise ScdError(f"{path}: sample name {bad} is a {type(names[bad]).__name__}, not a str")
    if not isinstance(payload, (list, tuple)):
        raise ScdError(f"{path}: expected a (names, labels) pair of lists, got a {type(payload).__name__}")
    bad = next((i for i, x in enumerate(payload) if type(x) is not int), None)
    if bad is not None:
        raise ScdError(f"{path}: label {bad} is {payload[bad]!r} ({type(payload[bad]).__name__}); labels are integers")
    return names, np.asarray(payload, dtype=np.int64).reshape(len(payload))
