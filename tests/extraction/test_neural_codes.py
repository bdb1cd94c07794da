"""Fully-connected layer codes (Babenko et al., Neural Codes, ECCV 2014)."""

import numpy as np
import pytest
import torch

from skretrieval import ConvFeatureExtractor, MACPooler, PCAWhitener
from skretrieval.extraction._backbones import load_backbone
from skretrieval.extraction._batches import resize as _resize


@pytest.mark.parametrize("layer, depth", [("fc6", 3), ("fc7", 6), ("fc6_prerelu", 2)])
def test_alexnet_fc_codes_match_the_network(layer, depth):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (50 + 30 * i, 90, 3), dtype=np.uint8) for i in range(3)]
    ext = ConvFeatureExtractor("alexnet", weights=None, layer=layer, max_size=224).fit()
    assert ext.fully_connected_ and ext.n_channels_ == 4096
    maps = ext.transform(images)
    model, mean, std = load_backbone("alexnet", None)
    for i, img in enumerate(images):
        x = torch.from_numpy(_resize(img, (224, 224)).copy()).permute(2, 0, 1)[None] / 255.0
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            h = torch.flatten(model.avgpool(model.features(x)), 1)
            code = model.classifier[:depth](h)[0].numpy()
        assert maps[i][0].shape == (4096, 1, 1)  # the whole image, aspect ignored
        np.testing.assert_allclose(maps[i][0][:, 0, 0], code, rtol=1e-4, atol=1e-4)
    # the code pools to itself and compresses with PCA, as in the paper
    codes = MACPooler(normalize=False).fit_transform(maps)
    np.testing.assert_allclose(codes[0], maps[0][0][:, 0, 0], rtol=1e-6)
    assert PCAWhitener(2, whiten=False).fit_transform(codes).shape == (3, 2)


def test_vgg_fc_names_resolve():
    from skretrieval import layer_names

    names = layer_names("vgg11")
    assert "fc6" in names and "fc7" in names and "conv5_2" in names
