"""The layers of every torchvision backbone family as observed before the
family table (Task B): layer names, default node, CAM head, errors.

``backbone_families_expected.json`` was recorded from the code as it was
(the ``startswith`` branches of ``_backbones.py``), with random weights;
nothing in it is written by hand.  A restructure of the families must keep
every value.
"""

import hashlib
import json
from pathlib import Path

import pytest

from skretrieval.extraction._backbones import (build_model, cam_head, layer_names,
                                               resolve_layer)

EXPECTED = json.loads((Path(__file__).with_name("backbone_families_expected.json"))
                      .read_text(encoding="utf-8"))


@pytest.mark.parametrize("backbone", sorted(EXPECTED))
def test_family_layers_unchanged(backbone):
    rec = EXPECTED[backbone]
    model = build_model(backbone, None)[0]
    names = layer_names(backbone, model)
    assert len(names) == rec["layer_names_count"]
    assert names[:8] == rec["layer_names_head"]
    assert hashlib.sha256(json.dumps(names).encode()).hexdigest() == rec["layer_names_sha256"]
    if "default" in rec:
        assert list(resolve_layer(backbone, model, None)) == rec["default"]
    else:
        with pytest.raises(ValueError) as info:
            resolve_layer(backbone, model, None)
        assert str(info.value) == rec["default_error"]
    if "cam" in rec:
        node, weight, _ = cam_head(backbone, model)
        assert [node, list(weight.shape)] == rec["cam"]
    else:
        with pytest.raises(ValueError) as info:
            cam_head(backbone, model)
        assert str(info.value) == rec["cam_error"]
    with pytest.raises(ValueError) as info:
        resolve_layer(backbone, model, "no_such_layer")
    assert str(info.value) == rec["unknown_error"]
    for name, node in list(rec.get("friendly", {}).items())[:3]:
        assert resolve_layer(backbone, model, name) == (node, name)


def test_a_new_family_is_a_class_and_a_table_row(monkeypatch):
    """A family is one :class:`CNNFamily` subclass plus one row of
    ``BACKBONE_FAMILIES``; the rows before the generic one are matched first."""
    from skretrieval.extraction import _backbones

    class ResNetStages(_backbones.CNNFamily):
        """``stage<i>`` for ResNet's ``layer<i>``."""

        def friendly_names(self, model):
            """``stage1`` ... ``stage4``."""
            return {f"stage{i}": f"layer{i}" for i in range(1, 5)}

    model = build_model("resnet18", None)[0]
    default = resolve_layer("resnet18", model, None)
    with monkeypatch.context() as patch:
        patch.setattr(_backbones, "BACKBONE_FAMILIES",
                      [(("resnet",), ResNetStages())] + _backbones.BACKBONE_FAMILIES)
        assert isinstance(_backbones.backbone_family("resnet18"), ResNetStages)
        assert layer_names("resnet18", model)[:4] == ["stage1", "stage2", "stage3", "stage4"]
        assert resolve_layer("resnet18", model, "stage3") == ("layer3", "stage3")
        assert resolve_layer("resnet18", model, None) == default  # the generic rest
        assert type(_backbones.backbone_family("vgg16")) is _backbones.VGGFamily
    # the row is gone again: resnet is the generic family's
    assert type(_backbones.backbone_family("resnet18")) is _backbones.CNNFamily
    with pytest.raises(ValueError, match="unknown layer 'stage3'"):
        resolve_layer("resnet18", model, "stage3")
    assert _backbones.BACKBONE_FAMILIES[-1][0] == ("",)
    assert _backbones.model_builder_kwargs("googlenet") == {"aux_logits": False,
                                                            "init_weights": False}
    assert _backbones.model_builder_kwargs("resnet18") == {}
