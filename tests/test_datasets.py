"""Dataset loaders on tiny fake trees written in the exact on-disk formats of the real datasets."""

import shutil
import warnings

import numpy as np
import pytest
from _fake_datasets import annotations_struct, write_fake_cars, write_fake_cub
from PIL import Image
from scipy.io import loadmat, savemat

from qpm_sklearn.datasets import load_cub, load_image_folder, load_stanford_cars
from qpm_sklearn.datasets import load_masks

# ---------------------------------------------------------------------------------------------
# CUB-200-2011


@pytest.fixture
def fake_cub(tmp_path):
    return write_fake_cub(tmp_path)


@pytest.mark.parametrize("level", ["parent", "cub200", "cub_dir"])
def test_cub_reads_the_official_files_from_every_accepted_root(fake_cub, level):
    cub_dir, expected = fake_cub
    root = {"parent": cub_dir.parent.parent, "cub200": cub_dir.parent, "cub_dir": cub_dir}[level]
    data = load_cub(root)
    assert data.root == str(cub_dir)
    # images.txt order (shuffled in the fake), not sorted by id or class
    assert data.paths == [str(cub_dir / "images" / p) for p in expected["relpaths"]]
    assert data.image_ids.tolist() == expected["image_ids"]
    assert data.labels.tolist() == expected["labels"] and data.labels.dtype == np.int64
    assert data.is_train.tolist() == expected["is_train"]
    assert data.split.tolist() == ["train" if t else "test" for t in expected["is_train"]]
    assert data.class_names == expected["class_names"]
    assert data.mask_paths == [str(cub_dir / "segmentations" / p[:-4]) + ".png" for p in expected["relpaths"]]


def test_cub_class_names_fall_back_to_the_image_folders(tmp_path):
    cub_dir, expected = write_fake_cub(tmp_path, classes_txt=False)
    assert load_cub(cub_dir).class_names == expected["class_names"]


def test_cub_labels_as_names_drop_the_number_prefix(fake_cub):
    cub_dir, expected = fake_cub
    data = load_cub(cub_dir, labels="names")
    assert data.class_names == [f"Fake_bird_{c}" for c in range(len(expected["class_names"]))]
    assert data.labels.tolist() == [f"Fake_bird_{c}" for c in expected["labels"]]
    assert data.paths == load_cub(cub_dir).paths
    with pytest.raises(ValueError, match="labels must be"):
        load_cub(cub_dir, labels="strings")


def test_cub_without_segmentations_has_no_mask_paths(tmp_path):
    cub_dir, _ = write_fake_cub(tmp_path, segmentations=False)
    assert load_cub(cub_dir).mask_paths is None


def test_cub_finds_segmentations_beside_the_cub_folder(fake_cub):
    cub_dir, expected = fake_cub
    shutil.move(cub_dir / "segmentations", cub_dir.parent / "segmentations")
    data = load_cub(cub_dir)
    assert data.mask_paths[0] == str(cub_dir.parent / "segmentations" / expected["relpaths"][0][:-4]) + ".png"


