"""PyTorch / Hugging Face / polars image containers give the same pixels as the numpy path."""

import numpy as np
import pytest
import torch
from PIL import Image

from qpm_sklearn import Dinov2Embedder
from qpm_sklearn.image_sources import DatasetImages, as_images, tensor_to_pixels
from qpm_sklearn.images import check_images

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (5, 20, 24, 3), dtype=np.uint8)  # the numpy reference, (n, H, W, 3)
NCHW = torch.from_numpy(PIXELS).permute(0, 3, 1, 2).contiguous()


def _stacked(images):
    return np.stack([np.asarray(image) for image in check_images(images)])


def test_uint8_batch_and_list_of_chw_tensors_are_the_numpy_pixels():
    np.testing.assert_array_equal(as_images(NCHW), PIXELS)
    np.testing.assert_array_equal(_stacked(as_images(list(NCHW))), PIXELS)


def test_float_tensors_in_unit_range_round_as_documented():
    floats = NCHW.float() / 255  # ToTensor's scale
    np.testing.assert_array_equal(as_images(floats), PIXELS)
    halves = torch.full((1, 3, 2, 2), 0.5)
    reference = (halves.numpy().transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)  # what the docs tell numpy users
    np.testing.assert_array_equal(as_images(halves), reference)


def test_gray_tensors_become_gray_arrays():
    gray = NCHW[:, :1]
    np.testing.assert_array_equal(as_images(gray), PIXELS[..., 0])
    np.testing.assert_array_equal(as_images([gray[0, 0]])[0], PIXELS[0, ..., 0])


@pytest.mark.parametrize(
    "tensor, error, match",
    [
        (torch.full((1, 3, 4, 4), 2.0), ValueError, r"\[0, 1\]"),  # normalised or 0..255 floats
        (torch.full((1, 3, 4, 4), float("nan")), ValueError, "non-finite"),
        (torch.zeros(1, 4, 4, 3, dtype=torch.uint8), ValueError, "channels first"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), ValueError, r"\(N, C, H, W\)"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.int32), TypeError, "dtype"),
    ],
)
def test_ambiguous_tensors_are_refused(tensor, error, match):
    with pytest.raises(error, match=match):
        as_images(tensor)


class _FolderLike(torch.utils.data.Dataset):
    """Stands in for torchvision's ImageFolder: (PIL image, label) items, or tensors with a transform."""

    def __init__(self, as_tensor=False):
        self.as_tensor, self.reads = as_tensor, 0

    def __len__(self):
        return len(PIXELS)

    def __getitem__(self, index):
        self.reads += 1
        image = Image.fromarray(PIXELS[index])
        if self.as_tensor:
            return NCHW[index].float() / 255, index % 2
        return image, index % 2


@pytest.mark.parametrize("as_tensor", [False, True])
def test_map_style_dataset_is_read_lazily_and_labels_are_ignored(as_tensor):
    dataset = _FolderLike(as_tensor)
    images = check_images(as_images(dataset))
    assert isinstance(images, DatasetImages) and dataset.reads == 0  # nothing read by the check
    np.testing.assert_array_equal(np.stack([np.asarray(images[i]) for i in range(len(images))]), PIXELS)


def test_dataloader_batches_and_items_are_the_numpy_pixels():
    collated = torch.utils.data.DataLoader(_FolderLike(as_tensor=True), batch_size=2)  # (images, labels) batches
    np.testing.assert_array_equal(_stacked(as_images(collated)), PIXELS)
    listed = torch.utils.data.DataLoader(_FolderLike(), batch_size=2, collate_fn=list)  # lists of (PIL, label)
    np.testing.assert_array_equal(_stacked(as_images(listed)), PIXELS)


class _HFLike:
    """A minimal stand-in for datasets.Dataset: dict rows, an Image-typed feature, a format."""

    class Image:  # the feature type's class name is what is detected
        pass

    def __init__(self, format_type=None):
        self.column_names = ["label", "picture"]
        self.features = {"label": object(), "picture": self.Image()}
        self.format = {"type": format_type}

    def __len__(self):
        return len(PIXELS)

    def __getitem__(self, index):
        picture = Image.fromarray(PIXELS[index])
        if self.format["type"] == "torch":
            picture = torch.from_numpy(PIXELS[index]).permute(2, 0, 1)  # channels first, as datasets' torch format gives
        return {"label": 0, "picture": picture}


@pytest.mark.parametrize("format_type", [None, "torch"])
def test_dataset_with_an_image_column_is_detected(format_type):
    images = check_images(as_images(_HFLike(format_type)))
    np.testing.assert_array_equal(np.stack([np.asarray(images[i]) for i in range(len(images))]), PIXELS)
    with pytest.raises(ValueError, match="not a column"):
        as_images(_HFLike(), image_column="pixels")


def test_huggingface_datasets_when_installed():
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(p) for p in PIXELS], "label": list(range(len(PIXELS)))},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")}),
    )
    for view in (dataset, dataset.with_format("torch"), dataset.with_format("numpy")):
        images = check_images(as_images(view))
        np.testing.assert_array_equal(np.stack([np.asarray(images[i]) for i in range(len(images))]), PIXELS)


def test_polars_one_column_frame_when_installed(tmp_path):
    polars = pytest.importorskip("polars")
    paths = []
    for index, pixels in enumerate(PIXELS):
        paths.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(pixels).save(paths[-1])
    assert check_images(as_images(polars.DataFrame({"path": paths}))) == paths
    with pytest.raises(ValueError, match="2 columns"):
        as_images(polars.DataFrame({"path": paths, "label": list(range(len(paths)))}))


def test_embedder_gives_the_same_features_for_every_container(tiny_backbone):
    embedder = Dinov2Embedder(tiny_backbone, image_size=28, device="cpu", batch_size=2, n_jobs=1)
    expected = embedder.transform(PIXELS)
    for X in (NCHW, NCHW.float() / 255, list(NCHW), _FolderLike(),
              torch.utils.data.DataLoader(_FolderLike(as_tensor=True), batch_size=3)):  # fmt: skip
        np.testing.assert_allclose(embedder.transform(X), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        embedder.set_params(image_column="picture").transform(_HFLike("torch")), expected, rtol=1e-5, atol=1e-5
    )


def test_tensor_to_pixels_reads_channels_last_when_told():
    np.testing.assert_array_equal(tensor_to_pixels(torch.from_numpy(PIXELS[0]), channels_last=True), PIXELS[0])
