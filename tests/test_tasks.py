"""The data-backed tasks: splits, preprocessing, batches, augmentation, models, and training.

Everything runs on the fixtures of :mod:`_data_fixtures` (real formats, tiny sizes) through tiny
subclasses of the real task classes; the tests at the end load the real offline mirror when
``ADAMQLR_DATA`` points at one and check the documented sizes.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _data_fixtures import (
    Mirror,
    TinyCIFAR10,
    TinyCIFAR10JPEG,
    TinyEnergy,
    TinyFashionMNIST,
    TinyProtein,
    TinyPTB,
    TinySVHN,
    flip_byte,
    tiny_ptb,
    truncate,
)
from torch.func import functional_call, grad, jvp

from adamqlr import AdamQLR
from adamqlr.data import (
    ChecksumError,
    DataStore,
    FileSpec,
    MissingDataError,
    MissingDigestError,
    file_digest,
)
from adamqlr.losses import SquaredErrorLoss
from adamqlr.tasks import PROFILES, TASKS, Split, get_task
from adamqlr.tasks.images import CIFAR10, ResNet18, SameConv2d, pad_crop_flip
from adamqlr.tasks.penn_treebank import GPT2, GPTConfig, windows
from adamqlr.tasks.uci import UCIEnergy, official_padding_loss

MIRROR = os.environ.get("ADAMQLR_DATA")

FACTORIES = {
    "uci-energy": TinyEnergy,
    "uci-protein": TinyProtein,
    "fashion-mnist": TinyFashionMNIST,
    "svhn": TinySVHN,
    "cifar-10": TinyCIFAR10,
    "cifar-10-jpeg": TinyCIFAR10JPEG,
    "penn-treebank": tiny_ptb,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: with two pytest workers on two cores, more threads only spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Mirror:
    return Mirror(tmp_path_factory.mktemp("tasks") / "mirror", seed=1)


def make(name: str, store: DataStore):
    factory = FACTORIES[name]
    return factory(store=store)


@pytest.fixture(scope="module")
def loaded(mirror: Mirror) -> dict:
    """Every tiny task's ``paper`` and ``smoke`` data, loaded once."""
    store = mirror.store()
    return {
        (name, profile): make(name, store).load_data(profile)
        for name in FACTORIES
        for profile in ("paper", "smoke")
    }


