"""Safe ``.npy`` / ``.npz`` reading: numeric arrays only, header checked against the file size.

``np.load`` on a file of unknown origin has two traps: a text file or a pickled array ends in
numpy's advice to pass ``allow_pickle=True`` (which would run code from the file), and a header
claiming a huge shape makes numpy allocate the claimed size before it notices the data is not
there. :func:`load_npy` / :func:`load_npz` read the header first (``numpy.lib.format``), refuse
object dtypes, check ``shape x itemsize`` against the bytes present, and only then load. Every
problem is one :class:`~engine.errors.DataError` line naming the file.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError

_MAGIC = b"\x93NUMPY"


def _read_header(f, where):
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # numpy parses the header dict with a tokenizer: many error types
        raise DataError(where, f"corrupt .npy header ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
                        ) from None
    if dtype.hasobject:
        raise DataError(where, "holds Python objects (pickled data), not a numeric array; it was not loaded "
                        "(loading pickled data could run code)")
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise DataError(where, f"corrupt .npy header (shape {shape!r})")
    return tuple(shape), fortran, dtype


def _check_size(where, shape, dtype, available):
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > available:
        raise DataError(where, f"truncated .npy or corrupt header: shape {shape} of {dtype} needs {need} bytes, "
                        f"only {available} follow the header")
    return need


def load_npy(path) -> np.ndarray:
    """A numeric array from a ``.npy`` file (see the module docstring); DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                raise DataError(path, "not a .npy file (no NumPy magic at the start; is it text or another format?)")
            f.seek(0)
            shape, fortran, dtype = _read_header(f, path)
            _check_size(path, shape, dtype, size - f.tell())
            count = int(np.prod(shape, dtype=object))
            arr = np.fromfile(f, dtype=dtype, count=count) if count else np.zeros(0, dtype)
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read .npy ({type(exc).__name__})") from None
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


def load_npz(path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` archive by name (numeric only, each header checked)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                where = f"{path} [{name}]"
                with z.open(info) as f:
                    if f.read(len(_MAGIC)) != _MAGIC:
                        raise DataError(where, "not a .npy member")
                with z.open(info) as f:
                    shape, fortran, dtype = _read_header(f, where)
                    header_len = f.tell()
                    need = _check_size(where, shape, dtype, info.file_size - header_len)
                    data = f.read(need)
                if len(data) != need:
                    raise DataError(where, "truncated member")
                arr = np.frombuffer(data, dtype=dtype).copy()
                out[name] = arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)
    except DataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise DataError(path, f"not a readable .npz archive (truncated or corrupt: {type(exc).__name__})") from None
    return out