@pytest.mark.parametrize("name", ["image_class_labels.txt", "train_test_split.txt"])
def test_cub_missing_metadata_file_is_named(fake_cub, name):
    cub_dir, _ = fake_cub
    (cub_dir / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        load_cub(cub_dir)


def test_cub_wrong_root_names_images_txt_and_the_places_searched(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images\.txt.*CUB200/CUB_200_2011"):
        load_cub(tmp_path)


def test_cub_missing_image_or_mask_is_named(fake_cub):
    cub_dir, expected = fake_cub
    mask = (cub_dir / "segmentations" / expected["relpaths"][3]).with_suffix(".png")
    mask.unlink()
    with pytest.raises(FileNotFoundError, match=str(mask.name)):
        load_cub(cub_dir)
    image = cub_dir / "images" / expected["relpaths"][5]
    image.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 12 CUB-200-2011 images.*" + image.name):
        load_cub(cub_dir)


def test_cub_inconsistent_metadata_is_rejected(fake_cub):
    cub_dir, _ = fake_cub
    labels = (cub_dir / "image_class_labels.txt").read_text().splitlines()
    (cub_dir / "image_class_labels.txt").write_text("\n".join(labels[:-1]) + "\n")
    with pytest.raises(ValueError, match="missing ids"):
        load_cub(cub_dir)
    (cub_dir / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    split = (cub_dir / "train_test_split.txt").read_text().replace(" 1\n", " 2\n", 1)
    (cub_dir / "train_test_split.txt").write_text(split)
    with pytest.raises(ValueError, match=r"train_test_split\.txt.*\[0, 1\]"):
        load_cub(cub_dir)


def _rewrite(path, transform):
    path.write_bytes(transform(path.read_bytes()))


@pytest.mark.parametrize(
    "name, transform, message",
    [
        ("images.txt", lambda raw: b"abc" + raw[raw.index(b" ") :], r"images\.txt, line 1: .*integer image id.*'abc'"),
        ("image_class_labels.txt", lambda raw: raw.replace(b"\n3 ", b"\nabc ", 1), r"image_class_labels\.txt, line 3: .*'abc'"),
        ("image_class_labels.txt", lambda raw: raw.replace(b"\n2 1", b"\n2 \xff\xfe", 1), r"image_class_labels\.txt, line 2: not UTF-8"),
        ("train_test_split.txt", lambda raw: raw.replace(b"\n4 ", b"\n4 x", 1), r"train_test_split\.txt, line 4: expected an integer value"),
        ("classes.txt", lambda raw: raw + b"\x00\x9c\x80 binary\n", r"classes\.txt, line 4: not UTF-8"),
    ],
)
def test_cub_damaged_metadata_names_the_file_and_line(fake_cub, name, transform, message):
    cub_dir, _ = fake_cub
    _rewrite(cub_dir / name, transform)
    with pytest.raises(ValueError, match=message):
        load_cub(cub_dir)


def test_cub_metadata_with_a_byte_order_mark_reads_as_without(fake_cub):
    cub_dir, _ = fake_cub
    reference = load_cub(cub_dir)
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"):
        _rewrite(cub_dir / name, lambda raw: b"\xef\xbb\xbf" + raw)
    data = load_cub(cub_dir)
    assert data.paths == reference.paths and data.class_names == reference.class_names
    np.testing.assert_array_equal(data.labels, reference.labels)
    np.testing.assert_array_equal(data.is_train, reference.is_train)
    np.testing.assert_array_equal(data.image_ids, reference.image_ids)


@pytest.mark.parametrize("name", ["image_class_labels.txt", "train_test_split.txt"])
def test_cub_an_id_listed_twice_with_another_value_is_refused(fake_cub, name):
    cub_dir, _ = fake_cub
    path = cub_dir / name
    lines = path.read_text().splitlines()
    image_id, value = lines[0].split()
    other = {"image_class_labels.txt": "2" if value != "2" else "3", "train_test_split.txt": str(1 - int(value))}[name]
    path.write_text("\n".join(lines + [f"{image_id} {other}"]) + "\n")
    with pytest.raises(ValueError, match=rf"{name}, line {len(lines) + 1}: image id {image_id} is listed again"):
        load_cub(cub_dir)
    # The same line twice says nothing new and is accepted.
    path.write_text("\n".join(lines + [lines[0]]) + "\n")
    assert len(load_cub(cub_dir).paths) == len(lines)


def test_cub_an_image_listed_twice_names_both_lines(fake_cub):
    cub_dir, _ = fake_cub
    path = cub_dir / "images.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[1]]) + "\n")
    image_id = lines[1].split()[0]
    with pytest.raises(ValueError, match=rf"images\.txt, line {len(lines) + 1}: image id {image_id} is listed again \(first on line 2\)"):
        load_cub(cub_dir)


def test_load_masks_keeps_full_resolution_grey_values(fake_cub):
    cub_dir, _ = fake_cub
    data = load_cub(cub_dir)
    masks = load_masks(data.mask_paths)
    for path, mask in zip(data.mask_paths, masks):
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, np.asarray(Image.open(path)))


def _write_mask(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L").save(path)
    return str(path)


def test_load_masks_resizes_bilinearly_without_antialiasing(tmp_path):
    # 6 -> 2 pixels: the source positions are exactly pixels 1 and 4 of each axis, so a single
    # object pixel at (0, 0) vanishes (an antialiased resize would keep it) and one at (1, 4) stays.
    corner = np.zeros((6, 6)); corner[0, 0] = 255
    sampled = np.zeros((6, 6)); sampled[1, 4] = 255
    # non-square: squashed like the images, 4 x 8 -> 2 x 2, right half object
    wide = np.zeros((4, 8)); wide[:, 4:] = 128
    paths = [_write_mask(tmp_path / f"{i}.png", m) for i, m in enumerate([corner, sampled, wide])]
    masks = load_masks(paths, size=2)
    assert masks.dtype == bool and masks.shape == (3, 2, 2)
    assert masks.tolist() == [
        [[False, False], [False, False]],
        [[False, True], [False, False]],
        [[False, True], [False, True]],
    ]
    assert load_masks(paths[2:], size=(1, 4)).tolist() == [[[False, False, True, True]]]


def test_load_masks_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mask_paths\[0\].*nope\.png"):
        load_masks([str(tmp_path / "nope.png")])
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"mask_paths\[0\].*bad\.png"):
        load_masks([str(tmp_path / "bad.png")])
    with pytest.raises(ValueError, match="size"):
        load_masks([], size=(0, 3))
    assert load_masks([], size=4).shape == (0, 4, 4)


# ---------------------------------------------------------------------------------------------
# Stanford Cars


@pytest.mark.parametrize("level", ["parent", "cars_dir"])
def test_cars_reads_the_devkit_annotations(tmp_path, level):
    cars_dir, expected = write_fake_cars(tmp_path)
    data = load_stanford_cars(tmp_path if level == "parent" else cars_dir)
    assert data.root == str(cars_dir)
    train, test = expected["train"], expected["test"]
    assert data.paths == [str(cars_dir / "cars_train" / f) for f in train["fnames"]] + [
        str(cars_dir / "cars_test" / f) for f in test["fnames"]
    ]
    assert data.labels.tolist() == train["labels"] + test["labels"]
    assert data.is_train.tolist() == [True] * len(train["fnames"]) + [False] * len(test["fnames"])
    assert data.class_names == expected["class_names"]
    assert data.mask_paths is None


def test_fake_cars_annotations_have_the_devkit_struct_layout(tmp_path):
    cars_dir, _ = write_fake_cars(tmp_path)
    annotations = loadmat(cars_dir / "car_devkit" / "cars_train_annos.mat")["annotations"]
    assert annotations.shape == (1, 5)
    assert annotations.dtype.names == ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    assert annotations[0, 0]["class"].shape == (1, 1) and annotations[0, 0]["fname"].shape == (1,)


def test_cars_single_annotation_file(tmp_path):
    cars_dir, _ = write_fake_cars(tmp_path, n_test=1)
    data = load_stanford_cars(cars_dir)
    assert data.split.tolist().count("test") == 1 and data.paths[-1].endswith("cars_test/00001.jpg")


def test_cars_test_annotations_must_be_at_the_dataset_root(tmp_path):
    cars_dir, _ = write_fake_cars(tmp_path)
    shutil.move(cars_dir / "cars_test_annos_withlabels.mat", cars_dir / "car_devkit" / "cars_test_annos_withlabels.mat")
    with pytest.raises(FileNotFoundError, match=r"StanfordCars/cars_test_annos_withlabels\.mat"):
        load_stanford_cars(cars_dir)


def test_cars_unlabelled_test_annotations_are_rejected(tmp_path):
    cars_dir, expected = write_fake_cars(tmp_path)
    unlabelled = annotations_struct(expected["test"]["fnames"], [1] * 4, with_class=False)
    savemat(cars_dir / "cars_test_annos_withlabels.mat", {"annotations": unlabelled})
    with pytest.raises(ValueError, match="'class'.*withlabels"):
        load_stanford_cars(cars_dir)


def test_cars_wrong_layout_and_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="car_devkit"):
        load_stanford_cars(tmp_path)
    cars_dir, expected = write_fake_cars(tmp_path)
    (cars_dir / "car_devkit" / "cars_meta.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"cars_meta\.mat"):
        load_stanford_cars(cars_dir)
    cars_dir, expected = write_fake_cars(tmp_path / "again")
    (cars_dir / "cars_test" / expected["test"]["fnames"][2]).unlink()
    with pytest.raises(FileNotFoundError, match=expected["test"]["fnames"][2]):
        load_stanford_cars(cars_dir)


def test_cars_class_outside_the_meta_classes_is_rejected(tmp_path):
    cars_dir, expected = write_fake_cars(tmp_path)
    savemat(
        cars_dir / "car_devkit" / "cars_train_annos.mat",
        {"annotations": annotations_struct(expected["train"]["fnames"], [1, 2, 3, 4, 1])},
    )
    with pytest.raises(ValueError, match=r"1\.\.3"):
        load_stanford_cars(cars_dir)


# ---------------------------------------------------------------------------------------------
# image folders


@pytest.mark.parametrize(
    "relpath", ["car_devkit/cars_meta.mat", "car_devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat"]
)
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_cars_damaged_mat_file_is_named(tmp_path, relpath, damage):
    cars_dir, _ = write_fake_cars(tmp_path)
    path = cars_dir / relpath
    raw = path.read_bytes()
    path.write_bytes(b"not a MATLAB file at all" * 20 if damage == "garbage" else raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=relpath.split("/")[-1].replace(".", r"\.")):
        load_stanford_cars(cars_dir)


def _touch_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path, format="PNG")


def test_image_folder_classes_extensions_hidden_and_nested(tmp_path):
    for rel in ["zebra/b.JPG", "zebra/a.png", "zebra/sub/c.Jpeg", "ant/x.webp", "ant/.hidden.jpg", ".cache/y.jpg"]:
        _touch_image(tmp_path / rel)
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "zebra" / ".thumbs").mkdir()
    _touch_image(tmp_path / "zebra" / ".thumbs" / "t.jpg")
    data = load_image_folder(tmp_path)
    assert data.class_names == ["ant", "zebra"]
    relative = [p[len(str(tmp_path)) + 1 :] for p in data.paths]
    assert relative == ["ant/x.webp", "zebra/a.png", "zebra/b.JPG", "zebra/sub/c.Jpeg"]
    assert data.labels.tolist() == [0, 1, 1, 1]
    assert data.split is None and data.is_train is None and data.mask_paths is None


