"""Image input → backbone pixel values.

Everything between what a user hands to :class:`~qpm_sklearn.Dinov2Embedder` and the
``(B, 3, S, S)`` tensor the backbone sees lives here: checking the input container,
reading and decoding files (with errors that name the file; EXIF orientation applied
unless turned off), converting any PIL mode
to RGB, squash-resizing to a square, and normalising ("imagenet" or "paper",
docs/method.md#preprocessing). Decoding and resizing stay in uint8 on the host (as torchvision's and
transformers' pipelines do, so quantisation matches them); the float conversion and
normalisation run on whatever device holds the uint8 batch.

Image files are decoded in worker processes (joblib's loky executor, reused across
calls): Pillow holds the GIL for part of every decode, so threads stop scaling at a
few cores and starve the thread that drives the GPU. In-memory images (PIL, arrays)
are resized by threads, since sending them to a process costs as much as resizing.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, cast

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError


# torch is imported inside normalize, the one function that needs it: decoding worker
# processes import this module and should start in a fraction of a second.
if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PREPROCESSINGS",
    "PREPROCESSING_FILTERS",
    "RESAMPLING_FILTERS",
    "ImageLike",
    "Images",
    "check_files_exist",
    "check_image_item",
    "check_images",
    "decode_batches",
    "default_n_jobs",
    "image_key",
    "load_resized",
    "normalize",
    "read_image",
    "resolve_n_jobs",
    "resolve_statistics",
    "to_rgb",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESSINGS = ("imagenet", "paper", "auto")

#: The PIL resampling filters the resizing functions take, by name.
RESAMPLING_FILTERS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
#: The filter of each fixed preprocessing. Ours is bicubic; "paper" replicates the authors'
#: (docs/method.md#preprocessing), i.e. torchvision's default Resize on PIL images, which is
#: PIL's (antialiased) bilinear filter. "auto" takes the filter its model's image processor names.
PREPROCESSING_FILTERS = {"imagenet": "bicubic", "paper": "bilinear"}

_PATH_TYPES = (str, os.PathLike)

#: One image: a file path, a PIL image or a uint8 array ``(H, W)`` / ``(H, W, 3)``.
ImageLike: TypeAlias = str | os.PathLike[str] | Image.Image | np.ndarray
#: A collection of images (a list, tuple, pandas Series, ...) or a uint8 array ``(n, H, W[, 3])``.
Images: TypeAlias = Iterable[ImageLike] | np.ndarray


def default_n_jobs() -> int:
    """Decoding threads when ``n_jobs=None``: PIL releases the GIL while decoding."""
    return max(1, min(8, os.cpu_count() or 1))


def resolve_n_jobs(n_jobs: int | None) -> int:
    if n_jobs is None:
        return default_n_jobs()
    if n_jobs == -1:
        return os.cpu_count() or 1
    return int(n_jobs)


# --------------------------------------------------------------------------------------------
# The input container
# --------------------------------------------------------------------------------------------


def check_images(X: Images) -> Sequence[ImageLike] | np.ndarray:
    """Validate the container of images and return it as an indexable sequence.

    Accepted: a uint8 array ``(n, H, W, 3)`` (RGB) or ``(n, H, W)`` (gray), or a
    non-empty collection (list, tuple, pandas Series, a one-column pandas DataFrame,
    an array of strings or objects of shape ``(n,)`` or ``(n, 1)``) whose items are file
    paths (``str`` / ``os.PathLike``), PIL images or uint8 arrays ``(H, W)`` /
    ``(H, W, 3)``, mixed freely. Files are not opened here (that happens in
    :func:`read_image`), so this check is cheap.

    Raises
    ------
    TypeError
        For a single path or image instead of a collection, an item of another type,
        or a non-uint8 array.
    ValueError
        For an empty collection, an array of the wrong rank / channel count, or a
        DataFrame of more than one column.
    """
    if isinstance(X, (*_PATH_TYPES, bytes, Image.Image)):
        raise TypeError(
            f"X must be a collection of images (a list of paths / PIL images or a uint8 array "
            f"(n, H, W, 3)); got a single {type(X).__name__}. Wrap it in a list: [X]."
        )
    if hasattr(X, "columns") and hasattr(X, "iloc"):  # a DataFrame: its one column of images
        columns = list(X.columns)
        if len(columns) != 1:
            raise ValueError(
                f"X is a DataFrame with {len(columns)} columns {columns[:5]}{' ...' if len(columns) > 5 else ''}; "
                f"pass the one column "
                f"that holds the images, e.g. X[{columns[0]!r}] or X[[{columns[0]!r}]]."
                if columns
                else "X is a DataFrame without columns; expected one column of images."
            )
        X = X.iloc[:, 0]
    if isinstance(X, np.ndarray) and X.dtype.kind in "USO":  # paths or images, one per row
        if X.ndim == 2 and X.shape[1] == 1:
            X = X[:, 0]
        elif X.ndim != 1:
            raise ValueError(
                f"X as an array of paths or images must have shape (n,) or (n, 1); got shape {X.shape}."
            )
        X = X.tolist()
    if isinstance(X, np.ndarray):
        if X.ndim not in (3, 4):
            raise ValueError(
                f"X as an array must have shape (n, H, W, 3) (RGB) or (n, H, W) (gray); got "
                f"shape {X.shape}."
            )
        _check_pixel_array(X, "X", batched=True)
        if len(X) == 0:
            raise ValueError("X is empty: expected at least one image.")
        return X
    if not isinstance(X, Sequence):
        try:
            X = list(X)
        except TypeError:
            raise TypeError(
                f"X must be a sequence of image paths / PIL images or a uint8 array; got "
                f"{type(X).__name__}."
            ) from None
    if len(X) == 0:
        raise ValueError("X is empty: expected at least one image.")
    if getattr(X, "checks_items_on_access", False):  # a lazy dataset view reads and checks each item when indexed
        return X
    for index, item in enumerate(X):
        check_image_item(item, index)
    return X


def check_image_item(item: object, index: int) -> None:
    """Raise TypeError / ValueError unless ``item`` is a file path, a PIL image or a uint8 array ``(H, W[, 3])``.

    Parameters
    ----------
    item : object
        One item of ``X``.
    index : int
        Its position, named in the error.

    Examples
    --------
    >>> import numpy as np
    >>> from qpm_sklearn.images import check_image_item
    >>> check_image_item(np.zeros((4, 4, 3), np.uint8), 0)
    """
    if isinstance(item, np.ndarray):
        _check_pixel_array(item, f"X[{index}]", batched=False)
    elif not isinstance(item, (*_PATH_TYPES, Image.Image)):
        raise TypeError(
            f"X[{index}] must be a file path (str or os.PathLike), a PIL image or a uint8 "
            f"array (H, W[, 3]); got {type(item).__name__}."
        )


def check_files_exist(X: Sequence[ImageLike] | np.ndarray) -> None:
    """Raise FileNotFoundError naming the first path item of ``X`` that is not a file.

    Cheap (one ``stat`` per path): lets a long run fail before it starts, not halfway.
    """
    if isinstance(X, np.ndarray):
        return
    for index, item in enumerate(X):
        if isinstance(item, _PATH_TYPES) and not os.path.isfile(item):
            raise FileNotFoundError(f"{_describe(item, index)}: no such image file.")


def _check_pixel_array(array: np.ndarray, name: str, *, batched: bool) -> None:
    # Only uint8 is accepted: a float array may be in [0, 1] or [0, 255] and guessing
    # would silently change the features. The error says how to convert.
    if array.dtype != np.uint8:
        raise TypeError(
            f"{name} must be a uint8 array with values 0..255; got dtype {array.dtype}. Convert "
            f"float images in [0, 1] with (x * 255).round().astype(np.uint8)."
        )
    spatial_rank = array.ndim - int(batched)
    expected = "(n, H, W, 3) or (n, H, W)" if batched else "(H, W, 3) or (H, W)"
    if spatial_rank not in (2, 3) or (spatial_rank == 3 and array.shape[-1] != 3):
        raise ValueError(f"{name} must have shape {expected}; got shape {array.shape}.")
    if 0 in array.shape[int(batched):]:
        raise ValueError(f"{name} has an empty spatial dimension: shape {array.shape}.")


# --------------------------------------------------------------------------------------------
# Reading one image
# --------------------------------------------------------------------------------------------


def _describe(item: object, index: int) -> str:
    if isinstance(item, _PATH_TYPES):
        return f"X[{index}] (file {os.fspath(item)!r})"
    return f"X[{index}]"


def read_image(item: ImageLike, index: int = 0, exif_transpose: bool = True) -> Image.Image:
    """Return ``item`` (path, PIL image or uint8 array) as an RGB PIL image.

    A file's EXIF orientation is applied (``PIL.ImageOps.exif_transpose``: the image as
    a viewer shows it, e.g. a phone photo taken upright) unless ``exif_transpose`` is
    False, which reproduces pipelines that ignore it. PIL images and arrays are taken
    as they are. Raises FileNotFoundError for a missing file and ValueError for a file
    that cannot be decoded or an image mode without a faithful RGB conversion; both
    name the item.
    """
    if isinstance(item, _PATH_TYPES):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"{_describe(item, index)}: no such image file.")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened) if exif_transpose else opened.copy()
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{_describe(item, index)} could not be decoded as an image: {exc}") from exc
    elif isinstance(item, np.ndarray):
        image = Image.fromarray(item)
    else:
        image = item
    if 0 in image.size:  # resizing an empty image would give a blank one: a silently wrong embedding
        raise ValueError(f"{_describe(item, index)} is an empty image: {image.size[0]} x {image.size[1]} pixels.")
    return to_rgb(image, _describe(item, index))


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Convert any PIL mode to RGB.

    Alpha is dropped (as transformers' image processors do), palettes are expanded,
    CMYK / YCbCr / LAB / HSV go through PIL's converters, and 16-bit gray ("I;16*",
    or "I" within 0..65535) is mapped linearly to 8 bits. Float ("F") images and
    "I" images outside the 16-bit range have no agreed scale and are refused.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"{name}: 32-bit integer image (mode 'I') with values outside 0..65535 has no "
                f"agreed conversion to RGB; convert it to 8 bits yourself."
            )
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        raise ValueError(
            f"{name}: floating-point image (mode 'F') has no agreed scale; convert it to 8 bits "
            f"(mode 'L' or 'RGB') yourself."
        )
    if mode == "P":
        # Through RGBA so that palette transparency is read, not warned about.
        image = image.convert("RGBA")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ValueError(f"{name}: cannot convert an image of mode {mode!r} to RGB: {exc}") from exc


def load_resized(
    item: ImageLike, index: int, image_size: int, resample: str = "bicubic", exif_transpose: bool = True
) -> npt.NDArray[np.uint8]:
    """Read ``item`` (see :func:`read_image`) and squash-resize it to ``(image_size, image_size)``; uint8 ``(S, S, 3)``.

    The aspect ratio is not preserved and nothing is cropped (docs/method.md#preprocessing); images smaller
    than a patch are simply upsampled.

    Parameters
    ----------
    item : str, path-like, PIL.Image.Image or ndarray
        One image.
    index : int
        Its position in the collection, named in errors.
    image_size : int
        Side of the output square.
    resample : {"bicubic", "bilinear", "nearest", "box", "hamming", "lanczos"}, default="bicubic"
        The PIL resampling filter (:data:`PREPROCESSING_FILTERS` gives each preprocessing's).
    exif_transpose : bool, default=True
        Apply a file's EXIF orientation (see :func:`read_image`).

    Returns
    -------
    pixels : ndarray of uint8, shape (image_size, image_size, 3)
        The resized RGB image.

    Examples
    --------
    >>> import numpy as np
    >>> from qpm_sklearn.images import load_resized
    >>> load_resized(np.zeros((30, 40, 3), np.uint8), 0, 14).shape
    (14, 14, 3)
    """
    _check_resample(resample)
    if isinstance(item, np.ndarray) and item.shape[:2] == (image_size, image_size):
        # Already the right size: skip PIL (it would only copy).
        return item if item.ndim == 3 else np.repeat(item[..., None], 3, axis=-1)
    image = read_image(item, index, exif_transpose)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling[resample.upper()])
    return np.asarray(image, dtype=np.uint8)


def _check_resample(resample: object) -> None:
    if resample not in RESAMPLING_FILTERS:
        raise ValueError(f"resample must be one of the PIL filters {RESAMPLING_FILTERS}; got {resample!r}.")


def _decode_chunk(items: list, indices: list, image_size: int, resample: str, exif_transpose: bool, pil_settings=None) -> np.ndarray:
    """:func:`load_resized` over several items; uint8 ``(len(items), S, S, 3)``.

    The unit of work of a decoding worker (one call per chunk amortises the
    inter-process round trip over several images). ``pil_settings``, from
    :func:`_pil_settings` in the calling process, are applied first.
    """
    if pil_settings is not None:
        from PIL import ImageFile

        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = pil_settings
    return np.stack([
        load_resized(item, index, image_size, resample, exif_transpose) for item, index in zip(items, indices)
    ])  # fmt: skip


def _pil_settings() -> tuple:
    """Pillow's module-level switches as this process has them.

    Users commonly lift the decompression-bomb limit or allow truncated JPEGs; worker
    processes must decode under the same rules, or they would refuse what this
    process accepts.
    """
    from PIL import ImageFile

    return Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES


def decode_batches(
    X: Sequence[ImageLike] | np.ndarray, batches: Iterable[Sequence[int] | npt.NDArray[np.integer]], image_size: int,
    resample: str = "bicubic", *, exif_transpose: bool = True, n_jobs: int | None = None, prefetch: int = 2,
    processes: bool | None = None,
) -> Iterator[npt.NDArray[np.uint8]]:  # fmt: skip
    """Yield uint8 ``(len(batch), S, S, 3)`` pixels for each batch of row ids, in order.

    Up to ``prefetch`` batches are decoded ahead of the one being consumed, so decoding
    overlaps whatever the caller does with the previous batch. A uint8 array already
    at ``image_size`` is sliced without any copy or worker. Files are decoded by
    ``n_jobs`` worker processes when ``n_jobs > 1`` (the exact same Pillow code as in
    this process, so the pixels are identical) unless this process is a daemon, which
    may not have children; everything else by ``n_jobs`` threads.

    Parameters
    ----------
    X : what :func:`check_images` returned
    batches : sequence of int arrays
        Row ids of ``X`` (increasing; a batch of consecutive ids of an array at
        ``image_size`` is a view, any other a copy).
    image_size : int
        Side of the output squares.
    resample : {"bicubic", "bilinear", "nearest", "box", "hamming", "lanczos"}, default="bicubic"
        The PIL resampling filter (:data:`PREPROCESSING_FILTERS` gives each preprocessing's).
    exif_transpose : bool, default=True
        Apply files' EXIF orientation (see :func:`read_image`).
    n_jobs : int, default=None
        See :func:`resolve_n_jobs`.
    prefetch : int, default=2
    processes : bool, default=None
        Force worker processes (True) or threads (False) for files; None chooses as above.
    """
    _check_resample(resample)
    n_jobs = resolve_n_jobs(n_jobs)
    if isinstance(X, np.ndarray) and X.shape[1:3] == (image_size, image_size):
        for batch in batches:
            consecutive = len(batch) and batch[-1] - batch[0] == len(batch) - 1
            pixels = X[batch[0] : batch[0] + len(batch)] if consecutive else X[np.asarray(batch)]
            yield np.repeat(pixels[..., None], 3, axis=-1) if pixels.ndim == 3 else pixels  # gray → RGB
        return
    with ExitStack() as stack:
        all_files = not isinstance(X, np.ndarray) and all(isinstance(item, _PATH_TYPES) for item in X)
        if processes is None:
            # A daemonic process (a multiprocessing pool's or DataLoader's worker) may not start any.
            processes = n_jobs > 1 and not multiprocessing.current_process().daemon
        item: Callable[[int], ImageLike]  # row id -> what _decode_chunk reads
        if all_files and processes:
            from joblib.externals.loky import get_reusable_executor

            executor = get_reusable_executor(max_workers=n_jobs)
            # Reused workers keep the working directory they started in: send absolute paths.
            item, settings = (lambda row: os.path.abspath(cast("str | os.PathLike[str]", X[row]))), _pil_settings()
        else:
            executor = stack.enter_context(ThreadPoolExecutor(n_jobs))
            item, settings = X.__getitem__, None
        pending: deque[list[Future[npt.NDArray[np.uint8]]]] = deque()

        def submit(batch):
            # About two chunks per worker and batch: balanced, yet few round trips.
            size = max(1, min(16, -(-len(batch) // (2 * n_jobs))))
            chunks = [[int(row) for row in batch[i : i + size]] for i in range(0, len(batch), size)]
            pending.append([
                executor.submit(
                    _decode_chunk, [item(row) for row in chunk], chunk, image_size, resample, exif_transpose, settings
                )
                for chunk in chunks
            ])  # fmt: skip

        batches = iter(batches)
        for batch in batches:
            submit(batch)
            if len(pending) > prefetch:
                break
        try:
            while pending:
                parts = [future.result() for future in pending.popleft()]
                upcoming = next(batches, None)
                if upcoming is not None:
                    submit(upcoming)
                yield parts[0] if len(parts) == 1 else np.concatenate(parts)
        finally:  # an error, or the consumer stopped early: drop the work queued ahead
            for future in (future for group in pending for future in group):
                future.cancel()


def image_key(item: ImageLike) -> bytes:
    """Content hash of one image: the file's bytes, or the pixels (with shape and mode).

    Keys the embedding cache: any change to the file or pixels changes the key.
    """
    digest = hashlib.blake2b(digest_size=20)
    if isinstance(item, _PATH_TYPES):
        try:
            with open(item, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except FileNotFoundError:
            raise FileNotFoundError(f"image file {os.fspath(item)!r} does not exist.") from None
    elif isinstance(item, Image.Image):
        digest.update(f"pil:{item.mode}:{item.size}".encode())
        digest.update(item.tobytes())
    else:
        array = np.ascontiguousarray(item)
        digest.update(f"array:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.digest()


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


def resolve_statistics(
    preprocessing: str, mean: npt.ArrayLike | None, std: npt.ArrayLike | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std used for normalisation.

    "imagenet": ``None`` means the ImageNet statistics; given values replace them.
    "paper": the dataset statistics are required (docs/method.md#preprocessing), e.g. CUB-200-2011
    ``mean=(0.4853, 0.4964, 0.4295), std=(0.2300, 0.2258, 0.2625)``.
    "auto": the statistics of the model's image-processor configuration, which the
    embedder reads and passes here as ``mean``/``std`` (both required).
    """
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}; got {preprocessing!r}.")
    if preprocessing == "auto" and (mean is None or std is None):
        raise ValueError(
            "preprocessing='auto' normalises with the statistics of the model's image-processor "
            f"configuration, passed as mean and std; got mean={mean!r}, std={std!r}."
        )
    if preprocessing == "paper" and (mean is None or std is None):
        raise ValueError(
            "preprocessing='paper' needs the dataset's mean and std (see docs/method.md#preprocessing), e.g. for "
            "CUB-200-2011 mean=(0.4853, 0.4964, 0.4295), std=(0.2300, 0.2258, 0.2625); got "
            f"mean={mean!r}, std={std!r}."
        )
    stats: list[tuple[float, ...]] = []
    for name, value, default in (("mean", mean, IMAGENET_MEAN), ("std", std, IMAGENET_STD)):
        if value is None:
            stats.append(default)
            continue
        array = np.asarray(value, dtype=np.float64).ravel() if np.ndim(value) <= 1 else None
        if array is None or array.shape != (3,) or not np.all(np.isfinite(array)):
            raise ValueError(f"{name} must be 3 finite numbers (one per RGB channel); got {value!r}.")
        if name == "std" and np.any(array <= 0):
            raise ValueError(f"std must be positive; got {value!r}.")
        stats.append(tuple(float(v) for v in array))
    return stats[0], stats[1]


def normalize(
    pixels: torch.Tensor,
    *,
    preprocessing: str = "imagenet",
    mean: npt.ArrayLike | None = None,
    std: npt.ArrayLike | None = None,
) -> torch.Tensor:
    """uint8 ``(B, S, S, 3)`` (any device) → float32 pixel values ``(B, 3, S, S)``.

    "imagenet" and "auto": ``(x/255 − mean)/std``. "paper": the same with the dataset statistics,
    then each image is mapped by its global min–max (over all pixels and channels) to
    [0, 1] and clipped (docs/method.md#preprocessing); a constant image, whose range is 0, maps to 0
    instead of NaN.
    """
    import torch

    mean, std = resolve_statistics(preprocessing, mean, std)
    values = pixels.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=values.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=values.device).view(1, 3, 1, 1)
    values = values.sub_(mean_t).div_(std_t)
    if preprocessing == "paper":
        flat = values.flatten(1)
        low = flat.amin(1).view(-1, 1, 1, 1)
        span = (flat.amax(1).view(-1, 1, 1, 1) - low).clamp_min(torch.finfo(torch.float32).tiny)
        values = values.sub_(low).div_(span).clamp_(0.0, 1.0)
    return values.contiguous()
