"""Grid search over local-feature pipelines: features extracted once per (image, setting)."""

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

from skretrieval.local import ASMKRetriever, SIFTExtractor
from skretrieval.metrics import RetrievalMAP

pytest.importorskip("cv2")
data = pytest.importorskip("skimage.data")


def test_grid_search_over_sift_and_asmk(tmp_path):
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    images, labels = [], []
    for label, p in enumerate(photos):
        h, w = p.shape[:2]
        for fy, fx in ((0, 0), (0.2, 0.25), (0.1, 0.1)):  # three overlapping crops
            y0, x0 = int(fy * h), int(fx * w)
            images.append(p[y0:y0 + int(0.7 * h), x0:x0 + int(0.7 * w)])
            labels.append(label)
    labels = np.array(labels)
    cache = tmp_path / "cache"
    pipe = Pipeline([("sift", SIFTExtractor(max_size=160, cache=str(cache))),
                     ("asmk", ASMKRetriever(kmeans="kmeans"))])
    grid = GridSearchCV(pipe, {"sift__n_features": [100, 200], "asmk__n_clusters": [8, 32],
                               "asmk__alpha": [1.0, 3.0]},
                        scoring=RetrievalMAP(), cv=StratifiedKFold(3), error_score="raise")
    grid.fit(images, labels)
    assert grid.best_score_ > 0.5
    assert np.all(np.isfinite(grid.cv_results_["mean_test_score"]))
    # 12 images x 2 SIFT settings, whatever the number of candidates and folds
    assert len(list(cache.glob("*/*.npy"))) == 24