def test_image_folder_empty_class_is_an_error(tmp_path):
    _touch_image(tmp_path / "a" / "1.jpg")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match=r"\['b'\]"):
        load_image_folder(tmp_path)


def test_image_folder_with_splits(tmp_path):
    for rel in ["train/cat/1.jpg", "train/dog/2.jpg", "train/dog/3.jpg", "val/dog/4.jpg"]:
        _touch_image(tmp_path / rel)
    with pytest.warns(UserWarning, match=r"'val'.*\['cat'\]"):
        data = load_image_folder(tmp_path, split_dirs=("train", "val"))
    assert data.class_names == ["cat", "dog"]
    assert data.labels.tolist() == [0, 1, 1, 1]
    assert data.split.tolist() == ["train", "train", "train", "val"]
    assert data.is_train.tolist() == [True, True, True, False]
    with pytest.raises(FileNotFoundError, match="test"):
        load_image_folder(tmp_path, split_dirs=("train", "test"))
    with pytest.raises(ValueError, match="split_dirs"):
        load_image_folder(tmp_path, split_dirs="train")


def test_image_folder_stray_images_warn_and_missing_root_raises(tmp_path):
    _touch_image(tmp_path / "a" / "1.jpg")
    _touch_image(tmp_path / "loose.jpg")
    with pytest.warns(UserWarning, match="loose.jpg"):
        data = load_image_folder(tmp_path)
    assert len(data.paths) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FileNotFoundError, match="missing"):
            load_image_folder(tmp_path / "missing")


