"""Published retrieval networks as scikit-learn Pipelines.

:func:`load_checkpoint` reads a cirtorch (filipradenovic/cnnimageretrieval-pytorch),
deep-image-retrieval (naver) or plain torchvision/timm/open_clip file without
unpickling code and returns ``ConvFeatureExtractor -> pooling (learned p) ->
projection -> stored whitening -> NearestNeighborRetriever`` computing the
descriptors of the authors' code.  See ``docs/pretrained.md``.
"""

from ._heads import MultiScaleHead, affine_whitener, pca_whitener, projection_whitener
from ._protocol import NativeScale, native_size
from ._load import PRESETS, checkpoint_cache_dir, load_checkpoint, read_recipe
from ._reading import CheckpointFormatError, read_checkpoint, sniff_format
from ._recipes import CIRTORCH_ARCHITECTURES, NAVER_ARCHITECTURES, Recipe

__all__ = [
    "CIRTORCH_ARCHITECTURES",
    "NAVER_ARCHITECTURES",
    "PRESETS",
    "CheckpointFormatError",
    "MultiScaleHead",
    "NativeScale",
    "Recipe",
    "affine_whitener",
    "checkpoint_cache_dir",
    "load_checkpoint",
    "native_size",
    "pca_whitener",
    "projection_whitener",
    "read_checkpoint",
    "read_recipe",
    "sniff_format",
]
