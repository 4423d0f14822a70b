"""Datasets: CUB-200-2011, Stanford Cars, image folders, and synthetic parts data with masks."""

from ._cars import load_stanford_cars
from ._cub import load_cub, load_masks
from ._folder import load_image_folder
from ._synthetic import make_parts

__all__ = ["load_cub", "load_masks", "load_stanford_cars", "load_image_folder", "make_parts"]