# ---------------------------------------------------------------------- sizes and splits
@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("profile", ["paper", "smoke"])
def test_sizes_dtypes_and_provenance(name: str, profile: str, loaded: dict, mirror: Mirror) -> None:
    task = make(name, mirror.store())
    data = loaded[(name, profile)]
    prof = task.profile(profile)
    if name == "penn-treebank":  # windows of 5 tokens plus one target in each stream
        tokens = data.meta["tokens"]
        full = {"train": (tokens["train"] - 1) // 5, "val": (tokens["valid"] - 1) // 5}
        full["test"] = (tokens["test"] - 1) // 5
    else:
        full = {"train": task.n_train, "val": task.n_val, "test": getattr(task, "n_test", 12)}
    for split, size in (
        ("train", prof.train_size),
        ("val", prof.val_size),
        ("test", prof.test_size),
    ):
        assert len(getattr(data, split)) == (size or full[split]), split
    assert data.meta["sizes"] == {s: len(getattr(data, s)) for s in ("train", "val", "test")}
    assert data.meta["dataset"] == task.title
    for key, sha in data.meta["files"].items():
        assert mirror.registry[key].sha256 == sha
    x, t = data.train.inputs, data.train.targets
    if task.loss == "cross_entropy":
        assert t.dtype == torch.int64
    else:
        assert t.dtype == torch.float32 and t.shape == (len(data.train), 1)
    assert x.dtype == (torch.int64 if name == "penn-treebank" else torch.float32)


def test_uci_permutation_split_order_and_standardisation(loaded: dict, mirror: Mirror) -> None:
    for name, cls in (("uci-energy", TinyEnergy), ("uci-protein", TinyProtein)):
        table, perm = mirror.raw[name]
        data = loaded[(name, "paper")]
        rows = table[perm]
        edges = np.cumsum([0, cls.n_train, cls.n_val, cls.n_test])
        for i, split in enumerate((data.train, data.val, data.test)):
            y = (
                split.targets[:, 0].double().numpy() * data.meta["target_std"]
                + data.meta["target_mean"]
            )
            np.testing.assert_allclose(y, rows[edges[i] : edges[i + 1], -1], rtol=1e-5)
        targets = [
            set(np.round(s.targets[:, 0].numpy(), 4)) for s in (data.train, data.val, data.test)
        ]
        assert not (targets[0] & targets[1] or targets[0] & targets[2] or targets[1] & targets[2])
        for z in (data.train.inputs, data.train.targets):
            torch.testing.assert_close(
                z.double().mean(0), torch.zeros(z.shape[1], dtype=torch.float64), atol=1e-5, rtol=0
            )
            torch.testing.assert_close(
                z.double().std(0, correction=0),
                torch.ones(z.shape[1], dtype=torch.float64),
                atol=1e-5,
                rtol=0,
            )


@pytest.mark.parametrize("source", ["ENB2012_data.xlsx", "energy_efficiency.csv"])
def test_uci_originals_give_the_same_data(source: str, mirror: Mirror, loaded: dict) -> None:
    other = TinyEnergy(store=mirror.store(), source=source).load_data("paper")
    ref = loaded[("uci-energy", "paper")]
    torch.testing.assert_close(other.train.inputs, ref.train.inputs, atol=1e-4, rtol=0)
    torch.testing.assert_close(other.test.targets, ref.test.targets, atol=1e-4, rtol=0)
    assert other.meta["source"] == source and source in " ".join(other.meta["files"])
    with pytest.raises(ValueError, match="unknown source"):
        TinyEnergy(source="CASP.csv")


def test_fashion_mnist_uses_the_last_10k_of_the_training_file(loaded: dict, mirror: Mirror) -> None:
    data = loaded[("fashion-mnist", "paper")]
    train, labels, _, test_labels = mirror.raw["fashion-mnist"]
    n = TinyFashionMNIST.n_train
    assert data.train.targets.tolist() == labels[:n].tolist()
    assert data.val.targets.tolist() == labels[n:].tolist()
    assert data.test.targets.tolist() == test_labels.tolist()
    # pixel 0 of image i is i in the file; per-pixel standardisation keeps the order
    first_pixel = [s.inputs[:, 0] for s in (data.train, data.val)]
    assert torch.all(first_pixel[0][1:] > first_pixel[0][:-1])
    assert first_pixel[1].min() > first_pixel[0].max()
    x = data.train.inputs
    varying = x.std(0) > 0
    torch.testing.assert_close(x.mean(0), torch.zeros(784), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        x[:, varying].std(0, correction=0), torch.ones(int(varying.sum())), atol=1e-4, rtol=0
    )


def _destandardise(split: Split, meta: dict) -> np.ndarray:
    mean = np.asarray(meta["channel_mean"]).reshape(1, 3, 1, 1)
    std = np.asarray(meta["channel_std"]).reshape(1, 3, 1, 1)
    return split.inputs.double().numpy() * std + mean


def test_cifar_official_split_and_channel_standardisation(loaded: dict, mirror: Mirror) -> None:
    data = loaded[("cifar-10", "paper")]
    batches = mirror.raw["cifar-10"]
    x = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    y = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    n = TinyCIFAR10.n_train
    np.testing.assert_allclose(_destandardise(data.train, data.meta), x[:n], atol=1e-3)
    np.testing.assert_allclose(_destandardise(data.val, data.meta), x[n:], atol=1e-3)
    assert data.val.targets.tolist() == batches["data_batch_5"][1][-TinyCIFAR10.n_val :].tolist()
    assert data.train.targets.tolist() == y[:n].tolist()
    np.testing.assert_allclose(
        _destandardise(data.test, data.meta), batches["test_batch"][0], atol=1e-3
    )
    z = data.train.inputs.double()
    torch.testing.assert_close(
        z.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        z.std((0, 2, 3), correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_cifar_jpeg_is_labelled_and_split_by_file_number(loaded: dict) -> None:
    data = loaded[("cifar-10-jpeg", "paper")]
    assert data.meta["dataset"] == "CIFAR-10 (JPEG re-encoding)" and data.meta["stand_in"] is True
    assert data.train.targets.tolist() == list(range(10)) * 4
    assert data.val.targets.tolist() == list(range(10)) * 2
    assert data.test.targets.tolist() == list(range(10)) * 2
    smoke = loaded[("cifar-10-jpeg", "smoke")]  # decodes only the images it needs
    torch.testing.assert_close(smoke.val.targets, data.val.targets[:10])


def test_svhn_labels_and_split(loaded: dict, mirror: Mirror) -> None:
    data = loaded[("svhn", "paper")]
    images, labels = mirror.raw["svhn"]["train"]
    labels = np.where(labels == 10, 0, labels)
    n = TinySVHN.n_train
    assert data.train.targets.tolist() == labels[:n].tolist()
    assert data.val.targets.tolist() == labels[n:].tolist()
    np.testing.assert_allclose(_destandardise(data.val, data.meta), images[n:], atol=1e-3)


def test_ptb_windows_vocabulary_and_unknown_words(loaded: dict, mirror: Mirror) -> None:
    data = loaded[("penn-treebank", "paper")]
    assert data.meta["eos_id"] == 5 and data.meta["unk_id"] == 10  # order of first appearance
    assert data.meta["vocabulary_size"] == 13
    x, y = data.train.inputs, data.train.targets
    assert (
        x.shape == (29, 5)
        and torch.equal(x[:, 1:], y[:, :-1])
        and torch.equal(x[1:, 0], y[:-1, -1])
    )
    stream = np.arange(12)
    wx, wy = windows(stream, 5)
    assert wx.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] and wy[1].tolist() == [6, 7, 8, 9, 10]
    with pytest.raises(ValueError, match="no window"):
        windows(np.arange(5), 5)
    # a validation word outside the training vocabulary becomes <unk> ...
    root = mirror.root.parent / "ptb-unknown"
    shutil.copytree(mirror.root / "penn-treebank", root / "penn-treebank")
    (root / "penn-treebank" / "ptb.valid.txt").write_text(" zebra cat \n" * 8)
    key = "penn-treebank/ptb.valid.txt"
    registry = {**mirror.registry, key: FileSpec(key, file_digest(root / key))}
    store = mirror.store(registry=registry, mirror=root)
    val = tiny_ptb(store).load_data("paper").val
    flat = val.inputs.flatten().tolist()
    assert len(flat) == 15 and flat == ([10, 1, 5] * 5)  # zebra cat <eos> ...
    # ... and the vocabulary must fit the model
    with pytest.raises(ValueError, match="exceeds"):
        TinyPTB(store=store, vocab_size=5, seq_len=5).load_data("paper")


# ----------------------------------------------------------------------- damaged data (S3)
@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("damage", ["flip", "truncate", "no-digest", "missing"])
def test_damaged_data_stops_with_file_and_checksum(
    name: str, damage: str, loaded: dict, mirror: Mirror, tmp_path: Path
) -> None:
    keys = sorted(loaded[(name, "smoke")].meta["files"])
    key = keys[-1]
    root = tmp_path / "m"
    for k in keys:
        (root / k).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mirror.root / k, root / k)
    registry = dict(mirror.registry)
    expected: type[Exception] = ChecksumError
    if damage == "flip":
        flip_byte(root / key)
    elif damage == "truncate":
        truncate(root / key)
    elif damage == "no-digest":
        registry[key] = FileSpec(key, None)
        expected = MissingDigestError
    else:
        (root / key).unlink()
        expected = MissingDataError
    task = make(name, mirror.store(registry=registry, mirror=root, cache=tmp_path / "c"))
    with pytest.raises(expected) as err:
        task.load_data("smoke")
    assert key in str(err.value)
    if damage != "no-digest":
        assert mirror.registry[key].sha256 in str(err.value)


# ------------------------------------------------------------------------------- batches
@pytest.mark.parametrize("name", list(FACTORIES))
def test_one_epoch_covers_the_training_set_once(name: str, loaded: dict, mirror: Mirror) -> None:
    task = make(name, mirror.store())
    split = loaded[(name, "paper")].train
    if isinstance(task, CIFAR10):  # augmented: checked image by image below
        ident = torch.arange(len(split))
        labels = [
            t
            for _, t in task.batches(
                Split(split.inputs, ident), 3, torch.Generator().manual_seed(0)
            )
        ]
        assert sorted(torch.cat(labels).tolist()) == ident.tolist()
        return
    batches = list(task.batches(split, 7, torch.Generator().manual_seed(0)))
    assert [len(b[0]) for b in batches[:-1]] == [7] * (len(batches) - 1) and 0 < len(
        batches[-1][0]
    ) <= 7

    def rows(x: torch.Tensor, t: torch.Tensor) -> Counter:
        return Counter(
            tuple(r)
            for r in torch.cat(
                [x.reshape(len(x), -1).double(), t.reshape(len(t), -1).double()], 1
            ).tolist()
        )

    got = rows(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    assert got == rows(split.inputs, split.targets)


def test_batches_are_repeatable_from_the_generator_only() -> None:
    task = CIFAR10()
    split = Split(torch.randn(10, 3, 8, 8), torch.arange(10))

    def epoch(seed: int) -> list[torch.Tensor]:
        return [x for x, _ in task.batches(split, 4, torch.Generator().manual_seed(seed))]

    state = torch.random.get_rng_state()
    a, b, c = epoch(3), epoch(3), epoch(4)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is never used
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_augmentation_is_a_crop_of_the_padded_image_within_4_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 8, 8, generator=g) + 0.5  # no zeros in the images themselves
    split = Split(images, torch.arange(12))
    padded = F.pad(images, (4, 4, 4, 4))
    candidates = {}
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, :, dy : dy + 8, dx : dx + 8]
            candidates[(dy, dx, False)] = crop
            candidates[(dy, dx, True)] = crop.flip(-1)
    seen, offsets = [], Counter()
    for _ in range(3):
        for x, t in CIFAR10().batches(split, 5, g):
            for img, label in zip(x, t, strict=True):
                match = [k for k, c in candidates.items() if torch.equal(c[label], img)]
                assert match, "an augmented image is not a pad-crop(-flip) of its source"
                offsets.update(match[:1])
                seen.append(int(label))
                zero_rows = (img == 0).all(dim=(0, 2)).sum()
                zero_cols = (img == 0).all(dim=(0, 1)).sum()
                assert zero_rows <= 4 and zero_cols <= 4
    assert Counter(seen) == Counter({i: 3 for i in range(12)})
    assert len(offsets) > 10  # offsets and flips really vary
    ident = pad_crop_flip(
        images, torch.full((12,), 4), torch.full((12,), 4), torch.zeros(12, dtype=torch.bool)
    )
    assert torch.equal(ident, images)
    flipped = pad_crop_flip(
        images, torch.full((12,), 4), torch.full((12,), 4), torch.ones(12, dtype=torch.bool)
    )
    assert torch.equal(flipped, images.flip(-1))
    with pytest.raises(ValueError, match="offsets"):
        pad_crop_flip(
            images,
            torch.full((12,), 9),
            torch.zeros(12, dtype=torch.long),
            torch.zeros(12, dtype=torch.bool),
        )


