"""From feature maps to one descriptor per image: pooling, VLAD, CAM weighting, whitening.

Every pooler takes the ragged ``C x H x W`` maps of a
:class:`~skretrieval.FeatureMaps` and returns an ``(n_images, D)`` array,
L2-normalised as in its paper; :class:`PCAWhitener` (or :class:`LearnedWhitener`, from labels) then works on
that array.
"""

from ._cam import CAMWeighter, ClassVectors
from ._global import GeMPooler, MACPooler, SPoCPooler
from ._learned_whitening import LearnedWhitener
from ._regional import CroWPooler, RMACPooler, region_grid
from ._vlad import VLADEncoder
from ._whitening import PCAWhitener

__all__ = [
    "CAMWeighter",
    "ClassVectors",
    "CroWPooler",
    "GeMPooler",
    "LearnedWhitener",
    "MACPooler",
    "PCAWhitener",
    "RMACPooler",
    "SPoCPooler",
    "VLADEncoder",
    "region_grid",
]
