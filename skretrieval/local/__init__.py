"""Local features and their search: SIFT / RootSIFT, deep local features, ASMK.

* :class:`LocalFeatures` -- the ragged per-image keypoints ``(x, y, scale,
  angle)`` and descriptors, sliceable like :class:`~skretrieval.FeatureMaps`;
* :class:`SIFTExtractor` -- OpenCV's SIFT, RootSIFT by default;
* :class:`DeepLocalFeatures` -- the strongest cells of a conv layer of any
  backbone :class:`~skretrieval.ConvFeatureExtractor` runs;
* :class:`ASMKRetriever` -- aggregated selective match kernels (ASMK and
  ASMK*) over a visual codebook, with an inverted file.
"""

from ._asmk import ASMKRetriever
from ._deep import DeepLocalFeatures, strongest_cells
from ._features import KEYPOINT_FIELDS, LocalFeatures
from ._kernel import selective_kernel, train_codebook
from ._sift import SIFTExtractor, root_sift

__all__ = [
    "ASMKRetriever",
    "DeepLocalFeatures",
    "KEYPOINT_FIELDS",
    "LocalFeatures",
    "SIFTExtractor",
    "root_sift",
    "selective_kernel",
    "strongest_cells",
    "train_codebook",
]
