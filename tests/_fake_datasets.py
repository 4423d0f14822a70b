"""Tiny fake CUB-200-2011 and Stanford Cars trees in the exact on-disk formats of the real ones.

Shared by tests/test_datasets.py and tests/test_paper_table.py. Every image shows a bright square
(the "object") on a noisy background; the CUB segmentation PNG marks that square with 255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _write_image(path: Path, rng, size: int, box, fill) -> None:
    pixels = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
    top, left, side = box
    pixels[top : top + side, left : left + side] = fill
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


FAKE_PARTS = ("back", "left eye", "beak")


def write_fake_cub(folder, *, n_classes=3, n_per_class=4, size=28, segmentations=True, classes_txt=True, seed=0,
                   parts=True):  # fmt: skip
    """Write ``folder/CUB200/CUB_200_2011`` (the DINO-QPM layout) and return that CUB_200_2011 path.

    Image ids are listed in images.txt in a shuffled order (the loader must keep the file order);
    every other image is a training image. Returns ``(cub_dir, expected)`` with ``expected`` the
    per-row relpaths, 0-based labels and is_train, in images.txt order, built independently;
    with ``parts`` also ``parts/parts.txt`` and ``parts/part_locs.txt`` (listed in shuffled order)
    and the expected ``keypoints`` (n, 3 parts, (x, y, visible)) in images.txt order.
    """
    rng = np.random.default_rng(seed)
    cub_dir = Path(folder) / "CUB200" / "CUB_200_2011"
    class_dirs = [f"{c + 1:03d}.Fake_bird_{c}" for c in range(n_classes)]
    rows = []
    for c, class_dir in enumerate(class_dirs):
        for j in range(n_per_class):
            image_id = c * n_per_class + j + 1
            rows.append((image_id, f"{class_dir}/Fake_Bird_{image_id:04d}_{j}.jpg", c, image_id % 2 == 1))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    for image_id, relpath, c, _ in rows:
        side = size // 2
        box = (int(rng.integers(0, size - side)), int(rng.integers(0, size - side)), side)
        _write_image(cub_dir / "images" / relpath, rng, size, box, fill=((60 * c + 100) % 256, 200, (255 - 60 * c) % 256))
        if segmentations:
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[box[0] : box[0] + side, box[1] : box[1] + side] = 255
            mask_path = (cub_dir / "segmentations" / relpath).with_suffix(".png")
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask, mode="L").save(mask_path)
    (cub_dir / "images.txt").write_text("".join(f"{i} {p}\n" for i, p, _, _ in rows))
    by_id = sorted(rows)  # the label and split files list ids in their own (sorted) order
    (cub_dir / "image_class_labels.txt").write_text("".join(f"{i} {c + 1}\n" for i, _, c, _ in by_id))
    (cub_dir / "train_test_split.txt").write_text("".join(f"{i} {int(t)}\n" for i, _, _, t in by_id))
    if classes_txt:
        (cub_dir / "classes.txt").write_text("".join(f"{c + 1} {d}\n" for c, d in enumerate(class_dirs)))
    keypoints = np.zeros((len(rows), len(FAKE_PARTS), 3))
    if parts:
        (cub_dir / "parts").mkdir()
        (cub_dir / "parts" / "parts.txt").write_text("".join(f"{j + 1} {n}\n" for j, n in enumerate(FAKE_PARTS)))
        entries = []
        for row, (image_id, _, _, _) in enumerate(rows):
            for j in range(len(FAKE_PARTS)):
                visible = int(rng.integers(0, 2))
                x, y = (float(rng.integers(0, size * 10)) / 10, float(rng.integers(0, size * 10)) / 10) if visible else (0.0, 0.0)
                keypoints[row, j] = (x, y, visible)
                entries.append(f"{image_id} {j + 1} {x:.1f} {y:.1f} {visible}\n")
        (cub_dir / "parts" / "part_locs.txt").write_text("".join(entries[i] for i in rng.permutation(len(entries))))
    expected = dict(
        keypoints=keypoints,
        image_ids=[r[0] for r in rows],
        relpaths=[r[1] for r in rows],
        labels=[r[2] for r in rows],
        is_train=[r[3] for r in rows],
        class_names=class_dirs,
    )
    return cub_dir, expected


def annotations_struct(fnames, classes, size=28, with_class=True):
    """A MATLAB struct array shaped like the devkit's ``annotations`` (1 x n, one 1x1 array per field).

    ``with_class=False`` gives the layout of the unlabelled cars_test_annos.mat.
    """
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"] + ["class"] * with_class + ["fname"]
    struct = np.empty((1, len(fnames)), dtype=[(f, object) for f in fields])
    for i, (fname, label) in enumerate(zip(fnames, classes)):
        boxes = [np.array([[v]], dtype=np.uint8) for v in (1, 1, size, size)]
        label = [np.array([[label]], dtype=np.uint8)] * with_class
        struct[0, i] = tuple(boxes + label + [np.array([fname])])
    return struct


def write_fake_cars(folder, *, n_classes=3, n_train=5, n_test=4, size=28, seed=0):
    """Write ``folder/StanfordCars`` in the devkit layout; return ``(cars_dir, expected)``.

    File names are listed in a shuffled order and classes are 1-based, as in the devkit.
    """
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    cars_dir = Path(folder) / "StanfordCars"
    (cars_dir / "car_devkit").mkdir(parents=True, exist_ok=True)
    names = np.empty((1, n_classes), dtype=object)
    for c in range(n_classes):
        names[0, c] = np.array([f"Fake Car Model {c} 20{10 + c}"])
    savemat(cars_dir / "car_devkit" / "cars_meta.mat", {"class_names": names})
    expected = {}
    for split, n, images, annotations in (
        ("train", n_train, "cars_train", cars_dir / "car_devkit" / "cars_train_annos.mat"),
        ("test", n_test, "cars_test", cars_dir / "cars_test_annos_withlabels.mat"),
    ):
        fnames = [f"{i:05d}.jpg" for i in rng.permutation(n) + 1]
        classes = [int(c) for c in rng.integers(1, n_classes + 1, size=n)]
        for fname in fnames:
            _write_image(cars_dir / images / fname, rng, size, (4, 4, size // 2), fill=(200, 50, 50))
        savemat(annotations, {"annotations": annotations_struct(fnames, classes, size)})
        expected[split] = dict(fnames=fnames, labels=[c - 1 for c in classes])
    expected["class_names"] = [f"Fake Car Model {c} 20{10 + c}" for c in range(n_classes)]
    return cars_dir, expected
