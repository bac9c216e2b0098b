"""Saving and loading state dicts without ever unpickling an untrusted file.

``load`` decides the format by the file's content, not its name:

- ``.npz`` (a zip of ``.npy`` members): read with ``allow_pickle=False``;
- safetensors (8-byte header length, a JSON header, raw little-endian data):
  read and written here, no pickle involved;
- PyTorch's zip format (a ``data.pkl`` member): read with
  ``torch.load(weights_only=True)``, PyTorch's restricted unpickler, and only when
  torch is installed;
- anything that starts like a pickle stream is refused with a ``ValueError``.
"""

import json
import os
import struct
import zipfile

import numpy as np

_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64,
                       "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
                       "U8": np.uint8, "BOOL": np.bool_}
_SAFETENSORS_NAMES = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}


def _state(obj):
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise TypeError(f"save: expected a layer or a dict of arrays, got {type(obj).__name__}")
    return {str(k): np.ascontiguousarray(np.asarray(v)) for k, v in obj.items()}


def save(obj, path):
    """Save a layer's state dict (or a dict of arrays) to ``path``.

    The suffix picks the format: ``.safetensors``, ``.pth``/``.pt`` (needs torch),
    anything else ``.npz``.
    """
    state = _state(obj)
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix == ".safetensors":
        _save_safetensors(state, path)
    elif suffix in (".pth", ".pt"):
        torch = _torch("save a .pth file")
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    else:
        with open(path, "wb") as f:
            np.savez(f, **state)


def load(path):
    """The state dict in ``path`` as ``{name: ndarray}`` (see the module docstring)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK"):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("data.pkl") for n in names):
            return _load_torch(path)
        if all(n.endswith(".npy") for n in names):
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        raise ValueError(f"load: {path} is a zip archive but neither .npz nor a PyTorch file")
    if head[:1] == b"\x80" or head[:1] in (b"(", b"]", b"}", b"c"):
        raise ValueError(f"load: {path} is a pickle stream; fastconv never unpickles a file "
                         f"(save it as .npz or .safetensors)")
    if len(head) >= 9 and head[8:9] == b"{":
        return _load_safetensors(path)
    raise ValueError(f"load: {path} is not an .npz, safetensors or PyTorch file")


def _save_safetensors(state, path):
    header, offset = {}, 0
    for name, a in state.items():
        if a.dtype not in _SAFETENSORS_NAMES:
            raise TypeError(f"save: {name} has dtype {a.dtype}, which safetensors cannot hold")
        header[name] = {"dtype": _SAFETENSORS_NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)                  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in state.values():
            f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())


def _load_safetensors(path):
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = f.read()
    state = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
        state[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"]).copy()
    return state


def _torch(why):
    try:
        import torch
    except ImportError:
        raise RuntimeError(f"torch is needed to {why}: pip install 'fastconv[torch]'") from None
    return torch


def _load_torch(path):
    torch = _torch("read a PyTorch file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"load: {path} is not a weights-only PyTorch file ({exc})") from None
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    return {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
            for k, v in obj.items()}