def test_image_folder_refuses_a_split_layout_without_split_dirs(tmp_path):
    for rel in ["train/cat/1.jpg", "train/dog/2.jpg", "test/cat/3.jpg", "test/dog/4.jpg"]:
        _touch_image(tmp_path / rel)
    with pytest.raises(ValueError, match=r"split_dirs=\('test', 'train'\)"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, split_dirs=("train", "test")).class_names == ["cat", "dog"]
    assert load_image_folder(tmp_path / "train").class_names == ["cat", "dog"]
    # A class that happens to be called "test" beside real classes is still a class.
    _touch_image(tmp_path / "other" / "bird" / "5.jpg")
    assert load_image_folder(tmp_path).class_names == ["other", "test", "train"]


def test_image_folder_labels_as_names(tmp_path):
    for rel in ["train/zebra/1.jpg", "train/ant/2.jpg", "train/ant/3.jpg", "val/zebra/4.jpg", "val/ant/5.jpg"]:
        _touch_image(tmp_path / rel)
    codes = load_image_folder(tmp_path, split_dirs=("train", "val"))
    names = load_image_folder(tmp_path, split_dirs=("train", "val"), labels="names")
    assert names.labels.tolist() == ["ant", "ant", "zebra", "ant", "zebra"]
    assert names.labels.tolist() == [codes.class_names[c] for c in codes.labels]
    assert names.paths == codes.paths and names.class_names == codes.class_names
    assert names.is_train.tolist() == codes.is_train.tolist() == [True, True, True, False, False]
    with pytest.raises(ValueError, match="labels"):
        load_image_folder(tmp_path / "train", labels="name")
