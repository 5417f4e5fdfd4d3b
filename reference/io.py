"""Reading and writing token arrays: .npy, .safetensors, .pt (informative).

bfloat16 has no numpy dtype: it travels as uint16 bit patterns tagged with the
name "bfloat16".  torch and safetensors are imported only when used.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import TKBEncodeError


def torch_to_numpy(t) -> tuple[np.ndarray, str]:
    """A torch tensor (any device) as (numpy array, dtype name)."""
    import torch
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), "bfloat16"
    a = t.numpy()
    return a, str(a.dtype)


def numpy_to_torch(a: np.ndarray, dtype: str, device=None):
    import torch
    if dtype == "bfloat16":
        t = torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(np.ascontiguousarray(a))
    return t.to(device) if device is not None else t


def load_array(path) -> tuple[np.ndarray, str | None]:
    """Load the one tensor of a .npy / .safetensors / .pt file: (array, 'bfloat16' or None)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        if suffix == ".safetensors":
            from safetensors.numpy import load_file
            try:
                tensors = load_file(str(path))
            except Exception:  # bfloat16 needs the torch loader
                from safetensors.torch import load_file as load_torch
                tensors = {k: v for k, v in load_torch(str(path)).items()}
            return _single(tensors, path)
        if suffix in (".pt", ".pth"):
            import torch
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                return _single(obj, path)
            return _tensor(obj)
    except ImportError as e:
        raise TKBEncodeError(f"reading {suffix} needs {e.name}: pip install "
                             "'tokenbits[io]'") from None
    raise TKBEncodeError(f"unsupported input file type {suffix!r} (.npy, .safetensors, .pt)")


def _tensor(v):
    if hasattr(v, "detach"):
        a, name = torch_to_numpy(v)
        return a, ("bfloat16" if name == "bfloat16" else None)
    return np.asarray(v), None


def _single(tensors: dict, path) -> tuple[np.ndarray, str | None]:
    if len(tensors) != 1:
        raise TKBEncodeError(f"{path} holds {len(tensors)} tensors; TKB encode takes one "
                             f"(names: {', '.join(list(tensors)[:5])})")
    return _tensor(next(iter(tensors.values())))


def save_arrays(path, arrays: dict, dtypes: dict | None = None) -> None:
    """Save named arrays to .npy (exactly one) or .safetensors."""
    path = Path(path)
    dtypes = dtypes or {}
    if path.suffix.lower() == ".npy":
        if "bfloat16" in dtypes.values():
            raise TKBEncodeError(".npy has no bfloat16: write .safetensors")
        if len(arrays) != 1:
            raise TKBEncodeError(".npy holds one array; use .safetensors for values "
                                 "with positions or several tracks")
        np.save(path, next(iter(arrays.values())))
        return
    if path.suffix.lower() == ".safetensors":
        if any(d == "bfloat16" for d in dtypes.values()):
            from safetensors.torch import save_file
            save_file({k: numpy_to_torch(v, dtypes.get(k, str(v.dtype))).contiguous()
                       for k, v in arrays.items()}, str(path))
        else:
            from safetensors.numpy import save_file
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
        return
    raise TKBEncodeError(f"unsupported output file type {path.suffix!r} (.npy, .safetensors)")
