"""The data layer: MVTec AD layout and splits, the one image decoder, the cache, the built-in dataset.

``from defectlab import data`` gives the functions the rest of defectlab uses;
the modules behind them:

- `defectlab.data.layout`: the MVTec AD folder layout, seeded splits, loading;
- `defectlab.data.decoder`: `ImageDecoder`, used by training and serving alike;
- `defectlab.data.cache`: decoded arrays cached on disk;
- `defectlab.data.synthetic`: the built-in generated dataset;
- `defectlab.data.download`: the real MVTec AD archive.
"""

from defectlab.data.cache import default_cache_dir
from defectlab.data.decoder import ImageDecodeError, ImageDecoder
from defectlab.data.errors import DatasetError
from defectlab.data.layout import (
    IMAGE_SUFFIXES, SYNTHETIC_DATA_DIR, TABLE_COLUMNS, CategoryData, dataset_name,
    good_train_paths, good_train_paths_of_other_categories, image_paths_in, list_categories,
    load_category, load_images, load_masks, read_category_table, resolve_data_root,
    split_category_table,
)

__all__ = [
    "IMAGE_SUFFIXES", "SYNTHETIC_DATA_DIR", "TABLE_COLUMNS", "CategoryData", "DatasetError",
    "ImageDecodeError", "ImageDecoder", "dataset_name", "default_cache_dir", "good_train_paths",
    "good_train_paths_of_other_categories", "image_paths_in", "list_categories", "load_category",
    "load_images", "load_masks", "read_category_table", "resolve_data_root",
    "split_category_table",
]
