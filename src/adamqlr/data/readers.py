"""Readers for the file formats of the paper's datasets, returning numpy arrays.

Each reader checks the structure it relies on and raises :class:`FormatError` (a ``ValueError``)
naming the file when the contents do not have it. Pickled data (the official CIFAR-10 batches) is
read with :func:`restricted_unpickle`, which only rebuilds numpy arrays and plain Python values, so
a downloaded file can never run code. Optional dependencies (openpyxl, Pillow, scipy) are imported
inside the reader that needs them.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "CIFAR10_CLASSES",
    "FormatError",
    "build_vocabulary",
    "read_cifar10_jpeg",
    "read_cifar10_python",
    "read_csv_table",
    "read_idx",
    "read_permutation",
    "read_ptb_tokens",
    "read_svhn_mat",
    "read_whitespace_table",
    "read_xlsx_table",
    "restricted_unpickle",
]

PathLike = str | os.PathLike[str]

#: CIFAR-10 class names in label order (label ``k`` is ``CIFAR10_CLASSES[k]``).
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class FormatError(ValueError):
    """A data file does not have the structure its format requires."""


# --------------------------------------------------------------------------------------- idx
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (MNIST/Fashion-MNIST format), gzip-compressed if the name ends in ``.gz``.

    Args:
        path: The file.

    Returns:
        The array with the shape stored in the header, in native byte order.

    Raises:
        FormatError: If the magic number, type code or length is wrong.
    """
    path = Path(path)
    opener: Callable[..., BinaryIO] = gzip.open if path.suffix == ".gz" else open  # type: ignore[assignment]
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise FormatError(f"{path}: cannot read as IDX ({type(err).__name__}: {err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise FormatError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES or ndim == 0:
        raise FormatError(f"{path}: unsupported IDX type code 0x{code:02x} or ndim {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FormatError(f"{path}: IDX header truncated")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise FormatError(
            f"{path}: IDX body has {len(raw) - header} bytes, header {shape} needs {expected}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


# ------------------------------------------------------------------------------ text tables
def read_whitespace_table(path: PathLike, columns: int | None = None) -> np.ndarray:
    """Read a whitespace-separated numeric table (the UCI ``data.txt`` files).

    Args:
        path: The file; blank lines are ignored.
        columns: Required number of columns (``None``: any, but the same on every row).

    Returns:
        A float64 array of shape ``(rows, columns)``.

    Raises:
        FormatError: If a value is not a number or the rows are ragged.
    """
    rows: list[list[float]] = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                rows.append([float(x) for x in fields])
            except ValueError as err:
                raise FormatError(f"{path}:{lineno}: not a number in {line.strip()!r}") from err
            width = columns if columns is not None else len(rows[0])
            if len(fields) != width:
                raise FormatError(f"{path}:{lineno}: {len(fields)} columns, expected {width}")
    if not rows:
        raise FormatError(f"{path}: no data rows")
    return np.asarray(rows, dtype=np.float64)


def read_permutation(path: PathLike, n: int) -> np.ndarray:
    """Read a row order: one integer per line, a permutation of ``0..n-1``.

    Args:
        path: The file.
        n: The number of rows it must permute.

    Returns:
        An int64 array of length ``n``.

    Raises:
        FormatError: If it is not a permutation of ``0..n-1``.
    """
    table = read_whitespace_table(path, columns=1)[:, 0]
    perm = table.astype(np.int64)
    if not np.array_equal(perm, table) or len(perm) != n:
        raise FormatError(f"{path}: expected {n} integer row indices, got {len(perm)} values")
    if not np.array_equal(np.sort(perm), np.arange(n)):
        raise FormatError(f"{path}: not a permutation of 0..{n - 1}")
    return perm


def read_csv_table(path: PathLike) -> tuple[list[str], np.ndarray]:
    """Read a comma-separated numeric table with one header row (the UCI CSV originals).

    Returns:
        ``(column names, float64 array of shape (rows, columns))``; blank lines are ignored.

    Raises:
        FormatError: If a value is not a number or the rows are ragged.
    """
    with open(path, newline="") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    if len(lines) < 2:
        raise FormatError(f"{path}: expected a header and at least one row")
    header = [h.strip() for h in lines[0].split(",")]
    rows = []
    for lineno, line in enumerate(lines[1:], 2):
        fields = line.split(",")
        if len(fields) != len(header):
            raise FormatError(f"{path}:{lineno}: {len(fields)} fields, header has {len(header)}")
        try:
            rows.append([float(x) for x in fields])
        except ValueError as err:
            raise FormatError(f"{path}:{lineno}: not a number in {line!r}") from err
    return header, np.asarray(rows, dtype=np.float64)


def read_xlsx_table(path: PathLike) -> tuple[list[str], np.ndarray]:
    """Read the first worksheet of an ``.xlsx`` file: a header row, then numbers.

    Empty trailing rows and columns (common in the UCI spreadsheets) are dropped. Needs openpyxl.

    Returns:
        ``(column names, float64 array of shape (rows, columns))``.

    Raises:
        FormatError: If the sheet is not a header plus a rectangle of numbers.
    """
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises several types for a damaged zip
        raise FormatError(f"{path}: cannot read as xlsx ({type(err).__name__}: {err})") from err
    try:
        sheet = book.worksheets[0]
        cells = [list(r) for r in sheet.iter_rows(values_only=True)]
    finally:
        book.close()
    cells = [r for r in cells if any(v is not None for v in r)]
    if len(cells) < 2:
        raise FormatError(f"{path}: expected a header and at least one row")
    header = [str(h).strip() for h in cells[0] if h is not None]
    width = len(header)
    rows = []
    for i, r in enumerate(cells[1:], 2):
        values = r[:width]
        if any(v is None for v in values) or any(v is not None for v in r[width:]):
            raise FormatError(f"{path}: row {i} does not match the {width} header columns")
        try:
            rows.append([float(v) for v in values])
        except (TypeError, ValueError) as err:
            raise FormatError(f"{path}: row {i} holds a non-number: {values!r}") from err
    return header, np.asarray(rows, dtype=np.float64)


# -------------------------------------------------------------------------- safe unpickling
def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    # Python 3 writes bytes under protocol 2 as ``_codecs.encode(text, "latin1")``.
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Encode ``text`` as latin1: the one use of ``_codecs.encode`` a protocol-2 pickle needs."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays, dtypes and plain Python containers and scalars."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays and plain values "
                "may appear in a data file"
            ) from None


def restricted_unpickle(data: bytes | BinaryIO, *, source: str = "<bytes>") -> Any:
    """Unpickle data that may contain only numpy arrays and plain Python values.

    The CIFAR-10 python batches were pickled by Python 2; they are decoded with ``latin1`` as
    numpy recommends. Any other global (a class, a function such as ``os.system``) is refused, so
    loading a tampered file cannot run code.

    Args:
        data: The pickle bytes or a binary file object.
        source: A name for error messages.

    Returns:
        The unpickled object.

    Raises:
        FormatError: If the data is not a pickle or refers to a forbidden global.
    """
    stream = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    try:
        return _RestrictedUnpickler(stream, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise FormatError(f"{source}: {err}") from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise FormatError(f"{source}: not a valid pickle ({type(err).__name__}: {err})") from err


# ---------------------------------------------------------------------------------- CIFAR-10
_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def read_cifar10_python(path: PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the official ``cifar-10-python.tar.gz`` without extracting it.

    Args:
        path: The tarball (members ``cifar-10-batches-py/data_batch_1`` ... ``test_batch``).

    Returns:
        ``{batch name: (images uint8 (N, 3, 32, 32), labels int64 (N,))}`` for the five training
        batches and ``"test_batch"``.

    Raises:
        FormatError: If a batch is missing or malformed.
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in _CIFAR_BATCHES:
                if name not in members:
                    raise FormatError(f"{path}: member {name} missing")
                f = tar.extractfile(members[name])
                assert f is not None
                batch = restricted_unpickle(f.read(), source=f"{path}:{name}")
                out[name] = _cifar_batch_arrays(batch, f"{path}:{name}")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise FormatError(f"{path}: cannot read the tarball ({type(err).__name__}: {err})") from err
    return out


def _cifar_batch_arrays(batch: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(batch, dict):
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise FormatError(f"{source}: expected a dict with 'data' and 'labels'")
    data = batch["data"]
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise FormatError(f"{source}: 'data' must be a 2-D uint8 array")
    if data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise FormatError(f"{source}: data {data.shape} and {labels.shape[0]} labels disagree")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise FormatError(f"{source}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32).copy(), labels


_JPEG_NAME = re.compile(r"^(?:.*/)?(train|test)/([a-z]+)/(\d+)\.jpe?g$")


def read_cifar10_jpeg(
    path: PathLike, keep: Callable[[str, int, int], bool] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Read the JPEG re-encoding of CIFAR-10 (``train/<class>/NNNN.jpg``, ``test/...``).

    Images are decoded with Pillow to RGB. This is a stand-in for the official files: JPEG
    smoothing changes pixel values, so results on it are labelled "CIFAR-10 (JPEG re-encoding)".

    Args:
        path: The ``.tar.gz`` file.
        keep: Optional ``keep(split, label, number) -> bool``; images for which it returns False
            are not decoded (decoding all 60,000 takes several seconds).

    Returns:
        ``{"train": (images, labels, numbers), "test": ...}``: uint8 images ``(N, 3, 32, 32)``,
        int64 labels and int64 file numbers, sorted by ``(number, label)``.

    Raises:
        FormatError: If a member name, class or image is not as expected.
    """
    from PIL import Image

    found: dict[str, list[tuple[int, int, np.ndarray]]] = {"train": [], "test": []}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if not member.isfile() or not member.name.lower().endswith((".jpg", ".jpeg")):
                    continue
                m = _JPEG_NAME.match(member.name)
                if m is None:
                    raise FormatError(f"{path}: unexpected member {member.name}")
                split, cls, number = m.group(1), m.group(2), int(m.group(3))
                if cls not in CIFAR10_CLASSES:
                    raise FormatError(f"{path}: unknown class folder in {member.name}")
                label = CIFAR10_CLASSES.index(cls)
                if keep is not None and not keep(split, label, number):
                    continue
                f = tar.extractfile(member)
                assert f is not None
                try:
                    with Image.open(io.BytesIO(f.read())) as im:
                        arr = np.asarray(im.convert("RGB"))
                except OSError as err:
                    raise FormatError(f"{path}: cannot decode {member.name}: {err}") from err
                if arr.shape != (32, 32, 3):
                    raise FormatError(f"{path}: {member.name} has shape {arr.shape}")
                found[split].append((number, label, arr.transpose(2, 0, 1)))
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as err:
        raise FormatError(f"{path}: cannot read the tarball ({type(err).__name__}: {err})") from err
    out = {}
    for split, items in found.items():
        items.sort(key=lambda t: (t[0], t[1]))
        images = np.stack([t[2] for t in items]) if items else np.zeros((0, 3, 32, 32), np.uint8)
        out[split] = (
            images,
            np.asarray([t[1] for t in items], dtype=np.int64),
            np.asarray([t[0] for t in items], dtype=np.int64),
        )
    return out


# -------------------------------------------------------------------------------------- SVHN
def read_svhn_mat(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN cropped-digits file (``train_32x32.mat``, ``test_32x32.mat``).

    The file holds ``X`` of shape ``(32, 32, 3, N)`` and ``y`` of shape ``(N, 1)`` with labels
    1..10, where 10 stands for the digit 0. Needs scipy.

    Returns:
        ``(images uint8 (N, 3, 32, 32), labels int64 (N,) in 0..9)`` with 10 mapped to 0.

    Raises:
        FormatError: If the file cannot be read or lacks ``X``/``y`` of those shapes.
    """
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as err:  # scipy raises ValueError/TypeError/OSError for damaged files
        raise FormatError(
            f"{path}: cannot read as a .mat file ({type(err).__name__}: {err})"
        ) from err
    if "X" not in mat or "y" not in mat:
        raise FormatError(f"{path}: expected variables X and y, found {sorted(mat)}")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise FormatError(f"{path}: X {x.shape} and y {mat['y'].shape} are not SVHN's layout")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise FormatError(f"{path}: labels outside 1..10")
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1).astype(np.uint8)), labels


# ------------------------------------------------------------------------------ Penn Treebank
EOS = "<eos>"


def read_ptb_tokens(path: PathLike) -> list[str]:
    """Read a Penn Treebank text file as words, with ``<eos>`` at the end of every line.

    Returns:
        The token stream (Mikolov's convention, as in the official splits' token counts).

    Raises:
        FormatError: If the file is not UTF-8 text.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise FormatError(f"{path}: not UTF-8 text ({err})") from err
    tokens: list[str] = []
    for line in text.splitlines():
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


def build_vocabulary(tokens: Iterable[str]) -> dict[str, int]:
    """Map each distinct token to an id in order of first appearance.

    On the real training file this gives ``<eos>`` id 24 and ``<unk>`` id 26, the ids the
    official code passes to GPT-2 as its special tokens.
    """
    vocab: dict[str, int] = {}
    for t in tokens:
        if t not in vocab:
            vocab[t] = len(vocab)
    return vocab
