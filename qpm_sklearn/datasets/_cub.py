"""CUB-200-2011: the official metadata files, its train/test split and the bird segmentations."""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from sklearn.utils import Bunch

from ._folder import dataset_bunch, first_missing, require_file

_CUB_DIR = "CUB_200_2011"


def _find_cub_dir(root: Path) -> Path:
    """The folder holding images.txt: ``root`` itself, ``root/CUB_200_2011`` or ``root/CUB200/CUB_200_2011``."""
    candidates = [root, root / _CUB_DIR, root / "CUB200" / _CUB_DIR]
    for folder in candidates:
        if (folder / "images.txt").is_file():
            return folder
    raise FileNotFoundError(
        "root: expected the CUB-200-2011 file images.txt in one of "
        + ", ".join(str(c) for c in candidates)
        + "; none exists."
    )


def _read_numbered_table(path: Path, n_fields: int) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of a whitespace-separated CUB metadata file (UTF-8; a leading
    byte-order mark, which editors on Windows add, is dropped); the last field keeps inner spaces."""
    rows = []
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    for number, line_bytes in enumerate(raw.splitlines(), start=1):
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path}, line {number}: not UTF-8 text (a damaged or binary file?): {line_bytes[:40]!r}.") from None
        if not line.strip():
            continue
        fields = line.split(maxsplit=n_fields - 1)
        if len(fields) != n_fields:
            raise ValueError(f"{path}, line {number}: expected {n_fields} fields, got {line.rstrip()!r}.")
        rows.append((number, fields))
    return rows


def _read_table(path: Path, n_fields: int) -> list[list[str]]:
    """Rows of a whitespace-separated CUB metadata file; the last field keeps any inner spaces."""
    return [fields for _, fields in _read_numbered_table(path, n_fields)]


def _is_count(text: str) -> bool:
    return re.fullmatch(r"[0-9]+", text) is not None


def _unique_ids(path: Path, rows: list[tuple[int, list[str]]], what: str = "image id") -> dict[str, tuple[int, str]]:
    """``{id: (line, rest)}`` of numbered rows whose first field is an integer id; an id listed
    twice is refused when its values differ (a repeated identical line is harmless)."""
    seen: dict[str, tuple[int, str]] = {}
    for number, (key, *rest) in rows:
        if not _is_count(key):
            raise ValueError(f"{path}, line {number}: expected an integer {what} first; got {key!r}.")
        value = " ".join(rest).strip()
        if key in seen and seen[key][1] != value:
            first, previous = seen[key]
            raise ValueError(
                f"{path}, line {number}: {what} {key} is listed again with another value "
                f"({value!r}; line {first} has {previous!r})."
            )
        seen.setdefault(key, (number, value))
    return seen


def _id_map(path: Path, image_ids: list[str], *, integer_values: bool = False) -> dict[str, str]:
    """``{image id: value}`` of a two-column file, checked to cover exactly the ids of images.txt."""
    numbered = _unique_ids(path, _read_numbered_table(path, 2))
    if integer_values:
        for number, value in numbered.values():
            if not _is_count(value.removeprefix("-")):
                raise ValueError(f"{path}, line {number}: expected an integer value; got {value!r}.")
    values = {key: value for key, (_, value) in numbered.items()}
    if set(values) != set(image_ids):
        missing = sorted(set(image_ids) - set(values), key=int)
        extra = sorted(set(values) - set(image_ids), key=int)
        raise ValueError(
            f"{path} must list the image ids of images.txt exactly; "
            f"missing ids {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unknown ids {extra[:5]}{'...' if len(extra) > 5 else ''}."
        )
    return {i: v.strip() for i, v in values.items()}


def _as_ints(values, path: Path, allowed=None) -> np.ndarray:
    try:
        ints = np.array([int(v) for v in values], dtype=np.int64)
    except ValueError as exc:
        raise ValueError(f"{path}: expected integer values; {exc}.") from None
    if allowed is not None and not np.isin(ints, allowed).all():
        raise ValueError(f"{path}: expected values in {allowed}; got {sorted(set(ints) - set(allowed))}.")
    return ints


def _class_names(cub_dir: Path, labels: np.ndarray, relpaths: list[str]) -> list[str]:
    """Names from classes.txt, or else the image folder name of each class (``001.Black_footed_Albatross``)."""
    n_classes = int(labels.max()) + 1
    classes_file = cub_dir / "classes.txt"
    if classes_file.is_file():
        names = {key: name for key, (_, name) in _unique_ids(classes_file, _read_numbered_table(classes_file, 2), "class id").items()}
        ids = [str(c + 1) for c in range(n_classes)]
        missing = [i for i in ids if i not in names]
        if missing:
            raise ValueError(f"{classes_file} has no name for the class ids {missing[:5]}.")
        return [names[i].strip() for i in ids]
    folder_of: dict[int, str] = {}
    for label, relpath in zip(labels, relpaths):
        folder_of.setdefault(int(label), relpath.split("/")[0])
    return [folder_of.get(c, str(c + 1)) for c in range(n_classes)]


def _without_number(name: str) -> str:
    """``"009.Brewer_Blackbird"`` → ``"Brewer_Blackbird"`` (the class-number prefix of CUB's names)."""
    return re.sub(r"^\d+\.", "", name)


def load_cub(
    root: str | os.PathLike[str], *, labels: Literal["codes", "names"] = "codes", parts: bool = False
) -> Bunch:
    """Load CUB-200-2011 (Wah et al., 2011) with its official train/test split.

    Reads the metadata files of the official archive, as the DINO-QPM code does:
    ``images.txt`` (``<image id> <class folder>/<file>.jpg``, the row order of the result),
    ``image_class_labels.txt`` (``<image id> <class 1..200>``, made 0-based),
    ``train_test_split.txt`` (``<image id> <1 = train, 0 = test>``: 5994 train / 5794 test images)
    and, when present, ``classes.txt`` for the class names. Images are ``images/<class
    folder>/<file>.jpg``. The bird segmentations (a separate download) are
    ``segmentations/<class folder>/<file>.png`` inside the CUB_200_2011 folder or beside it; when
    that folder exists every image must have its mask.

    Parameters
    ----------
    root : str or path-like
        The CUB_200_2011 folder itself (the one holding images.txt), or a folder containing it
        as ``root/CUB_200_2011`` or ``root/CUB200/CUB_200_2011`` (the DINO-QPM layout).
    labels : {"codes", "names"}, default="codes"
        ``"codes"``: ``labels`` holds the 0-based class codes and ``class_names`` CUB's names
        as written (``"009.Brewer_Blackbird"``). ``"names"``: ``labels`` holds each image's class
        name without the number prefix (``"Brewer_Blackbird"``), and so does ``class_names``; a
        classifier fitted on such labels takes the names wherever it takes a class, e.g.
        ``clf.compare_classes("Brewer_Blackbird", "Rusty_Blackbird")``.
    parts : bool, default=False
        Also read the part annotations ``parts/parts.txt`` (``<part id> <name>``, the 15
        keypoints) and ``parts/part_locs.txt`` (``<image id> <part id> <x> <y> <visible>``, in
        original image pixels), for :func:`qpm_sklearn.metrics.part_alignment`.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``paths`` (list of str, images.txt order), ``labels`` (int64, 0-based; str with
        ``labels="names"``), ``class_names`` (list of str, in class-number order), ``split``
        (str array, "train"/"test"), ``is_train`` (bool array), ``mask_paths`` (list of str, or
        ``None`` without segmentations/), ``image_ids`` (int64, the ids of images.txt) and
        ``root`` (the resolved CUB_200_2011 folder). Read masks with :func:`load_masks`.
        With ``parts=True`` also ``part_names`` (list of str, part-id order), ``keypoints``
        (float64 ``(n, n_parts, 3)``: x, y, visible 0/1, in original pixels, rows in images.txt
        order) and ``image_sizes`` (int64 ``(n, 2)``: width, height of each image file).

    Raises
    ------
    FileNotFoundError
        Naming the metadata file, image or mask that is missing.
    ValueError
        When the metadata files disagree (ids, labels or split values), or ``labels`` is neither
        "codes" nor "names".

    Examples
    --------
    >>> from qpm_sklearn.datasets import load_cub
    >>> data = load_cub("~/datasets/CUB200")  # doctest: +SKIP
    >>> int(data.is_train.sum()), int((~data.is_train).sum())  # doctest: +SKIP
    (5994, 5794)
    >>> load_cub("~/datasets/CUB200", labels="names").labels[:2]  # doctest: +SKIP
    array(['Black_footed_Albatross', 'Black_footed_Albatross'], dtype='<U30')
    """
    if labels not in ("codes", "names"):
        raise ValueError(f'labels must be "codes" or "names"; got {labels!r}.')
    cub_dir = _find_cub_dir(Path(root).expanduser().resolve())
    images_file = cub_dir / "images.txt"
    rows = _read_numbered_table(images_file, 2)
    first_line: dict[str, int] = {}
    for number, (image_id, _) in rows:
        if not _is_count(image_id):
            raise ValueError(f"{images_file}, line {number}: expected an integer image id first; got {image_id!r}.")
        if image_id in first_line:
            raise ValueError(f"{images_file}, line {number}: image id {image_id} is listed again (first on line {first_line[image_id]}).")
        first_line[image_id] = number
    image_ids = [image_id for _, (image_id, _) in rows]
    relpaths = [relpath.strip() for _, (_, relpath) in rows]

    labels_file = require_file(cub_dir / "image_class_labels.txt", "CUB-200-2011 class labels")
    label_of = _id_map(labels_file, image_ids, integer_values=True)
    codes = _as_ints([label_of[i] for i in image_ids], labels_file) - 1
    if codes.min() < 0:
        raise ValueError(f"{labels_file}: class labels must start at 1; found {codes.min() + 1}.")

    split_file = require_file(cub_dir / "train_test_split.txt", "CUB-200-2011 train/test split")
    split_of = _id_map(split_file, image_ids, integer_values=True)
    is_train = _as_ints([split_of[i] for i in image_ids], split_file, allowed=[0, 1]).astype(bool)

    paths = [str(cub_dir / "images" / relpath) for relpath in relpaths]
    first_missing(paths, f"CUB-200-2011 images listed in {images_file}")
    class_names = _class_names(cub_dir, codes, relpaths)
    data = dataset_bunch(
        paths=paths,
        labels=codes,
        class_names=class_names,
        split=np.where(is_train, "train", "test"),
        mask_paths=_mask_paths(cub_dir, relpaths),
        root=cub_dir,
        image_ids=_as_ints(image_ids, images_file),
    )
    if labels == "names":
        data.class_names = [_without_number(name) for name in class_names]
        if len(set(data.class_names)) != len(class_names):
            raise ValueError(
                f"labels='names': the class names of {cub_dir} are not unique without their number "
                "prefix; use labels='codes'."
            )
        data.labels = np.asarray(data.class_names)[codes]
    if parts:
        data.part_names, data.keypoints = _read_parts(cub_dir, image_ids)
        data.image_sizes = _image_sizes(paths)
    return data


def _read_parts(cub_dir: Path, image_ids: list[str]) -> tuple[list[str], npt.NDArray[np.float64]]:
    """Part names and keypoints ``(n, n_parts, 3)`` (x, y, visible) in the row order of images.txt."""
    names_file = require_file(cub_dir / "parts" / "parts.txt", "CUB-200-2011 part names")
    named = _read_table(names_file, 2)
    part_ids = _as_ints([part_id for part_id, _ in named], names_file)
    if sorted(part_ids.tolist()) != list(range(1, len(part_ids) + 1)):
        raise ValueError(f"{names_file}: part ids must be 1 .. {len(part_ids)}, each once; got {sorted(part_ids.tolist())}.")
    part_names = [name.strip() for _, name in sorted(zip(part_ids.tolist(), (n for _, n in named)))]
    locs_file = require_file(cub_dir / "parts" / "part_locs.txt", "CUB-200-2011 part locations")
    rows = _read_table(locs_file, 5)
    row_of = {image_id: i for i, image_id in enumerate(image_ids)}
    keypoints = np.zeros((len(image_ids), len(part_names), 3))
    seen = np.zeros((len(image_ids), len(part_names)), dtype=bool)
    for number, (image_id, part_id, x, y, visible) in enumerate(rows, start=1):
        try:
            i, j = row_of[image_id], int(part_id) - 1
            values = (float(x), float(y), int(visible.strip()))
        except (KeyError, ValueError):
            raise ValueError(
                f"{locs_file}, entry {number}: expected '<image id of images.txt> <part id> <x> <y> <0|1>'; "
                f"got {' '.join([image_id, part_id, x, y, visible.strip()])!r}."
            ) from None
        if not 0 <= j < len(part_names) or values[2] not in (0, 1) or seen[i, j]:
            raise ValueError(
                f"{locs_file}, entry {number}: part id {part_id} of image {image_id} is unknown, listed twice, "
                f"or its visibility {visible.strip()!r} is not 0/1."
            )
        keypoints[i, j], seen[i, j] = values, True
    if not seen.all():
        i, j = np.argwhere(~seen)[0]
        raise ValueError(f"{locs_file} has no entry for part {j + 1} of image {image_ids[i]} ({(~seen).sum()} missing).")
    return part_names, keypoints


def _image_sizes(paths: list[str]) -> npt.NDArray[np.int64]:
    """(width, height) of each image file, from its header (the pixel frame of part_locs.txt)."""
    from PIL import Image

    sizes = np.zeros((len(paths), 2), dtype=np.int64)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            sizes[i] = image.size
    return sizes


def _mask_paths(cub_dir: Path, relpaths: list[str]) -> list[str] | None:
    for folder in (cub_dir / "segmentations", cub_dir.parent / "segmentations"):
        if folder.is_dir():
            paths = [str((folder / relpath).with_suffix(".png")) for relpath in relpaths]
            first_missing(paths, f"segmentation masks in {folder}")
            return paths
    return None


def load_masks(
    mask_paths: Sequence[str | os.PathLike[str]], size: int | tuple[int, int] | None = None
) -> list[npt.NDArray[np.uint8]] | npt.NDArray[np.bool_]:
    """Read segmentation masks (grayscale PNGs, > 0 = object), optionally resized to a grid.

    Parameters
    ----------
    mask_paths : sequence of str or path-like
        Mask files, e.g. the test rows of ``load_cub(root).mask_paths``.
    size : int or (int, int), default=None
        ``None`` returns every mask at its own resolution (grey values, unsquashed), which the
        metrics of :mod:`qpm_sklearn.metrics` resize themselves. Otherwise every mask is
        squash-resized like the images (no aspect-ratio preservation) to ``size`` (an int means a
        square) with :func:`qpm_sklearn.metrics.resize_masks` (bilinear, no antialiasing: the
        ``cv2.resize`` default the DINO-QPM code applies, docs/method.md#plausibility) and binarised with
        ``> 0``; pass the patch grid ``(h, w)`` to get exactly the masks the paper evaluates.

    Returns
    -------
    masks : list of uint8 ndarrays of shape (H_i, W_i), or ndarray of shape (n, h, w), dtype bool

    Examples
    --------
    >>> from qpm_sklearn.datasets import load_cub
    >>> from qpm_sklearn.datasets import load_masks
    >>> data = load_cub("~/datasets/CUB200")  # doctest: +SKIP
    >>> test_masks = [m for m, train in zip(data.mask_paths, data.is_train) if not train]  # doctest: +SKIP
    >>> load_masks(test_masks, size=(16, 16)).shape  # doctest: +SKIP
    (5794, 16, 16)
    """
    from PIL import Image

    from .._masks import resize_masks

    if size is not None:
        height, width = tuple(size) if isinstance(size, Iterable) else (size, size)
        if not all(isinstance(v, (int, np.integer)) and v >= 1 for v in (height, width)):
            raise ValueError(f"size must be None, a positive int or a pair of positive ints; got {size!r}.")
    masks = []
    for i, path in enumerate(mask_paths):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"mask_paths[{i}]: expected the mask file {path}, which does not exist.")
        try:
            with Image.open(path) as image:
                grey = np.asarray(image.convert("L"), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise ValueError(f"mask_paths[{i}]: cannot read {path} as an image: {exc}") from exc
        # Resize one at a time: the full-resolution masks of a test split take about a gigabyte.
        masks.append(grey if size is None else resize_masks([grey], (height, width), dilate=False)[0])
    if size is None:
        return masks
    return np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
