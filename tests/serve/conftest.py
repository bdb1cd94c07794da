"""Fixtures of the serve tests: a tiny real index of generated images."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _helpers import write_image  # noqa: E402

N_IMAGES = 6


@pytest.fixture(scope="session")
def served_index(tmp_path_factory):
    """(model zip, images root, names) of a real fitted pipeline over 6 images."""
    from sklearn.pipeline import make_pipeline

    from skretrieval import (ConvFeatureExtractor, GeMPooler, NearestNeighborRetriever,
                             item_fingerprint)
    from skretrieval.persistence import save_pipeline

    base = tmp_path_factory.mktemp("serve")
    root = base / "images"
    (root / "sub").mkdir(parents=True)
    names = [f"img{i}.jpg" for i in range(N_IMAGES - 1)] + ["sub/deep.png"]
    for i, name in enumerate(names):
        write_image(root / name, seed=i)
    pipe = make_pipeline(
        ConvFeatureExtractor("resnet18", weights=None, layer="layer1", max_size=64,
                             device="cpu"),
        GeMPooler(),
        NearestNeighborRetriever(),
    )
    labels = np.asarray(names)
    paths = [str(root / n) for n in names]
    pipe.fit(paths, labels, nearestneighborretriever__ids=labels,
             nearestneighborretriever__fingerprints=[item_fingerprint(p) for p in paths])
    model = save_pipeline(pipe, base / "model.zip")
    return pathlib.Path(model), root, names
