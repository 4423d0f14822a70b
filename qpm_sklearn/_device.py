"""The torch runtime in one place: device and dtype policy, autocast, seeded generators, host staging."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import torch

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def available_devices() -> list[str]:
    """The device strings this machine can run on, e.g. ``['cpu', 'cuda:0', 'cuda:1']``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append("mps")
    return devices


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return the torch device to run on, checked against this machine.

    ``None`` means auto (cuda > mps > cpu). An explicit ``cuda``/``mps`` request on a
    machine without that accelerator falls back to the CPU with a warning, so that a
    model fitted on a GPU still predicts on a CPU-only machine but never silently. A
    device this machine lacks otherwise (``cuda:7`` on one GPU, ``xpu``, ``meta``) is
    refused with a ``ValueError`` listing what is available. Call it once per public
    method and pass the resolved device down (the warning is then given once).
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be None, 'cpu', 'cuda', 'cuda:<index>', 'mps' or a torch.device; got {device!r}."
        ) from exc
    if resolved.type == "cpu":
        return resolved
    accelerators = {"cuda": torch.cuda.is_available(), "mps": _mps_available()}
    if not accelerators.get(resolved.type, True):
        warnings.warn(
            f"device={device!r} was requested but {resolved.type.upper()} is not available; "
            "running on the CPU instead.",
            RuntimeWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    if resolved.type == "cuda" and (resolved.index is None or resolved.index < torch.cuda.device_count()):
        return resolved
    if resolved.type == "mps" and resolved.index in (None, 0):
        return resolved
    raise ValueError(f"device={device!r} is not available on this machine; available: {available_devices()}.")


def compute_dtype(device: torch.device) -> torch.dtype:
    """The default compute dtype -- the one place it is decided: bfloat16 on CUDA, float32 elsewhere.

    The embedder computes in it, the MLP runs under :func:`autocast` to it, and tokens
    staged on a GPU for training are stored in it.
    """
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Mixed precision in :func:`compute_dtype` on CUDA (float32 master weights); nothing elsewhere.

    The weight-cast cache is off: it must be for CUDA-graph capture, and the eager path
    uses the same setting so both compute identically.
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=compute_dtype(device), cache_enabled=False)
    return contextlib.nullcontext()


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Compute dtype: ``None`` means :func:`compute_dtype` (bfloat16 on CUDA, float32 elsewhere)."""
    if dtype is None:
        return compute_dtype(device)
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}; got {dtype!r}.")
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be None or one of {sorted(_DTYPES)}; got {dtype!r}.")


def torch_seed(random_state: int | np.random.RandomState | None) -> int:
    """Draw a torch seed from an int / RandomState / None, the scikit-learn way."""
    from sklearn.utils import check_random_state

    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator on ``device`` (dropout and shuffling draw from it)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG for the block (dropout draws from it) and restore the caller's state after.

    Dropout has no generator argument, so training seeds the global RNG -- inside a
    fork, so that no public method changes the caller's random state.
    """
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] if (
        device.type == "cuda"
    ) else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.random.default_generator.manual_seed(int(seed))
        if cuda_devices:
            with torch.cuda.device(cuda_devices[0]):
                torch.cuda.manual_seed(int(seed))
        yield


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory (no copy when C-ordered), read-only arrays included.

    Callers only ever read it, so torch's warning about non-writable arrays (memory maps
    of an embedding cache, read-only user arrays) does not apply.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array))


def as_numpy(tensor: torch.Tensor, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
    """Detach a tensor to a numpy array of ``dtype`` on the host."""
    return tensor.detach().to("cpu", torch.float32).numpy().astype(dtype, copy=False)


def upload(
    host: torch.Tensor, device: torch.device, stream: torch.cuda.Stream | None = None
) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying a host tensor to ``device``; returns ``(tensor on device, event or None)``.

    On CUDA the copy runs from pinned memory (``host`` is pinned first unless it already
    is, e.g. a reused staging buffer) on ``stream``, so it overlaps compute; the event
    marks its end: pass both to :func:`wait_upload` before the tensor is used. Elsewhere
    the copy is synchronous and the event is None. The embedder's pixel uploads and the
    training loop's streamed batches both go through here.
    """
    if device.type != "cuda":
        return host.to(device), None
    pinned = host if host.is_pinned() else host.pin_memory()
    with torch.cuda.stream(stream):
        on_device = pinned.to(device, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(stream)
    return on_device, copied


def wait_upload(tensor: torch.Tensor, copied: torch.cuda.Event | None) -> torch.Tensor:
    """Make the current stream wait for an :func:`upload` (no host synchronisation); return the tensor."""
    if copied is not None:
        compute_stream = torch.cuda.current_stream(tensor.device)
        compute_stream.wait_event(copied)
        tensor.record_stream(compute_stream)  # allocated on the copy stream, used on this one
    return tensor


def download(
    tensor: torch.Tensor, stream: torch.cuda.Stream | None = None
) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying ``tensor`` to host memory; returns ``(host tensor, CUDA event or None)``.

    On CUDA the copy runs on ``stream`` (None: the current stream, like :func:`upload`) into
    pinned memory, so it overlaps the next batch's compute instead of delaying it; synchronise
    the event before reading.
    """
    if tensor.device.type != "cuda":
        return tensor.cpu(), None
    copy_stream = torch.cuda.current_stream(tensor.device) if stream is None else stream
    with torch.inference_mode():  # the embedder's outputs are inference tensors
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        copy_stream.wait_stream(torch.cuda.current_stream(tensor.device))
        with torch.cuda.stream(copy_stream):
            host.copy_(tensor, non_blocking=True)
            tensor.record_stream(copy_stream)  # its memory is not reused before the copy ends
            copied = torch.cuda.Event()
            copied.record(copy_stream)
    return host, copied
