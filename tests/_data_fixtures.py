"""Small data files in the real formats, a matching registry, and tiny versions of the tasks.

Every writer produces the same layout as the real file (IDX gzip, whitespace text plus a
permutation file, CSV, XLSX, CIFAR-10 python pickles inside a tar.gz, a JPEG tar.gz, SVHN ``.mat``,
PTB text). :func:`build_mirror` writes all of them under one folder as a mirror, and returns a
registry with their SHA-256s, so that the tasks read them through the same
:class:`~adamqlr.data.DataStore` path as real data.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from adamqlr.data import DataStore, FileSpec, file_digest
from adamqlr.data.readers import CIFAR10_CLASSES
from adamqlr.tasks.base import TaskProfile
from adamqlr.tasks.fashion_mnist import FashionMNIST
from adamqlr.tasks.images import CIFAR10, CIFAR10JPEG, SVHN
from adamqlr.tasks.penn_treebank import PennTreebank
from adamqlr.tasks.uci import UCIEnergy, UCIProtein


# ------------------------------------------------------------------------------------ writers
def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed IDX file."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_table(path: Path, table: np.ndarray) -> None:
    """Whitespace-separated table with a trailing blank line, like the UCI data.txt files."""
    lines = ["\t".join(f"{v:.6f}" for v in row) for row in table]
    path.write_text("\n".join(lines) + "\n\n")


def write_csv(path: Path, header: list[str], table: np.ndarray) -> None:
    rows = [",".join(header)] + [",".join(f"{v:.6f}" for v in row) for row in table]
    path.write_text("\n".join(rows) + "\n")


def write_xlsx(path: Path, header: list[str], table: np.ndarray) -> None:
    """A one-sheet workbook with a header, the rows, and two empty trailing rows."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(header)
    for row in table:
        sheet.append([float(round(v, 6)) for v in row])
    sheet.append([None] * len(header))
    sheet.append([None] * len(header))
    book.save(path)


