"""The network file format: save and load float and quantized networks.

Format, version 1
-----------------
A network file is a NumPy ``.npz`` archive (a zip of ``.npy`` arrays, read with
``allow_pickle=False``) holding:

``header``
    A uint8 array: UTF-8 JSON with the keys

    * ``"format"``: ``"systolic-network"``;
    * ``"version"``: ``1``;
    * ``"kind"``: ``"quantized"`` (a :class:`~.ir.QNetwork`) or ``"float"``
      (a :class:`~.ir.FloatNetwork`);
    * ``"name"``, ``"input_shape"`` (``[C, H, W]``); for quantized networks
      ``"input_format"`` (``[width, frac]``) and ``"seed"``;
    * ``"layers"``: a list of objects, each with ``"kind"`` (``conv2d``, ``dense``,
      ``maxpool2d``, ``avgpool2d``, ``activation``, ``add``) and that layer class's fields
      other than its arrays (formats as ``[width, frac]``, padding as a string or a list of
      four integers), plus ``"has_bias"`` for conv2d and dense.

``layer{i}.weight``, ``layer{i}.bias``
    The arrays of layer ``i``: int16 in quantized networks (every width is at most 16 bits),
    float32 or float64 in float networks.

Any change to this layout bumps ``version``; a reader rejects versions it does not know.
"""

import json
import zipfile
import zlib
from dataclasses import fields
from pathlib import Path

import numpy as np

from .errors import NetworkError, NetworkFileError
from .ir import LAYER_KINDS, FloatNetwork, QNetwork
from .qformat import QFormat

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "save_network", "load_network"]

FORMAT_NAME = "systolic-network"
FORMAT_VERSION = 1

_ARRAYS = ("weight", "bias")
_FORMAT_FIELDS = ("weight_format", "bias_format", "out_format")


def _layer_to_json(layer):
    entry = {"kind": layer.kind}
    for f in fields(layer):
        value = getattr(layer, f.name)
        if f.name in _ARRAYS:
            if f.name == "bias":
                entry["has_bias"] = value is not None
            continue
        if isinstance(value, QFormat):
            value = value.to_json()
        elif f.name == "padding" and not isinstance(value, str):
            value = [int(v) for v in value]
        elif isinstance(value, np.integer):
            value = int(value)
        entry[f.name] = value
    return entry


def save_network(network, path):
    """Write ``network`` (a :class:`QNetwork` or :class:`FloatNetwork`) to ``path``.

    Returns the path written (``.npz`` is appended by NumPy when missing)."""
    quantized = isinstance(network, QNetwork)
    if not quantized and not isinstance(network, FloatNetwork):
        raise TypeError(f"Network must be a QNetwork or FloatNetwork, not "
                        f"{type(network).__name__}")
    header = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "kind": "quantized" if quantized else "float",
        "name": network.name, "input_shape": list(network.input_shape),
        "layers": [_layer_to_json(l) for l in network.layers],
    }
    if quantized:
        header["input_format"] = network.input_format.to_json()
        header["seed"] = int(network.seed)
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    for i, layer in enumerate(network.layers):
        for name in _ARRAYS:
            value = getattr(layer, name, None)
            if value is not None:
                arrays[f"layer{i}.{name}"] = value.astype(np.int16) if quantized else value
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def _fail(path, message):
    raise NetworkFileError(f"{path}: {message}")


def _layer_from_json(path, i, entry, arrays, quantized):
    where = f"layer {i}"
    if not isinstance(entry, dict):
        _fail(path, f"{where}: must be a JSON object, not {type(entry).__name__}")
    kind = entry.get("kind")
    if kind not in LAYER_KINDS:
        _fail(path, f"{where}: unknown layer kind {kind!r} (known: "
                    f"{', '.join(LAYER_KINDS)})")
    cls = LAYER_KINDS[kind]
    where = f"layer {i} ({kind})"
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in entry.items():
        if key in ("kind", "has_bias"):
            continue
        if key not in names or key in _ARRAYS:
            _fail(path, f"{where}: unknown field {key!r}")
        if key in _FORMAT_FIELDS and value is not None:
            try:
                value = QFormat.from_json(value)
            except (TypeError, ValueError) as exc:
                _fail(path, f"{where}: field {key}: {exc}")
        elif key == "padding" and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    if "weight" in names:
        key = f"layer{i}.weight"
        if key not in arrays:
            _fail(path, f"{where}: array {key!r} is missing")
        kwargs["weight"] = arrays[key]
        if entry.get("has_bias", False):
            key = f"layer{i}.bias"
            if key not in arrays:
                _fail(path, f"{where}: array {key!r} is missing")
            kwargs["bias"] = arrays[key]
        if quantized:
            kwargs["weight"] = kwargs["weight"].astype(np.int64)
            if kwargs.get("bias") is not None:
                kwargs["bias"] = kwargs["bias"].astype(np.int64)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        _fail(path, f"{where}: {exc}")


def load_network(path):
    """Read a network file written by :func:`save_network`.

    Returns
    -------
    QNetwork or FloatNetwork

    Raises
    ------
    NetworkFileError
        If the file is missing, not a network file, truncated or corrupt, of another format
        version, or describes an invalid network; the message names the layer and field.
    """
    path = Path(path)
    if not path.is_file():
        _fail(path, "no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        if not zipfile.is_zipfile(path):
            _fail(path, "not a systolic network file (not a NumPy .npz archive); "
                        "truncated or corrupt?")
        _fail(path, f"truncated or corrupt network file ({exc})")
    if "header" not in arrays:
        _fail(path, "not a systolic network file (no header)")
    try:
        header = json.loads(arrays["header"].tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(path, f"corrupt header ({exc})")
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        _fail(path, f"not a systolic network file (format is "
                    f"{header.get('format') if isinstance(header, dict) else header!r})")
    if header.get("version") != FORMAT_VERSION:
        _fail(path, f"file format version {header.get('version')!r} is not supported "
                    f"(this systolic reads version {FORMAT_VERSION})")
    kind = header.get("kind")
    if kind not in ("quantized", "float"):
        _fail(path, f"field kind must be 'quantized' or 'float', not {kind!r}")
    quantized = kind == "quantized"
    for key in ("input_shape", "layers") + (("input_format", "seed") if quantized else ()):
        if key not in header:
            _fail(path, f"header field {key!r} is missing")
    if not isinstance(header["layers"], list):
        _fail(path, "header field 'layers' must be a list")
    layers = [_layer_from_json(path, i, e, arrays, quantized)
              for i, e in enumerate(header["layers"])]
    shape = header["input_shape"]
    shape = tuple(shape) if isinstance(shape, list) else shape
    try:
        if quantized:
            try:
                input_format = QFormat.from_json(header["input_format"])
            except (TypeError, ValueError) as exc:
                _fail(path, f"field input_format: {exc}")
            return QNetwork(shape, input_format, layers, seed=header["seed"],
                            name=header.get("name", ""))
        return FloatNetwork(shape, layers, name=header.get("name", ""))
    except NetworkError as exc:
        if isinstance(exc, NetworkFileError):
            raise
        _fail(path, str(exc))
