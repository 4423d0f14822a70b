"""The torch runtime in one place: device and dtype policy, autocast, seeded generators, host staging."""

from __future__ import annotations

import warnings

import numpy as np
import torch

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(device) -> torch.device:
    """Return the torch device to run on.

    ``None`` means auto (cuda > mps > cpu). An explicit accelerator that is not
    available falls back to the CPU with a warning, so that a model fitted on a
    GPU still predicts on a CPU-only machine but never silently.
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be None, 'cpu', 'cuda', 'cuda:<index>', 'mps' or a torch.device; got {device!r}."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"device={device!r} was requested but CUDA is not available; running on the CPU instead.",
            RuntimeWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    if resolved.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            warnings.warn(
                f"device={device!r} was requested but MPS is not available; running on the CPU instead.",
                RuntimeWarning,
                stacklevel=3,
            )
            return torch.device("cpu")
    return resolved


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """Compute dtype: ``None`` means bfloat16 on CUDA and float32 elsewhere."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}; got {dtype!r}.")
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be None or one of {sorted(_DTYPES)}; got {dtype!r}.")


def torch_seed(random_state) -> int:
    """Draw a torch seed from an int / RandomState / None, the scikit-learn way."""
    from sklearn.utils import check_random_state

    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator on ``device`` (dropout and shuffling draw from it)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory (no copy when C-ordered), read-only arrays included.

    Callers only ever read it, so torch's warning about non-writable arrays (memory maps
    of an embedding cache, read-only user arrays) does not apply.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array))


def as_numpy(tensor: torch.Tensor, dtype=np.float32) -> np.ndarray:
    """Detach a tensor to a numpy array of ``dtype`` on the host."""
    return tensor.detach().to("cpu", torch.float32).numpy().astype(dtype, copy=False)
