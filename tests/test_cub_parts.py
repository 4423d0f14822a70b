"""load_cub(parts=True): CUB's part names and keypoints, in the row order of images.txt."""

import numpy as np
import pytest
from _fake_datasets import FAKE_PARTS, write_fake_cub

from qpm_sklearn.datasets import load_cub


def test_parts_are_read_in_row_order(tmp_path):
    cub_dir, expected = write_fake_cub(tmp_path, size=28)
    data = load_cub(tmp_path, parts=True)
    assert data.part_names == list(FAKE_PARTS)  # "left eye": names keep their inner spaces
    np.testing.assert_array_equal(data.image_ids, expected["image_ids"])
    np.testing.assert_allclose(data.keypoints, expected["keypoints"])
    np.testing.assert_array_equal(data.image_sizes, np.full((len(data.paths), 2), 28))
    assert "keypoints" not in load_cub(tmp_path)


def test_missing_or_inconsistent_part_files(tmp_path):
    cub_dir, _ = write_fake_cub(tmp_path)
    locs = cub_dir / "parts" / "part_locs.txt"
    lines = locs.read_text().splitlines(keepends=True)
    locs.write_text("".join(lines[1:]))
    with pytest.raises(ValueError, match="part_locs.txt has no entry for part"):
        load_cub(cub_dir, parts=True)
    locs.write_text("".join(lines + lines[:1]))
    with pytest.raises(ValueError, match="listed twice"):
        load_cub(cub_dir, parts=True)
    locs.write_text("".join(lines[1:]) + "999 1 1.0 2.0 1\n")
    with pytest.raises(ValueError, match="entry 36: expected '<image id of images.txt>"):
        load_cub(cub_dir, parts=True)
    locs.unlink()
    with pytest.raises(FileNotFoundError, match="part locations"):
        load_cub(cub_dir, parts=True)
    load_cub(cub_dir)  # without parts=True the files are not read
