"""From images to feature maps: backbones, the extractor, image loading, map containers.

* :class:`ConvFeatureExtractor` -- a torchvision backbone cut at one or several
  layers, run over images of any size and scale, maps kept in a
  :class:`FeatureMaps` (RAM or disk, float32 or float16), cached by content;
* image loading (:func:`load_image`, :class:`Crop`, :func:`check_images`,
  :func:`list_images`) with strict JPEG checking;
* backbones and weights (:func:`layer_names`, :func:`weights_search_dirs`,
  :class:`WeightsNotFoundError`);
* extraction on a dask cluster (:class:`DistributedExtractionError`);
* the batching policy of the network passes, images of one shape together
  (:class:`ShapeBatching`), shared with :class:`~skretrieval.RetrievalNetTrainer`.
"""

from ._backbones import WeightsNotFoundError, layer_names, weights_search_dirs
from ._batches import ShapeBatching
from ._cache import clear_memory_cache, forward_pass_count
from ._distributed import DistributedExtractionError
from ._extractor import ConvFeatureExtractor
from ._collections import check_images, list_images
from ._images import Crop, ImageLoadError, load_image
from ._maps import ClassActivations, FeatureMaps

__all__ = [
    "ClassActivations",
    "ConvFeatureExtractor",
    "Crop",
    "DistributedExtractionError",
    "FeatureMaps",
    "ImageLoadError",
    "ShapeBatching",
    "WeightsNotFoundError",
    "check_images",
    "clear_memory_cache",
    "forward_pass_count",
    "layer_names",
    "list_images",
    "load_image",
    "weights_search_dirs",
]
