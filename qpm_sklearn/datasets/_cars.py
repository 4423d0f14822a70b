"""Stanford Cars (Krause et al., 2013): the devkit's .mat annotations and its train/test split."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._folder import dataset_bunch, first_missing, require_file

_CARS_DIR = "StanfordCars"
_DEVKIT = "car_devkit"
_TRAIN_ANNOTATIONS = f"{_DEVKIT}/cars_train_annos.mat"
_TEST_ANNOTATIONS = "cars_test_annos_withlabels.mat"  # at the dataset root, not in the devkit
_META = f"{_DEVKIT}/cars_meta.mat"


def _find_cars_dir(root: Path) -> Path:
    """``root`` itself when it holds car_devkit/, else ``root/StanfordCars``."""
    for folder in (root, root / _CARS_DIR):
        if (folder / _DEVKIT).is_dir():
            return folder
    raise FileNotFoundError(
        f"root: expected the Stanford Cars folder {_DEVKIT}/ in {root} or in {root / _CARS_DIR}; "
        "neither exists."
    )


def _load_mat(path: Path, variable: str, what: str) -> np.ndarray:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    require_file(path, what)
    try:
        contents = loadmat(path)
    # scipy reports a damaged file with many exception types and never names it.
    except (MatReadError, ValueError, TypeError, OSError, EOFError, KeyError, IndexError, NotImplementedError, zlib.error) as exc:
        raise ValueError(f"{what}: cannot read {path} as a MATLAB .mat file ({type(exc).__name__}: {exc}); the file looks damaged, download it again.") from None
    if variable not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise ValueError(f"{path}: expected the variable {variable!r}; found {found}.")
    return contents[variable]


def _scalars(array: np.ndarray) -> list:
    """Unwrap a MATLAB cell / struct field: every element is a 1-element array."""
    return [np.asarray(value).ravel()[0] for value in np.asarray(array).ravel()]


def _read_annotations(path: Path, what: str) -> tuple[list[str], np.ndarray]:
    """File names and 0-based classes of an ``annotations`` struct array, in its order."""
    annotations = _load_mat(path, "annotations", what)
    fields = annotations.dtype.names or ()
    for field in ("fname", "class"):
        if field not in fields:
            raise ValueError(
                f"{path}: the annotations need the field {field!r} (the test annotations must be the "
                f"'withlabels' version); found the fields {list(fields)}."
            )
    try:
        fnames = [str(name) for name in _scalars(annotations["fname"])]
        labels = np.array([int(c) for c in _scalars(annotations["class"])], dtype=np.int64) - 1
    except (IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: the annotations' fname and class fields must hold one file name and one class number each ({exc}).") from None
    return fnames, labels


def load_stanford_cars(root: str | os.PathLike[str]) -> Bunch:
    """Load Stanford Cars (196 classes) with the official devkit split.

    Reads the layout of the DINO-QPM code (docs/datasets.md) with :func:`scipy.io.loadmat`::

        StanfordCars/
          car_devkit/cars_train_annos.mat        struct array 'annotations' (fname, class 1..196, bbox_*)
          car_devkit/cars_meta.mat               cell array 'class_names'
          cars_test_annos_withlabels.mat         test annotations, at the root (not in car_devkit)
          cars_train/<fname>                     8144 images
          cars_test/<fname>                      8041 images

    Rows follow the annotation arrays, training images first. The bounding boxes are not used.
    Stanford Cars has no segmentations, so ``mask_paths`` is ``None``.

    Parameters
    ----------
    root : str or path-like
        The StanfordCars folder itself (the one holding car_devkit/) or its parent.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``paths``, ``labels`` (int64, 0-based), ``class_names`` (from cars_meta.mat), ``split``
        ("train"/"test"), ``is_train``, ``mask_paths`` (``None``), ``root`` — as documented in
        :func:`qpm_sklearn.datasets.load_image_folder`.

    Raises
    ------
    FileNotFoundError
        Naming the annotation file or image that is missing.
    ValueError
        When an annotation file lacks a field or a class is out of range.

    Examples
    --------
    >>> from qpm_sklearn.datasets import load_stanford_cars
    >>> data = load_stanford_cars("~/datasets")  # doctest: +SKIP
    >>> len(data.class_names), int(data.is_train.sum())  # doctest: +SKIP
    (196, 8144)
    """
    cars_dir = _find_cars_dir(Path(root).expanduser().resolve())
    meta = _load_mat(cars_dir / _META, "class_names", "Stanford Cars class names")
    try:
        class_names = [str(name) for name in _scalars(meta)]
    except IndexError:
        raise ValueError(f"{cars_dir / _META}: class_names must hold one name per class; some entry is empty.") from None
    paths, labels, split = [], [], []
    for name, annotations, images in (
        ("train", _TRAIN_ANNOTATIONS, "cars_train"),
        ("test", _TEST_ANNOTATIONS, "cars_test"),
    ):
        fnames, codes = _read_annotations(cars_dir / annotations, f"Stanford Cars {name} annotations")
        if len(codes) and (codes.min() < 0 or codes.max() >= len(class_names)):
            raise ValueError(
                f"{cars_dir / annotations}: classes must lie in 1..{len(class_names)} "
                f"(the classes of {_META}); got {codes.min() + 1}..{codes.max() + 1}."
            )
        split_paths = [str(cars_dir / images / fname) for fname in fnames]
        first_missing(split_paths, f"Stanford Cars {name} images listed in {cars_dir / annotations}")
        paths += split_paths
        labels.append(codes)
        split += [name] * len(fnames)
    return dataset_bunch(
        paths=paths,
        labels=np.concatenate(labels),
        class_names=class_names,
        split=split,
        root=cars_dir,
    )