# -------------------------------------------------------------------------------- models
@pytest.mark.parametrize(
    ("name", "count"), [("uci-energy", 501), ("uci-protein", 1101), ("fashion-mnist", 39760)]
)
def test_mlps_match_the_official_parameter_counts_and_init(name: str, count: int) -> None:
    task = get_task(name)
    model = task.make_model(0, "smoke")
    assert sum(p.numel() for p in model.parameters()) == count
    same = task.make_model(0, "smoke").state_dict()
    other = task.make_model(1, "smoke").state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, same[k])
        if k.endswith("weight"):
            assert not torch.equal(v, other[k])
            bound = 2 / math.sqrt(v.shape[1])
            assert v.abs().max() <= bound and v.std() > 0.3 / math.sqrt(v.shape[1])
        else:
            assert torch.all(v == 0)


def test_resnet18_structure_count_and_determinism() -> None:
    model = ResNet18(10, torch.Generator().manual_seed(0))
    assert sum(p.numel() for p in model.parameters()) == 11_181_642  # about 11.2M
    shapes = {}

    def record(name: str):
        def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            shapes[name] = (inputs[0].shape, output.shape)

        return hook

    model.stem.register_forward_hook(record("stem"))
    model.blocks.register_forward_hook(record("blocks"))
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10) and torch.all(out == 0)  # zero-initialised logits layer
    assert shapes["stem"][1][-2:] == (16, 16) and shapes["blocks"][0][-2:] == (8, 8)
    assert shapes["blocks"][1] == (2, 512, 1, 1)
    again = ResNet18(10, torch.Generator().manual_seed(0)).state_dict()
    # parameters: the forward pass above already moved the batch-norm running statistics
    assert all(torch.equal(v, again[k]) for k, v in model.named_parameters())
    other = SameConv2d(3, 64, 7, 2, torch.Generator().manual_seed(1))
    assert not torch.equal(model.stem.weight, other.weight)
    bound = 2 / math.sqrt(3 * 7 * 7)
    assert model.stem.weight.abs().max() <= bound
    # "SAME" padding of a stride-2 3x3 convolution on an even size pads (0, 1), as Haiku does
    conv = model.blocks[2].conv_0
    h = torch.randn(1, 64, 8, 8)
    torch.testing.assert_close(conv(h), F.conv2d(F.pad(h, (0, 1, 0, 1)), conv.weight, stride=2))
    with torch.no_grad():
        model.logits.weight.normal_()
    assert torch.isfinite(model(x)).all()


