"""The data layer: images in and protected images out.

``loaders.py``   named datasets and paths as ``ImageData`` (:func:`load_dataset`,
                 :func:`class_balanced_subset`)
``folder.py``    image folders of any size: scan, decode, the memory-mapped cache
``release.py``   the mirrored release tree and its manifest
``protect.py``   ``miue protect``: a folder in, a protected release out
"""

from miue.data.loaders import (  # noqa: F401  (the loaders are the package's own names)
    DATASETS,
    FASHION_MNIST_CLASSES,
    DatasetError,
    ImageData,
    class_balanced_subset,
    fashion_mnist_dir,
    image_folder_split,
    is_image_folder,
    load_dataset,
)

__all__ = ["DATASETS", "DatasetError", "ImageData", "class_balanced_subset", "fashion_mnist_dir", "load_dataset"]
