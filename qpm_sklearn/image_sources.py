"""PyTorch, Hugging Face and dataframe image containers → what :func:`~qpm_sklearn.images.check_images` takes.

The embedders hand every input to :func:`as_images` first. It recognises, by duck typing
(torchvision and ``datasets`` are never imported):

- a ``torch.Tensor`` batch ``(N, C, H, W)`` or a sequence of ``(C, H, W)`` / ``(H, W)``
  tensors, uint8 (0..255) or floating point in [0, 1] (torchvision's ``ToTensor`` scale;
  values outside it are refused, since a normalised tensor has no faithful pixels);
- a map-style torch ``Dataset`` (``ImageFolder`` and the like) whose items are images or
  ``(image, label, ...)`` tuples: it is read lazily, one item at a time, and labels are
  ignored;
- an iterable ``DataLoader`` (or ``IterableDataset``) yielding batches or items of the
  forms above (``(images, labels)`` batches included): it is read once, whole, into
  memory, since it cannot be indexed;
- a Hugging Face ``datasets.Dataset`` (any format, "torch" included) and items that are
  dicts: the image column is ``image_column``, or else the dataset's one column of
  ``Image`` feature type, or a key named "image" or "img";
- a one-column polars DataFrame (pandas frames are handled by ``check_images``).

Floating-point pixels become uint8 as ``(x * 255).round()`` in float32, so a float tensor
embeds exactly as the uint8 array ``(x.numpy() * 255).round().astype(np.uint8)`` would.
Anything else is returned unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DatasetImages", "as_images", "tensor_to_pixels"]

_IMAGE_KEYS = ("image", "img")


def _torch() -> Any:
    # An object can only be a torch tensor or dataset if torch is already imported.
    return sys.modules.get("torch")


def _is_tensor(value: object) -> bool:
    torch = _torch()
    return torch is not None and isinstance(value, torch.Tensor)


def tensor_to_pixels(tensor: Any, name: str = "X", *, batched: bool = False, channels_last: bool = False) -> np.ndarray:
    """A torch tensor of images → uint8 numpy pixels, channels last.

    Parameters
    ----------
    tensor : torch.Tensor
        ``(C, H, W)`` with C = 1 or 3, or ``(H, W)``; with ``batched`` ``(N, C, H, W)``.
        uint8, or floating point with values in [0, 1]. ``channels_last`` reads ``(H, W, C)``
        instead (the layout of Hugging Face ``datasets``' torch format).
    name : str, default="X"
        Named in errors.
    batched : bool, default=False
    channels_last : bool, default=False

    Returns
    -------
    pixels : ndarray of uint8
        ``(H, W, 3)`` or ``(H, W)`` (gray); with ``batched`` ``(N, H, W, 3)`` or ``(N, H, W)``.

    Examples
    --------
    >>> import torch
    >>> from qpm_sklearn.image_sources import tensor_to_pixels
    >>> tensor_to_pixels(torch.ones(2, 3, 4, 5), batched=True).shape
    (2, 4, 5, 3)
    >>> int(tensor_to_pixels(torch.full((3, 2, 2), 0.5))[0, 0, 0])
    128
    """
    torch = _torch()
    tensor = tensor.detach()
    expected = "(N, C, H, W)" if batched else "(C, H, W) or (H, W)"
    spatial = tensor.ndim - int(batched)
    if spatial == 2:
        channels_axis = None
    elif spatial == 3:
        channels_axis = tensor.ndim - 1 if channels_last else int(batched)
        if tensor.shape[channels_axis] not in (1, 3):
            raise ValueError(
                f"{name} must be a tensor {expected} with C = 1 (gray) or 3 (RGB) channels; got shape "
                f"{tuple(tensor.shape)}. Permute a channels-last tensor to channels first."
            )
    else:
        raise ValueError(f"{name} must be a tensor {expected}; got shape {tuple(tensor.shape)}.")
    if tensor.dtype == torch.uint8:
        values = tensor
    elif tensor.is_floating_point():
        values = tensor.to(torch.float32)
        if values.numel() and not bool(torch.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise ValueError(
                f"{name}: a floating-point image tensor must hold values in [0, 1] (torchvision's ToTensor "
                f"scale); got values in [{float(values.nan_to_num().min()):g}, {float(values.nan_to_num().max()):g}]"
                f"{' and non-finite values' if not bool(torch.isfinite(values).all()) else ''}. Pass the tensor "
                f"before normalisation."
            )
        values = (values * 255).round_().to(torch.uint8)
    else:
        raise TypeError(f"{name} must be a uint8 tensor or a floating-point tensor in [0, 1]; got dtype {tensor.dtype}.")
    if channels_axis is not None:
        if not channels_last:
            values = values.movedim(channels_axis, -1)
        if values.shape[-1] == 1:
            values = values[..., 0]
    return np.ascontiguousarray(values.cpu().numpy())


def _image_column(dataset: Any, image_column: str | None) -> str:
    columns = list(dataset.column_names)
    if image_column is not None:
        if image_column not in columns:
            raise ValueError(f"image_column={image_column!r} is not a column of the dataset; its columns are {columns}.")
        return image_column
    features = getattr(dataset, "features", None) or {}
    typed = [column for column in columns if type(features.get(column)).__name__ == "Image"]
    named = [column for column in columns if column in _IMAGE_KEYS]
    found = typed or named
    if len(found) != 1:
        raise ValueError(
            f"cannot tell which column of the dataset holds the images (columns {columns}, "
            f"{len(typed)} of type Image); pass image_column=."
        )
    return found[0]


def _dict_key(item: dict, name: str, image_column: str | None) -> str:
    keys = [image_column] if image_column is not None else [key for key in _IMAGE_KEYS if key in item]
    if len(keys) != 1 or keys[0] not in item:
        raise ValueError(f"{name} is a dict with keys {list(item)}; pass image_column= to name the one holding the image.")
    return keys[0]


def _item_image(item: Any, name: str, image_column: str | None) -> Any:
    """One dataset item → one image that ``check_images`` accepts (labels and other fields dropped)."""
    if isinstance(item, dict):
        item = item[_dict_key(item, name, image_column)]
    elif isinstance(item, (tuple, list)):  # (image, label, ...): the label is ignored
        if not item:
            raise ValueError(f"{name} is an empty {type(item).__name__}; expected an image or (image, label).")
        item = item[0]
    if _is_tensor(item):
        return tensor_to_pixels(item, name)
    return item


class DatasetImages(Sequence):
    """A map-style dataset seen as a sequence of images, each read when it is indexed.

    Parameters
    ----------
    dataset : indexable with ``len``
        A torch ``Dataset`` (items: images or ``(image, label, ...)``) or a Hugging Face
        ``datasets.Dataset`` (items: dicts).
    image_column : str, default=None
        The key of the image in dict items; see :func:`as_images`.
    """

    #: check_images leaves the items to __getitem__, which converts and checks each on access.
    checks_items_on_access = True

    def __init__(self, dataset: Any, image_column: str | None = None) -> None:
        self.dataset = dataset
        self.image_column = image_column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        image = _item_image(self.dataset[index], f"X[{index}]", self.image_column)
        from .images import check_image_item

        check_image_item(image, index)
        return image


def _is_hf_dataset(X: object) -> bool:
    return hasattr(X, "column_names") and hasattr(X, "features") and hasattr(X, "__getitem__")


def _loader_images(loader: Any, image_column: str | None) -> list:
    """Every image an iterable (DataLoader, IterableDataset) yields, read into a list."""
    images: list = []
    for batch_index, batch in enumerate(loader):
        name = f"batch {batch_index} of X"
        if isinstance(batch, dict):
            batch = batch[_dict_key(batch, name, image_column)]
        elif isinstance(batch, (tuple, list)) and batch and (_is_tensor(batch[0]) and batch[0].ndim == 4):
            batch = batch[0]  # (images, labels, ...)
        if _is_tensor(batch) and batch.ndim == 4:
            images.extend(tensor_to_pixels(batch, name, batched=True))
        elif isinstance(batch, (tuple, list)) and batch and _is_collated_pair(batch):
            images.extend(_item_image(image, name, image_column) for image in batch[0])
        elif isinstance(batch, (tuple, list)):
            images.extend(_item_image(item, name, image_column) for item in batch)
        else:
            images.append(_item_image(batch, name, image_column))
    return images


def _is_collated_pair(batch: Sequence) -> bool:
    # (list of images, tensor of labels): what default_collate makes of (image, label) items it cannot stack.
    return len(batch) >= 2 and isinstance(batch[0], (list, tuple)) and _is_tensor(batch[1]) and batch[1].ndim == 1


def as_images(X: Any, *, image_column: str | None = None) -> Any:
    """Turn a torch, Hugging Face or polars container of images into one ``check_images`` takes.

    Parameters
    ----------
    X : object
        See the module's description for what is recognised; anything else is returned
        unchanged (``check_images`` then validates it).
    image_column : str, default=None
        The column (or dict key) of the images in a Hugging Face dataset or in dict items.
        None: the dataset's one column of ``Image`` feature type, or a key "image" / "img".

    Returns
    -------
    images : ndarray, sequence or X
        A uint8 array ``(n, H, W[, 3])`` for a tensor batch, a list for a DataLoader or a
        sequence of tensors, a lazy :class:`DatasetImages` for a map-style dataset.

    Examples
    --------
    >>> import torch
    >>> from qpm_sklearn.image_sources import as_images
    >>> as_images(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)).shape
    (2, 8, 8, 3)
    >>> [image.shape for image in as_images([torch.zeros(1, 5, 6)])]
    [(5, 6)]
    """
    if hasattr(X, "to_series") and hasattr(X, "columns") and not hasattr(X, "iloc"):  # polars DataFrame
        if len(X.columns) != 1:
            raise ValueError(
                f"X is a DataFrame with {len(X.columns)} columns {list(X.columns)[:5]}; pass the one column "
                f"that holds the images."
            )
        return X.to_series(0).to_list()
    if _is_hf_dataset(X):
        column = _image_column(X, image_column)
        narrowed = X.select_columns([column]) if hasattr(X, "select_columns") else X
        # datasets' numpy format gives (H, W, C) arrays, taken as they are; its torch format gives
        # (C, H, W) tensors, torch's own layout.
        return DatasetImages(narrowed, column)
    torch = _torch()
    if torch is None:
        return X
    if isinstance(X, torch.Tensor):
        if X.ndim != 4:  # (C, H, W) and (N, H, W) look alike: a batch must say both
            raise ValueError(
                f"X as a tensor must be a batch (N, C, H, W); got shape {tuple(X.shape)}. Wrap one image in a "
                f"list ([X]) or add the batch axis (X[None])."
            )
        return tensor_to_pixels(X, batched=True)
    data = torch.utils.data
    if isinstance(X, (data.DataLoader, data.IterableDataset)):
        return _loader_images(X, image_column)
    if isinstance(X, data.Dataset) and hasattr(X, "__len__"):
        return DatasetImages(X, image_column)
    if isinstance(X, (list, tuple)) and any(_is_tensor(item) or isinstance(item, dict) for item in X):
        return [_item_image(item, f"X[{index}]", image_column) for index, item in enumerate(X)]
    return X
