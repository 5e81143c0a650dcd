"""Data sources decoded once into uint8 arrays: built-in shapes, the Hugging Face Hub, folders, files.

    from ddpm_gui.data import load_data
    data = load_data("builtin")             # 20,000 generated 32x32 shapes, 10 classes, no download
    data = load_data("cifar10")             # the Hub (or its local cache when offline)
    data = load_data("~/pictures/pets")     # one sub-folder per class
    data = load_data("train.parquet")       # a parquet/arrow file, or a save_to_disk folder

No Qt here: the GUI calls `load_data` from a worker thread with a `progress` callback and a
`cancel` event. `datasets` is imported only when a Hub id or a parquet/arrow/save_to_disk source is
decoded, after `hub_reachable()` has decided whether to work offline. It is the optional `hub` extra
(pip install 'ddpm-gui[hub]'): without it those sources raise a DataError saying so
(`datasets_available()` tells beforehand), and the built-in shapes and image folders work as before.
"""

from ddpm_gui.data.builtin import BUILTIN_CLASSES, BUILTIN_DEFAULT_COUNT, generate_builtin
from ddpm_gui.data.cache import default_cache_dir
from ddpm_gui.data.cifar import CIFAR_ARCHIVE_EXTENSIONS
from ddpm_gui.data.hub import HUB_EXTRA_INSTALL, datasets_available, hub_reachable
from ddpm_gui.data.skips import Skipped
from ddpm_gui.data.sources import (
    IMAGE_EXTENSIONS,
    Cancelled,
    ImageData,
    ProgressFn,
    describe_source,
    load_data,
)

__all__ = [
    "BUILTIN_CLASSES",
    "BUILTIN_DEFAULT_COUNT",
    "CIFAR_ARCHIVE_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "HUB_EXTRA_INSTALL",
    "Cancelled",
    "ImageData",
    "ProgressFn",
    "Skipped",
    "datasets_available",
    "default_cache_dir",
    "describe_source",
    "generate_builtin",
    "hub_reachable",
    "load_data",
]
