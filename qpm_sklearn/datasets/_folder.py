"""Image folders (one subfolder per class) and the result type shared by all dataset loaders."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.utils import Bunch

# Compared case-insensitively; the formats Pillow reads without plugins.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
# Folder names (compared case-insensitively) that mark a split, not a class.
SPLIT_NAMES = frozenset({"train", "training", "test", "testing", "val", "valid", "validation", "dev", "eval"})


def dataset_bunch(*, paths, labels, class_names, split, root, mask_paths=None, **extra) -> Bunch:
    """The result every loader returns (documented in :func:`load_image_folder`)."""
    split = None if split is None else np.asarray(split, dtype=str)
    return Bunch(
        paths=[str(p) for p in paths],
        labels=np.asarray(labels, dtype=np.int64),
        class_names=list(class_names),
        split=split,
        is_train=None if split is None else split == "train",
        mask_paths=mask_paths,
        root=str(root),
        **extra,
    )


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` or raise a FileNotFoundError that names the file and its role."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: expected the file {path}, which does not exist.")
    return path


def first_missing(paths, what: str) -> None:
    """Raise a FileNotFoundError naming the first of ``paths`` that is not a file."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} {what} are missing, the first is {missing[0]}."
        )


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _class_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, hidden entries skipped), in sorted order."""
    found: list[str] = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not _is_hidden(d))
        found.extend(
            os.path.join(directory, name)
            for name in sorted(files)
            if not _is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        )
    return found


def _scan_classes(folder: Path) -> dict[str, list[str]]:
    """``{class name: image paths}`` for the subfolders of ``folder``; empty classes are errors."""
    if not folder.is_dir():
        raise FileNotFoundError(f"root: expected the folder {folder}, which does not exist.")
    entries = sorted((e for e in os.scandir(folder) if not _is_hidden(e.name)), key=lambda e: e.name)
    stray = [e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    if stray:
        warnings.warn(
            f"{len(stray)} image(s) directly inside {folder} (e.g. {stray[0]!r}) belong to no class "
            "subfolder and are ignored.",
            UserWarning,
            stacklevel=3,
        )
    classes = {e.name: _class_images(Path(e.path)) for e in entries if e.is_dir()}
    if not classes:
        raise FileNotFoundError(f"root: expected one subfolder per class in {folder}; found none.")
    empty = [name for name, images in classes.items() if not images]
    if empty:
        raise ValueError(
            f"Class folders without any image ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}: "
            f"{empty}. Remove them or add images; an empty class cannot be learned."
        )
    return classes


def _refuse_split_layout(folder: Path, classes: dict[str, list[str]]) -> None:
    """Raise when every "class" of ``folder`` is a split name holding class subfolders of its own."""
    names = sorted(classes)
    nested = all(any(e.is_dir() and not _is_hidden(e.name) for e in os.scandir(folder / n)) for n in names)
    if all(n.lower() in SPLIT_NAMES for n in names) and nested:
        raise ValueError(
            f"root: {folder} looks like a split layout (root/<split>/<class>/<image>): its subfolders "
            f"{names} are split names holding class folders, so they would be read as {len(names)} "
            f"classes. Pass split_dirs={tuple(names)!r} (training split first), or point root at one split."
        )


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    split_dirs: Sequence[str] | None = None,
    labels: Literal["codes", "names"] = "codes",
) -> Bunch:
    """Load an image-classification dataset stored as one subfolder per class.

    ``root/<class>/<image>`` (``split_dirs=None``) or ``root/<split>/<class>/<image>`` for every
    split named in ``split_dirs``. The class of an image is the name of its class subfolder; class
    codes follow the sorted class names. Images are found recursively inside a class folder, with
    the extensions in ``IMAGE_EXTENSIONS`` matched case-insensitively; hidden files and folders
    (names starting with ".") and other files are skipped. A class folder without any image raises
    a ValueError (an empty class cannot be learned and would shift no codes silently). Without
    ``split_dirs``, a root whose subfolders are all split names (``train``, ``test``, ``val``, ...)
    that hold folders of their own is refused with a ValueError: it is a split layout, and
    reading it would give the classes ``['test', 'train']``.

    Parameters
    ----------
    root : str or path-like
        The dataset folder.
    split_dirs : sequence of str, default=None
        Names of split subfolders, e.g. ``("train", "test")``. The first one counts as the
        training split (``is_train``). Classes are the union over the splits (a warning names
        classes missing from some split).
    labels : {"codes", "names"}, default="codes"
        ``"codes"``: ``labels`` holds 0-based class codes. ``"names"``: ``labels`` holds each
        image's class folder name (str), as ``qpm-sklearn fit`` uses them; a classifier fitted on
        them takes the names wherever it takes a class.

    Returns
    -------
    data : sklearn.utils.Bunch
        The result shared by every loader of :mod:`qpm_sklearn.datasets`:

        - ``paths``: list of str, absolute image paths, sorted by (split, class, file name);
        - ``labels``: int64 array, 0-based class codes (index into ``class_names``); with
          ``labels="names"``, a str array of the class names;
        - ``class_names``: list of str;
        - ``split``: str array with the split of each image (``None`` without ``split_dirs``);
        - ``is_train``: bool array, ``split == "train"`` (for image folders: ``split ==
          split_dirs[0]``), ``None`` without splits;
        - ``mask_paths``: list of segmentation-mask paths or ``None`` (always ``None`` here);
        - ``root``: the resolved dataset folder.

    Examples
    --------
    >>> from qpm_sklearn.datasets import load_image_folder
    >>> data = load_image_folder("flowers", split_dirs=("train", "test"))  # doctest: +SKIP
    >>> X_train = [p for p, t in zip(data.paths, data.is_train) if t]  # doctest: +SKIP
    >>> load_image_folder("flowers/train", labels="names").labels[:2]  # doctest: +SKIP
    array(['daisy', 'daisy'], dtype='<U5')
    """
    if not isinstance(labels, str) or labels not in ("codes", "names"):
        raise ValueError(f'labels must be "codes" or "names"; got {labels!r}.')
    root = Path(root).expanduser().resolve()
    per_split: dict[str | None, dict[str, list[str]]]
    if split_dirs is None:
        per_split = {None: _scan_classes(root)}
        _refuse_split_layout(root, per_split[None])
    else:
        if isinstance(split_dirs, str) or len(split_dirs) == 0:
            raise ValueError(f"split_dirs must be a non-empty sequence of folder names; got {split_dirs!r}.")
        per_split = {name: _scan_classes(root / name) for name in split_dirs}
    class_names = sorted(set().union(*per_split.values()))
    for name, classes in per_split.items():
        absent = sorted(set(class_names) - set(classes))
        if absent:
            warnings.warn(f"Split {name!r} of {root} has no folder for the classes {absent}.", UserWarning, stacklevel=2)
    code = {name: i for i, name in enumerate(class_names)}
    paths, codes, split = [], [], []
    for name, classes in per_split.items():
        for class_name, images in classes.items():
            paths += images
            codes += [code[class_name]] * len(images)
            split += [name] * len(images)
    data = dataset_bunch(
        paths=paths,
        labels=codes,
        class_names=class_names,
        split=None if split_dirs is None else split,
        root=root,
    )
    if split_dirs is not None:
        data.is_train = data.split == split_dirs[0]
    if labels == "names":
        data.labels = np.asarray(class_names, dtype=str)[data.labels]
    return data