def _tiny_gpt(seed: int = 0) -> GPT2:
    config = GPTConfig(vocab_size=11, n_positions=6, n_embd=8, n_layer=2, n_head=2)
    return GPT2(config, torch.Generator().manual_seed(seed)).double()


def test_gpt_shapes_determinism_and_causality() -> None:
    model = _tiny_gpt()
    idx = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(0))
    out = model(idx)
    assert out.shape == (3, 6, 11) and torch.isfinite(out).all()
    assert torch.equal(out, _tiny_gpt()(idx)) and not torch.equal(out, _tiny_gpt(1)(idx))
    changed = idx.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 11
    out2 = model(changed)
    torch.testing.assert_close(out2[:, :4], out[:, :4], atol=1e-12, rtol=0)
    assert not torch.allclose(out2[:, 4:], out[:, 4:])
    with pytest.raises(ValueError, match="n_positions"):
        model(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="divide"):
        GPTConfig(n_embd=10, n_head=3)
    small = get_task("penn-treebank").make_model(0, "quick")
    assert sum(p.numel() for p in small.parameters()) == 1_693_184


def test_gpt_forward_mode_and_hessian_vector_products_match_finite_differences() -> None:
    model = _tiny_gpt()
    idx = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(2))
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    tangent = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}

    def outputs(p: dict) -> torch.Tensor:
        return functional_call(model, p, (idx,))

    def shifted(eps: float) -> dict:
        return {k: params[k] + eps * tangent[k] for k in params}

    _, u = jvp(outputs, (params,), (tangent,))
    eps = 1e-6
    fd = (outputs(shifted(eps)) - outputs(shifted(-eps))) / (2 * eps)
    torch.testing.assert_close(u, fd, atol=1e-7, rtol=1e-6)

    def loss(p: dict) -> torch.Tensor:
        return F.cross_entropy(outputs(p).reshape(-1, 11), target.reshape(-1))

    _, hv = jvp(grad(loss), (params,), (tangent,))
    g_plus, g_minus = grad(loss)(shifted(eps)), grad(loss)(shifted(-eps))
    for k in params:
        torch.testing.assert_close(
            hv[k], (g_plus[k] - g_minus[k]) / (2 * eps), atol=1e-6, rtol=1e-5
        )


