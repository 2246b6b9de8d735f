"""Reading pickles of plain numeric arrays (pyskl / MMAction2 annotation files) without running code.

A pickle names callables for the reader to call; a downloaded annotation file could name
`os.system` as easily as NumPy's array rebuild. This reader resolves exactly the globals NumPy
needs to rebuild numeric arrays and scalars (`_reconstruct`, `ndarray`, `dtype`, `scalar`,
`_frombuffer`, under either of NumPy's module names) and protocol 2's spelling of bytes, and
checks every dtype before any bytes are interpreted by it: booleans, integers and floats
only, no object, structured or subarray dtype. Any other global is refused, and the file is
named in one line. The file is read
through a buffered stream: the loaded object is the only copy of the arrays in memory.
"""
from __future__ import annotations

import pickle

import numpy as np

from scdfast.errors import ScdError

_NUMERIC_KINDS = "biuf"
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric",
                  "numpy")


def _plain_dtype(dtype) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"an array's dtype is a {type(dtype).__name__}, not a NumPy dtype")
    if dtype.hasobject or dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"an array of dtype {dtype} (only plain numeric arrays are read)")
    return dtype


class _CheckedArray(np.ndarray):
    """What `_reconstruct` builds here: its state (shape, dtype, raw bytes) is checked before
    NumPy reads it. Turned back into plain ndarrays (views, no copy) once the file is loaded."""

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], (bytes, bytearray))):
            raise pickle.UnpicklingError("an array whose state is not (version, shape, dtype, order, raw bytes)")
        _plain_dtype(state[2])
        super().__setstate__(state)


class _NdarrayName:
    """What the global `numpy.ndarray` resolves to: a name `_reconstruct` accepts as its class,
    not the class itself, which a pickle could otherwise call with any shape and dtype."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("a call of numpy.ndarray (only NumPy's array rebuild may build arrays)")


_NDARRAY = _NdarrayName()


def _reconstruct(subtype, shape, typecode):
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"an array of class {getattr(subtype, '__name__', subtype)!r}")
    if shape not in ((0,), 0):  # NumPy writes an empty placeholder; its state brings the size
        raise pickle.UnpicklingError(f"an array placeholder of shape {shape!r} (NumPy writes (0,))")
    return np.ndarray.__new__(_CheckedArray, (0,), np.uint8)


def _dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"a dtype built from {type(spec).__name__}")
    return _plain_dtype(np.dtype(spec))


def _scalar(dtype, data=None):
    _plain_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"a {dtype} scalar without its {dtype.itemsize} bytes")
    return np.frombuffer(data, dtype=dtype)[0]


def _latin1_bytes(text, encoding="latin1"):
    """Protocol 2 spells bytes as codecs.encode(text, 'latin1'): only that spelling is admitted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("a call of _codecs.encode other than protocol 2's bytes")
    return text.encode("latin1")


def _frombuffer(buffer, dtype, shape, order):
    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)):
        raise pickle.UnpicklingError(f"an array read from a {type(buffer).__name__}")
    array = np.frombuffer(buffer, dtype=_plain_dtype(dtype))
    return array.reshape(shape, order=order)


_ADMITTED = {"_reconstruct": _reconstruct, "ndarray": _NDARRAY, "dtype": _dtype, "scalar": _scalar,
             "_frombuffer": _frombuffer}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module in _NUMPY_MODULES and name in _ADMITTED:
            return _ADMITTED[name]
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise pickle.UnpicklingError(f"it refers to {module}.{name}; only NumPy's numeric-array rebuild is admitted")


def _plain(value):
    """The loaded structure with every checked array as a plain ndarray view."""
    if isinstance(value, _CheckedArray):
        return value.view(np.ndarray)
    if isinstance(value, dict):
        for key in value:
            value[key] = _plain(value[key])
        return value
    if isinstance(value, list):
        for i, item in enumerate(value):
            value[i] = _plain(item)
        return value
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return value


def read_array_pickle(path: str):
    """The object a pickle of dicts, lists, tuples, str, numbers and numeric arrays holds; a
    one-line ScdError naming the file for anything else, before anything it names is called."""
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            return _plain(_ArrayUnpickler(f).load())
    except FileNotFoundError:
        raise ScdError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ScdError(f"{path}: is a directory, not an annotation file") from None
    except pickle.UnpicklingError as exc:
        raise ScdError(f"{path}: refused: {exc}") from None
    except MemoryError:
        raise ScdError(f"{path}: too large for this machine's memory") from None
    except Exception as exc:  # truncated, not a pickle, a malformed state
        reason = str(exc).splitlines()[0][:120] if str(exc) else exc.__class__.__name__
        raise ScdError(f"{path}: cannot be read as a pickled annotation file ({reason})") from None