def cifar_batch_bytes(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    """Pickle a CIFAR-10 batch dict as the official files do (protocol 2, bytes keys)."""
    # Python 2 wrote str keys, which load as str under encoding="latin1".
    batch = {
        "batch_label": name,
        "labels": [int(v) for v in labels],
        "data": images.reshape(len(images), -1).astype(np.uint8),
        "filenames": [f"img_{i}.png" for i in range(len(images))],
    }
    return pickle.dumps(batch, protocol=2)


def write_cifar_python(path: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, (images, labels) in batches.items():
            data = cifar_batch_bytes(images, labels, name)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        meta = pickle.dumps({"label_names": list(CIFAR10_CLASSES)}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))


def smooth_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth uint8 NCHW images (JPEG keeps them within a few grey levels)."""
    yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    out = np.empty((n, 3, 32, 32), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(-2, 2, 3)
        for ch in range(3):
            base = 128 + 60 * np.sin(a * yy / 16 + b * xx / 16 + c + ch)
            out[i, ch] = np.clip(base, 0, 255).astype(np.uint8)
    return out


def write_cifar_jpeg(
    path: Path, per_class: dict[str, int], rng: np.random.Generator
) -> dict[tuple[str, int, int], np.ndarray]:
    """Write ``train/<class>/NNNN.jpg`` and ``test/...``; return the source images by key."""
    from PIL import Image

    originals = {}
    with tarfile.open(path, "w:gz") as tar:
        readme = b"# CIFAR-10-images\n"
        info = tarfile.TarInfo("README.md")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
        for split, count in per_class.items():
            for label, cls in enumerate(CIFAR10_CLASSES):
                images = smooth_images(count, rng)
                for number in range(count):
                    buf = io.BytesIO()
                    Image.fromarray(images[number].transpose(1, 2, 0)).save(
                        buf, format="JPEG", quality=95
                    )
                    data = buf.getvalue()
                    info = tarfile.TarInfo(f"{split}/{cls}/{number:04d}.jpg")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                    originals[(split, label, number)] = images[number]
    return originals


def write_svhn(path: Path, images: np.ndarray, labels_1_to_10: np.ndarray) -> None:
    from scipy.io import savemat

    savemat(
        path,
        {"X": images.transpose(2, 3, 1, 0), "y": labels_1_to_10.reshape(-1, 1).astype(np.uint8)},
    )


PTB_TRAIN = (
    " the cat sat on the mat \n a dog ran to the <unk> \n the dog sat on a cat \n N cats ran \n"
) * 6
PTB_VALID = " the cat ran to a dog \n the mat sat \n" * 3
PTB_TEST = " a cat sat on the dog \n the <unk> ran \n" * 3


# ------------------------------------------------------------------------------ tiny tasks
def _profiles(batch: int, **smoke: int) -> dict[str, TaskProfile]:
    small = TaskProfile(batch_size=batch, epochs=1, eval_every=1, **smoke)  # type: ignore[arg-type]
    full = TaskProfile(batch_size=batch, epochs=2, model=small.model)
    return {"smoke": small, "quick": full, "paper": full}


class TinyEnergy(UCIEnergy):
    n_rows, n_train, n_val, n_test = 30, 18, 7, 5
    PROFILES = _profiles(8, train_size=12, val_size=4, test_size=3)


class TinyProtein(UCIProtein):
    n_rows, n_train, n_val, n_test = 24, 14, 6, 4
    PROFILES = _profiles(8)


class TinyFashionMNIST(FashionMNIST):
    n_train, n_val = 40, 10
    PROFILES = _profiles(10, train_size=20, val_size=5, test_size=6)


class TinySVHN(SVHN):
    n_train, n_val, n_test = 20, 6, 8
    PROFILES = _profiles(8, train_size=12, val_size=3, test_size=4)


class TinyCIFAR10(CIFAR10):
    n_train, n_val, n_test = 16, 4, 6
    PROFILES = _profiles(8, train_size=8, val_size=2, test_size=3)


class TinyCIFAR10JPEG(CIFAR10JPEG):
    n_train, n_val, n_test = 40, 20, 20
    PROFILES = _profiles(10, train_size=20, val_size=10, test_size=10)


# ----------------------------------------------------------------------------- the mirror
class Mirror:
    """All fixture files under ``root`` plus the data each was written from."""

    def __init__(self, root: Path, seed: int = 0) -> None:
        self.root = root
        rng = np.random.default_rng(seed)
        self.raw: dict[str, object] = {}

        # UCI Energy: 8 inputs + target; unique targets identify rows.
        for task, k, extra in ((TinyEnergy, 8, ("X", "Y1", "Y2")), (TinyProtein, 9, None)):
            folder = root / task.dataset
            folder.mkdir(parents=True)
            n = task.n_rows
            x = rng.normal(size=(n, k)) * rng.uniform(0.5, 20, k) + rng.uniform(-5, 50, k)
            y = np.arange(n) * 1.5 + 3.0 + rng.uniform(0, 0.1, n)
            table = np.round(np.column_stack([x, y]), 6)
            perm = rng.permutation(n)
            write_table(folder / "data.txt", table)
            (folder / "permutation_indices.txt").write_text("\n".join(map(str, perm)) + "\n")
            if extra is not None:
                header = [f"X{i}" for i in range(1, 9)] + ["Y1", "Y2"]
                full = np.column_stack([table, rng.uniform(10, 40, n)])
                write_xlsx(folder / "ENB2012_data.xlsx", header, full)
                write_csv(folder / "energy_efficiency.csv", header, full)
            else:
                header = ["RMSD"] + [f"F{i}" for i in range(1, 10)]
                write_csv(
                    folder / "CASP.csv", header, np.column_stack([table[:, -1], table[:, :-1]])
                )
            self.raw[task.dataset] = (table, perm)

        # Fashion-MNIST: pixel 0 of image i is i, so the file order can be recovered.
        folder = root / "fashion-mnist"
        folder.mkdir()
        n_tv = TinyFashionMNIST.n_train + TinyFashionMNIST.n_val
        train = rng.integers(0, 256, (n_tv, 28, 28), dtype=np.uint8)
        train[:, 0, 0] = np.arange(n_tv)
        test = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n_tv, dtype=np.uint8)
        test_labels = rng.integers(0, 10, 12, dtype=np.uint8)
        write_idx(folder / "train-images-idx3-ubyte.gz", train)
        write_idx(folder / "train-labels-idx1-ubyte.gz", labels)
        write_idx(folder / "t10k-images-idx3-ubyte.gz", test)
        write_idx(folder / "t10k-labels-idx1-ubyte.gz", test_labels)
        self.raw["fashion-mnist"] = (train, labels, test, test_labels)

        # CIFAR-10 official python batches: 5 training batches + test.
        folder = root / "cifar-10"
        folder.mkdir()
        per = (TinyCIFAR10.n_train + TinyCIFAR10.n_val) // 5
        batches = {}
        for i in range(1, 6):
            batches[f"data_batch_{i}"] = (
                rng.integers(0, 256, (per, 3, 32, 32), dtype=np.uint8),
                rng.integers(0, 10, per),
            )
        batches["test_batch"] = (
            rng.integers(0, 256, (TinyCIFAR10.n_test, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, TinyCIFAR10.n_test),
        )
        write_cifar_python(folder / "cifar-10-python.tar.gz", batches)
        self.raw["cifar-10"] = batches

        # CIFAR-10 JPEG stand-in: 6 training and 2 test images per class.
        folder = root / "cifar10-jpeg"
        folder.mkdir()
        self.raw["cifar10-jpeg"] = write_cifar_jpeg(
            folder / "cifar10_jpg.tar.gz", {"train": 6, "test": 2}, rng
        )

        # SVHN: labels 1..10 (10 = digit 0).
        folder = root / "svhn"
        folder.mkdir()
        svhn = {}
        for name, n in (("train", TinySVHN.n_train + TinySVHN.n_val), ("test", TinySVHN.n_test)):
            images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
            labels = rng.integers(1, 11, n)
            labels[:2] = 10
            write_svhn(folder / f"{name}_32x32.mat", images, labels)
            svhn[name] = (images, labels)
        self.raw["svhn"] = svhn

        # Penn Treebank.
        folder = root / "penn-treebank"
        folder.mkdir()
        for name, text in (("train", PTB_TRAIN), ("valid", PTB_VALID), ("test", PTB_TEST)):
            (folder / f"ptb.{name}.txt").write_text(text)

        self.registry = {
            f"{p.parent.name}/{p.name}": FileSpec(
                f"{p.parent.name}/{p.name}", file_digest(p), url=None, how_to_obtain="fixture"
            )
            for p in sorted(root.glob("*/*"))
        }

    def store(self, **kwargs: object) -> DataStore:
        """A store over this mirror (no downloads, no digests file, a cache inside ``root``)."""
        kwargs.setdefault("registry", self.registry)
        kwargs.setdefault("mirror", self.root)
        kwargs.setdefault("cache", self.root.parent / "cache")
        kwargs.setdefault("download", False)
        kwargs.setdefault("digests_file", None)
        kwargs.setdefault("require_sha256", False)
        return DataStore(**kwargs)  # type: ignore[arg-type]


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Flip every bit of one byte (the middle byte by default)."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class TinyPTB(PennTreebank):
    PROFILES = {
        name: TaskProfile(
            batch_size=4,
            epochs=1,
            eval_every=1,
            train_size=size,
            val_size=3,
            test_size=3,
            model="gpt2-small-cpu",
        )
        for name, size in (("smoke", 8), ("quick", 12), ("paper", None))
    }


def tiny_ptb(store: DataStore) -> TinyPTB:
    return TinyPTB(store=store, vocab_size=16, seq_len=5)