# ---------------------------------------------------------------- the official padding switch
def test_official_padding_loss_dilutes_only_the_curvature() -> None:
    out, t, u = torch.randn(588, 1), torch.randn(588, 1), torch.randn(588, 1)
    intended, padded = SquaredErrorLoss(), official_padding_loss(3200)
    torch.testing.assert_close(padded.value(out, t), intended.value(out, t))
    ratio = padded.output_quadratic(out, u, t) / intended.output_quadratic(out, u, t)
    torch.testing.assert_close(ratio, torch.tensor(588 / 3200))
    task = UCIEnergy()
    assert task.make_loss().curvature_count is None
    assert task.make_loss(3200, official_padding=True).curvature_count == 3200
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            official_padding_loss(bad)
    with pytest.raises(ValueError, match="batch_size"):
        task.make_loss(official_padding=True)


# -------------------------------------------------------------------- profiles and registry
def test_profiles_hold_the_papers_budgets() -> None:
    expected = {
        "uci-energy": (588, 4000),
        "uci-protein": (1000, 200),
        "fashion-mnist": (50, 10),
        "svhn": (256, 10),
        "cifar-10": (128, 72),
        "cifar-10-jpeg": (128, 72),
        "penn-treebank": (30, 100),
    }
    for name, (batch, epochs) in expected.items():
        task = get_task(name)
        assert task.name == name and name in TASKS
        paper = task.profile("paper")
        assert (paper.batch_size, paper.epochs) == (batch, epochs)
        assert paper.train_size is paper.val_size is paper.test_size is None
        for profile in PROFILES:
            assert task.profile(profile).batch_size > 0
        with pytest.raises(ValueError, match="unknown profile"):
            task.profile("huge")
    assert get_task("penn-treebank").profile("paper").model == "gpt2"
    assert get_task("penn-treebank").profile("quick").model == "gpt2-small-cpu"


