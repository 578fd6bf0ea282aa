"""Datasets for the zoo: fetch with pinned sha256s, load into memory, batch fast.

Files live under ``$ZOO_DATA`` (default ``~/.cache/zoo/data``), one directory per dataset.
"""

from zoo.data.acquire import fetch
from zoo.data.batches import Batches
from zoo.data.dataset import ImageDataset
from zoo.data.idx import read_idx
from zoo.data.loading import SPLITS, checksum, is_fetched, load
from zoo.data.paths import data_dir, dataset_dir
from zoo.data.registry import DATASETS, DatasetSpec, get_spec
from zoo.data.validation import ValidationSplit
from zoo.errors import DataError

__all__ = [
    "DATASETS",
    "Batches",
    "DataError",
    "DatasetSpec",
    "ImageDataset",
    "SPLITS",
    "ValidationSplit",
    "checksum",
    "data_dir",
    "dataset_dir",
    "fetch",
    "get_spec",
    "is_fetched",
    "load",
    "read_idx",
]
