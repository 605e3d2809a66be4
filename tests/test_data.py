"""The data room: readers on fixtures in the real formats, and the checksummed store (S3)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from _data_fixtures import (
    PTB_TRAIN,
    Mirror,
    cifar_batch_bytes,
    flip_byte,
    truncate,
    write_csv,
    write_idx,
    write_xlsx,
)

from adamqlr.data import (
    REGISTRY,
    ChecksumError,
    DataStore,
    FileSpec,
    FormatError,
    MissingDataError,
    MissingDigestError,
    file_digest,
)
from adamqlr.data.readers import (
    build_vocabulary,
    read_cifar10_jpeg,
    read_cifar10_python,
    read_csv_table,
    read_idx,
    read_permutation,
    read_ptb_tokens,
    read_svhn_mat,
    read_whitespace_table,
    read_xlsx_table,
    restricted_unpickle,
)

MIRROR = os.environ.get("ADAMQLR_DATA")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: with two pytest workers on two cores, more threads only spin-wait."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Mirror:
    return Mirror(tmp_path_factory.mktemp("data") / "mirror")


# ------------------------------------------------------------------------------- readers
def test_idx_round_trip_and_damage(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "i.gz", images)
    write_idx(tmp_path / "l.gz", images[:, 0, 0])
    np.testing.assert_array_equal(read_idx(tmp_path / "i.gz"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "l.gz"), images[:, 0, 0])
    truncate(tmp_path / "i.gz")
    with pytest.raises(FormatError, match="i.gz"):
        read_idx(tmp_path / "i.gz")
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(FormatError, match="magic"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(FormatError, match="needs 5"):
        read_idx(tmp_path / "short.idx")


def test_whitespace_table_and_permutation(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("1 2.5\t3\n4 5 6\n\n")
    np.testing.assert_array_equal(
        read_whitespace_table(tmp_path / "t.txt"), [[1, 2.5, 3], [4, 5, 6]]
    )
    (tmp_path / "ragged.txt").write_text("1 2 3\n4 5\n")
    with pytest.raises(FormatError, match="ragged.txt:2"):
        read_whitespace_table(tmp_path / "ragged.txt")
    (tmp_path / "p.txt").write_text("2\n0\n1\n")
    np.testing.assert_array_equal(read_permutation(tmp_path / "p.txt", 3), [2, 0, 1])
    with pytest.raises(FormatError, match="expected 4"):
        read_permutation(tmp_path / "p.txt", 4)
    (tmp_path / "dup.txt").write_text("0\n0\n1\n")
    with pytest.raises(FormatError, match="not a permutation"):
        read_permutation(tmp_path / "dup.txt", 3)


def test_csv_and_xlsx_tables(tmp_path: Path) -> None:
    header = ["X1", "X2", "Y1"]
    table = np.array([[0.98, 514.5, 15.55], [0.62, 808.5, 16.64]])
    write_csv(tmp_path / "t.csv", header, table)
    write_xlsx(tmp_path / "t.xlsx", header, table)
    for reader, name in ((read_csv_table, "t.csv"), (read_xlsx_table, "t.xlsx")):
        got_header, got = reader(tmp_path / name)
        assert got_header == header
        np.testing.assert_allclose(got, table)
    (tmp_path / "bad.csv").write_text("a,b\n1,x\n")
    with pytest.raises(FormatError, match="bad.csv:2"):
        read_csv_table(tmp_path / "bad.csv")
    (tmp_path / "bad.xlsx").write_bytes(b"PK\x03\x04 not a workbook")
    with pytest.raises(FormatError, match="bad.xlsx"):
        read_xlsx_table(tmp_path / "bad.xlsx")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_restricted_unpickler_loads_arrays_and_refuses_code(tmp_path: Path) -> None:
    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3, 32, 32)
    batch = restricted_unpickle(cifar_batch_bytes(images, np.array([3, 7]), "b"))
    np.testing.assert_array_equal(batch["data"].reshape(2, 3, 32, 32), images)
    assert batch["labels"] == [3, 7]
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Evil(live), protocol=2))  # the payload is real: plain pickle runs it
    assert live.exists()
    marker = tmp_path / "pwned"
    for payload in (
        pickle.dumps(_Evil(marker), protocol=2),
        pickle.dumps({"data": _Evil(marker)}, protocol=4),
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.",
    ):
        with pytest.raises(FormatError, match="refusing to load global"):
            restricted_unpickle(payload, source="evil")
    assert not marker.exists()
    with pytest.raises(FormatError, match="not a valid pickle"):
        restricted_unpickle(b"\x80\x02}q\x00", source="cut")


def test_cifar_python_reader(mirror: Mirror) -> None:
    out = read_cifar10_python(mirror.root / "cifar-10" / "cifar-10-python.tar.gz")
    assert sorted(out) == sorted(mirror.raw["cifar-10"])
    for name, (images, labels) in mirror.raw["cifar-10"].items():
        np.testing.assert_array_equal(out[name][0], images)
        np.testing.assert_array_equal(out[name][1], labels)
        assert out[name][0].dtype == np.uint8 and out[name][1].dtype == np.int64


def test_cifar_jpeg_reader(mirror: Mirror) -> None:
    path = mirror.root / "cifar10-jpeg" / "cifar10_jpg.tar.gz"
    out = read_cifar10_jpeg(path)
    images, labels, numbers = out["train"]
    assert images.shape == (60, 3, 32, 32) and images.dtype == np.uint8
    # sorted by (number, label): classes interleaved
    np.testing.assert_array_equal(numbers, np.repeat(np.arange(6), 10))
    np.testing.assert_array_equal(labels, np.tile(np.arange(10), 6))
    for i in (0, 17, 59):
        original = mirror.raw["cifar10-jpeg"][("train", int(labels[i]), int(numbers[i]))]
        assert np.abs(images[i].astype(float) - original).mean() < 3  # JPEG quality 95
    assert len(out["test"][0]) == 20
    only = read_cifar10_jpeg(path, keep=lambda split, label, number: split == "test" and label == 3)
    assert len(only["train"][0]) == 0 and only["test"][1].tolist() == [3, 3]


def test_svhn_reader(mirror: Mirror) -> None:
    images, labels = mirror.raw["svhn"]["train"]
    got_images, got_labels = read_svhn_mat(mirror.root / "svhn" / "train_32x32.mat")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, np.where(labels == 10, 0, labels))
    assert got_labels[:2].tolist() == [0, 0]


def test_svhn_reader_rejects_wrong_layout(tmp_path: Path) -> None:
    from scipy.io import savemat

    savemat(tmp_path / "x.mat", {"X": np.zeros((3, 32, 32, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(FormatError, match="layout"):
        read_svhn_mat(tmp_path / "x.mat")
    (tmp_path / "junk.mat").write_bytes(b"MATLAB junk")
    with pytest.raises(FormatError, match="junk.mat"):
        read_svhn_mat(tmp_path / "junk.mat")


def test_ptb_tokens_and_vocabulary(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text(" a b <unk> \n c a \n")
    tokens = read_ptb_tokens(tmp_path / "p.txt")
    assert tokens == ["a", "b", "<unk>", "<eos>", "c", "a", "<eos>"]
    assert build_vocabulary(tokens) == {"a": 0, "b": 1, "<unk>": 2, "<eos>": 3, "c": 4}
    assert len(PTB_TRAIN.split()) > 0


# --------------------------------------------------------------------------------- store
def test_store_reads_verified_mirror_then_cache(mirror: Mirror, tmp_path: Path) -> None:
    key = "penn-treebank/ptb.valid.txt"
    path, source, sha = mirror.store().locate(key)
    assert source == "mirror" and sha == mirror.registry[key].sha256 and path.is_file()
    cache = tmp_path / "cache"
    (cache / "penn-treebank").mkdir(parents=True)
    (cache / key).write_bytes(path.read_bytes())
    path2, source2, _ = mirror.store(mirror=None, cache=cache).locate(key)
    assert source2 == "cache" and path2 == cache / key


def test_missing_file_names_file_checksum_and_source(mirror: Mirror, tmp_path: Path) -> None:
    spec = FileSpec("svhn/extra_32x32.mat", "a" * 64, url="http://example.org/extra_32x32.mat")
    store = mirror.store(registry={spec.key: spec}, cache=tmp_path)
    with pytest.raises(MissingDataError) as err:
        store.locate(spec.key)
    msg = str(err.value)
    assert "svhn/extra_32x32.mat" in msg and "a" * 64 in msg and "http://example.org" in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(ValueError, match="unknown data file"):
        store.locate("svhn/nothing.mat")


@pytest.mark.parametrize("damage", [flip_byte, truncate])
def test_corrupt_file_is_refused_with_expected_checksum(
    mirror: Mirror, tmp_path: Path, damage
) -> None:
    key = "fashion-mnist/t10k-labels-idx1-ubyte.gz"
    root = tmp_path / "m"
    (root / "fashion-mnist").mkdir(parents=True)
    target = root / key
    target.write_bytes((mirror.root / key).read_bytes())
    damage(target)
    with pytest.raises(ChecksumError) as err:
        mirror.store(mirror=root).locate(key)
    msg = str(err.value)
    assert str(target) in msg and mirror.registry[key].sha256 in msg
    assert file_digest(target) in msg


def test_file_without_digest_is_never_used(mirror: Mirror) -> None:
    key = "penn-treebank/ptb.test.txt"
    registry = dict(mirror.registry)
    registry[key] = FileSpec(key, None)
    with pytest.raises(MissingDigestError, match=key):
        mirror.store(registry=registry).locate(key)


def test_md5_only_files_and_user_digests(mirror: Mirror, tmp_path: Path) -> None:
    key = "svhn/test_32x32.mat"
    path = mirror.root / key
    md5 = file_digest(path, "md5")
    registry = {key: FileSpec(key, None, md5=md5, url=None)}
    assert mirror.store(registry=registry).locate(key)[2] == file_digest(path)
    wrong = {key: FileSpec(key, None, md5="0" * 32)}
    with pytest.raises(ChecksumError, match="expected MD5 0{32}"):
        mirror.store(registry=wrong).locate(key)
    with pytest.raises(MissingDigestError, match="REQUIRE_SHA256"):
        mirror.store(registry=registry, require_sha256=True).locate(key)
    digests = tmp_path / "SHA256SUMS"
    digests.write_text(f"{file_digest(path)}  ./{key}\n")
    store = mirror.store(registry=registry, require_sha256=True, digests_file=digests)
    assert store.spec(key).sha256 == file_digest(path)
    assert store.locate(key)[1] == "mirror"
    digests.write_text(f"{'1' * 64}  {key}\n")
    store = mirror.store(registry=registry, digests_file=digests)
    with pytest.raises(ChecksumError, match="1{64}"):
        store.locate(key)
    # a digests file may add a SHA-256 but never contradict the registry
    other = "penn-treebank/ptb.test.txt"
    digests.write_text(f"{'2' * 64}  {other}\n")
    with pytest.raises(ValueError, match="contradicts"):
        mirror.store(digests_file=digests)
    digests.write_text("not a digest line\n")
    with pytest.raises(ValueError, match="SHA256SUMS:1"):
        mirror.store(digests_file=digests)


def test_filespec_validation() -> None:
    with pytest.raises(ValueError, match="dataset"):
        FileSpec("no-folder.txt", "a" * 64)
    with pytest.raises(ValueError, match="sha256"):
        FileSpec("a/b.txt", "ABC")
    with pytest.raises(ValueError, match="md5"):
        FileSpec("a/b.txt", None, md5="xyz")


@pytest.fixture()
def http_server(mirror: Mirror):
    handler = functools.partial(_QuietHandler, directory=str(mirror.root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_download_verifies_and_caches(mirror: Mirror, tmp_path: Path, http_server: str) -> None:
    pytest.importorskip("pooch")
    key = "penn-treebank/ptb.train.txt"
    good = FileSpec(key, mirror.registry[key].sha256, url=f"{http_server}/{key}")
    cache = tmp_path / "cache"
    store = mirror.store(registry={key: good}, mirror=None, cache=cache, download=True)
    path, source, sha = store.locate(key)
    assert source == "download" and path == cache / key and sha == good.sha256
    assert store.locate(key)[1] == "cache"
    # the server's file no longer matches: the download is refused and nothing is left behind
    bad = FileSpec("penn-treebank/ptb.valid.txt", "3" * 64, url=f"{http_server}/{key}")
    store = mirror.store(registry={bad.key: bad}, mirror=None, cache=cache, download=True)
    with pytest.raises(MissingDataError, match="3{64}"):
        store.locate(bad.key)
    assert sorted(p.name for p in (cache / "penn-treebank").iterdir()) == ["ptb.train.txt"]


def test_reading_a_mirror_does_not_import_pooch(mirror: Mirror) -> None:
    key = "penn-treebank/ptb.test.txt"
    code = (
        "import sys\n"
        "from adamqlr.data import DataStore, FileSpec\n"
        f"spec = FileSpec({key!r}, {mirror.registry[key].sha256!r})\n"
        f"s = DataStore({{spec.key: spec}}, mirror={str(mirror.root)!r}, digests_file=None)\n"
        "s.locate(spec.key)\n"
        "assert 'pooch' not in sys.modules, 'pooch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------------ the registry
def test_every_registry_entry_has_a_digest_and_a_way_to_obtain_it() -> None:
    for key, spec in REGISTRY.items():
        assert spec.key == key
        assert spec.sha256 or spec.md5, key
        assert spec.url or spec.how_to_obtain, key
    md5_only = sorted(k for k, s in REGISTRY.items() if s.sha256 is None)
    assert md5_only == [
        "cifar-10/cifar-10-python.tar.gz",
        "svhn/test_32x32.mat",
        "svhn/train_32x32.mat",
    ]


@pytest.mark.skipif(
    not (MIRROR and (Path(MIRROR) / "SHA256SUMS").is_file()), reason="no offline mirror"
)
def test_registry_matches_the_mirror_sha256sums() -> None:
    listed = {}
    for line in (Path(MIRROR) / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.removeprefix("./")] = digest
    for key, digest in listed.items():
        assert REGISTRY[key].sha256 == digest, key
    store = DataStore(download=False, digests_file=None)
    for key in listed:
        if key.startswith(("fashion-mnist/", "penn-treebank/")):
            # these also carry the publishers' MD5s: both digests must match the mirror
            assert store.locate(key)[1] == "mirror"
            assert (
                REGISTRY[key].md5
                == hashlib.md5((Path(MIRROR) / key).read_bytes(), usedforsecurity=False).hexdigest()
            )