# ------------------------------------------------------------------ AdamQLR trains each task
# SVHN and the official CIFAR-10 share the ResNet-18 with the JPEG stand-in; one of them is enough
# here (a ResNet step costs about a second on a CPU), the others are in the slow tier.
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in ("svhn", "cifar-10") else n
        for n in FACTORIES
    ],
)
def test_a_few_adamqlr_steps_reduce_the_training_loss(
    name: str, loaded: dict, mirror: Mirror
) -> None:
    torch.manual_seed(0)
    task = make(name, mirror.store())
    data = loaded[(name, "smoke")]
    model = task.make_model(0, "smoke")
    opt = AdamQLR(model, loss=task.loss)
    x, t = data.train.inputs, data.train.targets

    def batch_loss() -> float:
        with torch.no_grad():
            out = model(x)
            if task.loss == "cross_entropy":
                return float(F.cross_entropy(out.reshape(-1, out.shape[-1]), t.reshape(-1)))
            return float(0.5 * (out - t).pow(2).mean())

    before = batch_loss()
    for _ in range(3 if isinstance(task, CIFAR10) or name == "svhn" else 10):
        stats = opt.step(x, t)
        assert math.isfinite(stats.loss)
    assert batch_loss() < 0.9 * before


# ------------------------------------------------------------------------ the real mirror
def _have(*keys: str) -> bool:
    return bool(MIRROR) and all((Path(MIRROR) / k).is_file() for k in keys)


@pytest.mark.skipif(not _have("uci-energy/data.txt", "uci-protein/data.txt"), reason="no mirror")
def test_real_uci_sizes() -> None:
    for name, sizes in (("uci-energy", (588, 104, 76)), ("uci-protein", (34983, 6174, 4573))):
        data = get_task(name).load_data("paper")
        assert (len(data.train), len(data.val), len(data.test)) == sizes
        assert data.meta["file_sources"] and data.train.inputs.shape[1] == (
            8 if "energy" in name else 9
        )
    energy = get_task("uci-energy").load_data("paper")
    xlsx = UCIEnergy(source="ENB2012_data.xlsx").load_data("paper")
    torch.testing.assert_close(xlsx.train.inputs, energy.train.inputs, atol=1e-3, rtol=0)


@pytest.mark.skipif(not _have("fashion-mnist/train-images-idx3-ubyte.gz"), reason="no mirror")
def test_real_fashion_mnist_sizes() -> None:
    data = get_task("fashion-mnist").load_data("paper")
    assert (len(data.train), len(data.val), len(data.test)) == (50_000, 10_000, 10_000)
    assert data.train.inputs.shape[1] == 784 and data.train.targets.bincount().tolist()[0] > 4000


@pytest.mark.skipif(not _have("penn-treebank/ptb.train.txt"), reason="no mirror")
def test_real_penn_treebank_tokens_and_vocabulary() -> None:
    data = get_task("penn-treebank").load_data("paper")
    assert data.meta["tokens"] == {"train": 929_589, "valid": 73_760, "test": 82_430}
    assert data.meta["vocabulary_size"] == 10_000
    assert (data.meta["eos_id"], data.meta["unk_id"]) == (24, 26)
    assert data.train.inputs.shape == (929_588 // 70, 70)


@pytest.mark.skipif(not _have("cifar10-jpeg/cifar10_jpg.tar.gz"), reason="no mirror")
def test_real_cifar_jpeg_smoke_subset_is_labelled() -> None:
    data = get_task("cifar-10-jpeg").load_data("smoke")
    assert data.meta["dataset"] == "CIFAR-10 (JPEG re-encoding)"
    assert (len(data.train), len(data.val), len(data.test)) == (64, 32, 32)
    assert data.train.inputs.shape[1:] == (3, 32, 32)


@pytest.mark.skipif(not _have("cifar-10/cifar-10-python.tar.gz"), reason="official CIFAR-10 absent")
def test_real_cifar_official_sizes() -> None:
    data = get_task("cifar-10").load_data("paper")
    assert (len(data.train), len(data.val), len(data.test)) == (45_000, 5_000, 10_000)


@pytest.mark.skipif(not _have("svhn/train_32x32.mat", "svhn/test_32x32.mat"), reason="SVHN absent")
def test_real_svhn_sizes() -> None:
    data = get_task("svhn").load_data("paper")
    assert (len(data.train), len(data.val), len(data.test)) == (61_047, 12_210, 26_032)
