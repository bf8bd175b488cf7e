"""Export a model folder's Keras model to ONNX, so serving needs neither TensorFlow nor Keras.

Keras' own ``model.export(format="onnx")`` goes through tf2onnx, which does not follow TensorFlow
2.21 / numpy 2; so this is a small converter for exactly the layers skinmole's architectures use.
The graph takes ``pixels`` (N, S, S, 3) uint8 (raw 0..255, cast to float inside, NCHW inside) and
has two outputs: ``logits`` and ``features`` (the penultimate vector the quality gate uses).
BatchNormalization is folded into the convolution before it. After writing, the export runs both
models on the same inputs and refuses a file whose outputs differ from Keras'.

Needs the ``onnx`` package (dev/train extras) at export time only; serving needs ``onnxruntime``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from .errors import OnnxExportError  # noqa: F401  (defined in the leaf module; importable from here too)

ONNX_FILE = "model.onnx"
OPSET = 17
CHECK_ATOL = 1e-4


def _act_name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


class _Converter:
    """Walks a functional Keras model layer by layer and emits ONNX nodes (NCHW inside)."""

    def __init__(self, keras_model):
        self.model = keras_model
        self.nodes: list = []
        self.inits: list = []
        self.values: dict[int, tuple[str, str]] = {}  # id(KerasTensor) -> (onnx name, layout)
        self.used: set[str] = set()

    # -- small helpers -------------------------------------------------------------------------
    def _name(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def const(self, base: str, array) -> str:
        from onnx import numpy_helper

        name = self._name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        from onnx import helper

        out = self._name(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def get(self, tensor) -> tuple[str, str]:
        try:
            return self.values[id(tensor)]
        except KeyError:
            raise OnnxExportError(f"tensor {getattr(tensor, 'name', tensor)} is used before it is computed") from None

    @staticmethod
    def _check_channels_last(layer) -> None:
        fmt = getattr(layer, "data_format", "channels_last")
        if fmt != "channels_last":
            raise OnnxExportError(f"layer {layer.name!r}: data_format {fmt!r} is not supported (channels_last only)")

    @staticmethod
    def _pads(layer, in_shape, kernel, strides, dilation) -> dict:
        padding = layer.padding.lower()
        if padding == "valid":
            return {"pads": [0, 0, 0, 0]}
        if padding != "same":
            raise OnnxExportError(f"layer {layer.name!r}: padding {layer.padding!r} is not supported")
        h, w = in_shape[1], in_shape[2]
        if h is None or w is None:
            return {"auto_pad": "SAME_UPPER"}  # TensorFlow's SAME: the extra pixel goes at the end
        begin, end = [], []
        for size, k, s, d in zip((h, w), kernel, strides, dilation):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            begin.append(total // 2)
            end.append(total - total // 2)
        return {"pads": begin + end}

    def _activation(self, x: str, fn, layer) -> str:
        name = _act_name(fn)
        if name == "linear":
            return x
        if name == "relu":
            return self.node("Relu", [x], f"{layer.name}_relu")
        if name == "relu6":
            return self._clip(x, 0.0, 6.0, f"{layer.name}_relu6")
        if name == "sigmoid":
            return self.node("Sigmoid", [x], f"{layer.name}_sigmoid")
        raise OnnxExportError(f"layer {layer.name!r}: activation {name!r} is not supported")

    def _clip(self, x: str, lo: float, hi: float, base: str) -> str:
        return self.node("Clip", [x, self.const(f"{base}_min", np.array(lo, np.float32)),
                                  self.const(f"{base}_max", np.array(hi, np.float32))], base)

    def _fold_bn(self, layer, weight: np.ndarray, bias: np.ndarray | None, bn) -> tuple[np.ndarray, np.ndarray]:
        """Fold ``bn`` into an NCHW conv weight (out channels first): the arithmetic in float64."""
        if bn.axis not in (-1, 3, [-1], [3]):
            raise OnnxExportError(f"layer {bn.name!r}: BatchNormalization over axis {bn.axis} is not supported")
        scale, shift = self._bn_scale_shift(bn)
        w = weight.astype(np.float64) * scale.reshape(-1, *([1] * (weight.ndim - 1)))
        b = (bias.astype(np.float64) if bias is not None else 0.0) * scale + shift
        return w.astype(np.float32), np.asarray(b, np.float32)

    @staticmethod
    def _bn_scale_shift(bn) -> tuple[np.ndarray, np.ndarray]:
        """Inference-time batch norm as ``x * scale + shift`` (float64)."""
        def arr(v):
            return None if v is None else np.asarray(v.numpy(), np.float64)

        mean, var = arr(bn.moving_mean), arr(bn.moving_variance)
        gamma = arr(getattr(bn, "gamma", None)) if bn.scale else np.ones_like(mean)
        beta = arr(getattr(bn, "beta", None)) if bn.center else np.zeros_like(mean)
        scale = gamma / np.sqrt(var + float(bn.epsilon))
        return scale, beta - mean * scale

    # -- the walk ----------------------------------------------------------------------------------
    def convert(self, output_layers: dict[str, object]):
        from onnx import TensorProto, helper

        model = self.model
        if len(model.inputs) != 1:
            raise OnnxExportError(f"the model has {len(model.inputs)} inputs; skinmole models have one")
        inp = model.inputs[0]
        shape = tuple(inp.shape)
        if len(shape) != 4 or shape[3] != 3:
            raise OnnxExportError(f"the model input must be (N, S, S, 3), not {shape}")
        pixels = "pixels"
        self.used.update([pixels, *output_layers])
        x = self.node("Cast", [pixels], "pixels_float", to=TensorProto.FLOAT)
        x = self.node("Transpose", [x], "pixels_nchw", perm=[0, 3, 1, 2])
        self.values[id(inp)] = (x, "nchw")

        consumers: dict[int, list] = {}
        for layer in model.layers:
            for t in _flat(layer.input) if type(layer).__name__ != "InputLayer" else []:
                consumers.setdefault(id(t), []).append(layer)
        wanted = {id(t) for t in output_layers.values()}
        folded: set[int] = set()  # ids of BN layers folded into the conv before them

        for layer in model.layers:
            kind = type(layer).__name__
            if kind == "InputLayer":
                continue
            if len(getattr(layer, "_inbound_nodes", [])) > 1:
                raise OnnxExportError(f"layer {layer.name!r} is called more than once; shared layers are not supported")
            if id(layer) in folded:
                continue
            out_tensor = layer.output
            handler = getattr(self, f"_layer_{kind}", None)
            if handler is None:
                raise OnnxExportError(
                    f"layer {layer.name!r} of type {kind} is not supported by skinmole's ONNX export "
                    f"(supported: {', '.join(sorted(SUPPORTED_LAYERS))})"
                )
            if kind in ("Conv2D", "DepthwiseConv2D"):
                users = consumers.get(id(out_tensor), [])
                bn = users[0] if len(users) == 1 and type(users[0]).__name__ == "BatchNormalization" else None
                if bn is not None and (id(out_tensor) in wanted or _act_name(layer.activation) != "linear"):
                    bn = None
                result = handler(layer, bn)
                if bn is not None:
                    folded.add(id(bn))
                    self.values[id(bn.output)] = result
            else:
                result = handler(layer)
            self.values[id(out_tensor)] = result

        graph_outputs = []
        for name, tensor in output_layers.items():
            x, layout = self.get(tensor)
            if layout == "nchw":
                x = self.node("Transpose", [x], f"{name}_nhwc", perm=[0, 2, 3, 1])
            self.nodes.append(helper.make_node("Identity", [x], [name], name=f"{name}_output"))
            dims = ["N"] + [int(d) for d in tuple(tensor.shape)[1:]]
            graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        graph_input = helper.make_tensor_value_info(pixels, TensorProto.UINT8, ["N", *[int(d) for d in shape[1:]]])
        graph = helper.make_graph(self.nodes, model.name or "skinmole", [graph_input], graph_outputs, self.inits)
        onnx_model = helper.make_model(
            graph, producer_name="skinmole", opset_imports=[helper.make_opsetid("", OPSET)],
        )
        onnx_model.ir_version = 8  # readable by onnxruntime >= 1.14
        return onnx_model

    # -- layers ---------------------------------------------------------------------------------
    def _layer_Rescaling(self, layer):
        x, layout = self.get(layer.input)
        scale = np.asarray(layer.scale, np.float32)
        offset = np.asarray(layer.offset, np.float32)
        if layout == "nchw" and scale.ndim == 1 and scale.size > 1:
            scale = scale.reshape(1, -1, 1, 1)
        if layout == "nchw" and offset.ndim == 1 and offset.size > 1:
            offset = offset.reshape(1, -1, 1, 1)
        x = self.node("Mul", [x, self.const(f"{layer.name}_scale", scale)], f"{layer.name}_mul")
        if np.any(offset != 0):
            x = self.node("Add", [x, self.const(f"{layer.name}_offset", offset)], f"{layer.name}_add")
        return x, layout

    def _layer_ShadesOfGray(self, layer):
        """x * mean(e) / e per image and channel, e = mean((x/255)^p)^(1/p) (see colour_constancy)."""
        x, layout = self.get(layer.input)
        axes = [2, 3] if layout == "nchw" else [1, 2]
        chan = 1 if layout == "nchw" else 3
        n = layer.name
        unit = self.node("Mul", [x, self.const(f"{n}_inv255", np.float32(1 / 255))], f"{n}_unit")
        powed = self.node("Pow", [unit, self.const(f"{n}_p", np.float32(layer.p))], f"{n}_pow")
        mean = self.node("ReduceMean", [powed], f"{n}_mean", axes=axes, keepdims=1)
        mean = self.node("Add", [mean, self.const(f"{n}_eps", np.float32(layer.epsilon))], f"{n}_eps_add")
        e = self.node("Pow", [mean, self.const(f"{n}_invp", np.float32(1 / layer.p))], f"{n}_illuminant")
        grey = self.node("ReduceMean", [e], f"{n}_grey", axes=[chan], keepdims=1)
        gain = self.node("Div", [grey, e], f"{n}_gain")
        y = self.node("Mul", [x, gain], f"{n}_apply")
        return self._clip(y, 0.0, 255.0, n), layout

    def _conv(self, layer, bn, depthwise: bool):
        self._check_channels_last(layer)
        x, layout = self.get(layer.input)
        if layout != "nchw":
            raise OnnxExportError(f"layer {layer.name!r}: expects a 4-D input")
        kernel = np.asarray(layer.kernel.numpy(), np.float32)
        kh, kw = kernel.shape[:2]
        in_ch = int(layer.input.shape[-1])
        if depthwise:
            mult = kernel.shape[3]
            w = kernel.transpose(2, 3, 0, 1).reshape(in_ch * mult, 1, kh, kw)
            group = in_ch
        else:
            w = kernel.transpose(3, 2, 0, 1)  # (out, in/groups, kh, kw)
            group = int(getattr(layer, "groups", 1))
        bias = np.asarray(layer.bias.numpy(), np.float32) if layer.use_bias else None
        if bn is not None:
            w, bias = self._fold_bn(layer, w, bias, bn)
        strides = list(layer.strides)
        dilation = list(layer.dilation_rate)
        attrs = self._pads(layer, tuple(layer.input.shape), (kh, kw), strides, dilation)
        inputs = [x, self.const(f"{layer.name}_W", w)]
        if bias is not None:
            inputs.append(self.const(f"{layer.name}_B", bias))
        y = self.node("Conv", inputs, layer.name, kernel_shape=[kh, kw], strides=strides,
                      dilations=dilation, group=group, **attrs)
        return self._activation(y, layer.activation, layer), "nchw"

    def _layer_Conv2D(self, layer, bn=None):
        return self._conv(layer, bn, depthwise=False)

    def _layer_DepthwiseConv2D(self, layer, bn=None):
        return self._conv(layer, bn, depthwise=True)

    def _layer_BatchNormalization(self, layer):
        x, layout = self.get(layer.input)
        if layer.axis not in (-1, 3, [-1], [3]) and not (layout == "nc" and layer.axis in (1, [1])):
            raise OnnxExportError(f"layer {layer.name!r}: BatchNormalization over axis {layer.axis} is not supported")
        scale, shift = self._bn_scale_shift(layer)
        shape = (1, -1, 1, 1) if layout == "nchw" else (1, -1)
        x = self.node("Mul", [x, self.const(f"{layer.name}_scale", scale.astype(np.float32).reshape(shape))],
                      f"{layer.name}_mul")
        x = self.node("Add", [x, self.const(f"{layer.name}_shift", shift.astype(np.float32).reshape(shape))],
                      f"{layer.name}_add")
        return x, layout

    def _layer_ReLU(self, layer):
        x, layout = self.get(layer.input)
        slope = float(getattr(layer, "negative_slope", 0.0) or 0.0)
        threshold = float(getattr(layer, "threshold", 0.0) or 0.0)
        if slope != 0.0 or threshold != 0.0:
            raise OnnxExportError(f"layer {layer.name!r}: ReLU with negative_slope/threshold is not supported")
        max_value = getattr(layer, "max_value", None)
        if max_value is None:
            return self.node("Relu", [x], layer.name), layout
        return self._clip(x, 0.0, float(max_value), layer.name), layout

    def _layer_Activation(self, layer):
        x, layout = self.get(layer.input)
        name = _act_name(layer.activation)
        if name == "softmax":
            if layout != "nc":
                raise OnnxExportError(f"layer {layer.name!r}: softmax is supported on 2-D tensors only")
            return self.node("Softmax", [x], layer.name, axis=-1), layout
        return self._activation(x, layer.activation, layer), layout

    def _layer_Add(self, layer):
        inputs = [self.get(t) for t in layer.input]
        layouts = {lay for _, lay in inputs}
        if len(layouts) != 1:
            raise OnnxExportError(f"layer {layer.name!r}: inputs have different layouts")
        x = inputs[0][0]
        for i, (y, _) in enumerate(inputs[1:]):
            x = self.node("Add", [x, y], layer.name if i == len(inputs) - 2 else f"{layer.name}_{i}")
        return x, layouts.pop()

    def _layer_Concatenate(self, layer):
        inputs = [self.get(t) for t in layer.input]
        layout = inputs[0][1]
        if any(lay != layout for _, lay in inputs) or layer.axis not in (-1, len(layer.input[0].shape) - 1):
            raise OnnxExportError(f"layer {layer.name!r}: only concatenation over channels is supported")
        return self.node("Concat", [x for x, _ in inputs], layer.name, axis=1), layout

    def _pool(self, layer, op: str):
        self._check_channels_last(layer)
        x, layout = self.get(layer.input)
        kernel = list(layer.pool_size)
        strides = list(layer.strides or layer.pool_size)
        attrs = self._pads(layer, tuple(layer.input.shape), kernel, strides, (1, 1))
        return self.node(op, [x], layer.name, kernel_shape=kernel, strides=strides, **attrs), layout

    def _layer_MaxPooling2D(self, layer):
        return self._pool(layer, "MaxPool")

    def _layer_AveragePooling2D(self, layer):
        return self._pool(layer, "AveragePool")  # count_include_pad=0, as TensorFlow

    def _global_pool(self, layer, op: str):
        self._check_channels_last(layer)
        x, layout = self.get(layer.input)
        if layout != "nchw":
            raise OnnxExportError(f"layer {layer.name!r}: expects a 4-D input")
        y = self.node(op, [x], f"{layer.name}_pool")
        if getattr(layer, "keepdims", False):
            return y, "nchw"
        return self.node("Flatten", [y], layer.name, axis=1), "nc"

    def _layer_GlobalAveragePooling2D(self, layer):
        return self._global_pool(layer, "GlobalAveragePool")

    def _layer_GlobalMaxPooling2D(self, layer):
        return self._global_pool(layer, "GlobalMaxPool")

    def _layer_Flatten(self, layer):
        x, layout = self.get(layer.input)
        if layout == "nchw":  # Keras flattens in NHWC order
            x = self.node("Transpose", [x], f"{layer.name}_nhwc", perm=[0, 2, 3, 1])
        return self.node("Flatten", [x], layer.name, axis=1), "nc"

    def _layer_Dropout(self, layer):
        return self.get(layer.input)  # identity at inference

    def _layer_Dense(self, layer):
        x, layout = self.get(layer.input)
        if layout != "nc":
            raise OnnxExportError(f"layer {layer.name!r}: Dense is supported on 2-D inputs only")
        w = np.asarray(layer.kernel.numpy(), np.float32)
        inputs = [x, self.const(f"{layer.name}_W", w)]
        if layer.use_bias:
            inputs.append(self.const(f"{layer.name}_B", np.asarray(layer.bias.numpy(), np.float32)))
        y = self.node("Gemm", inputs, layer.name)
        if _act_name(layer.activation) == "softmax":
            return self.node("Softmax", [y], f"{layer.name}_softmax", axis=-1), "nc"
        return self._activation(y, layer.activation, layer), "nc"


SUPPORTED_LAYERS = {n[len("_layer_"):] for n in dir(_Converter) if n.startswith("_layer_")} | {"InputLayer"}


def _flat(x) -> list:
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _flat(item)]
    if isinstance(x, dict):
        return [t for item in x.values() for t in _flat(item)]
    return [x]


def keras_to_onnx(keras_model, features_layer: str = "features"):
    """Convert a skinmole Keras model to an ``onnx.ModelProto`` (outputs ``logits``, ``features``)."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ImportError("ONNX export needs the 'onnx' package: pip install 'skinmole[train]' (or onnx)") from exc
    if not hasattr(keras_model, "layers") or not hasattr(keras_model, "inputs"):
        raise OnnxExportError("only functional Keras models can be exported")
    try:
        features = keras_model.get_layer(features_layer).output
    except ValueError as exc:
        raise OnnxExportError(f"the model has no layer named {features_layer!r}") from exc
    outputs = keras_model.outputs
    if len(outputs) != 1:
        raise OnnxExportError(f"the model has {len(outputs)} outputs; skinmole models have one (logits)")
    return _Converter(keras_model).convert({"logits": outputs[0], "features": features})


def check_against_keras(keras_model, onnx_path, n: int = 4, seed: int = 0, atol: float = CHECK_ATOL) -> float:
    """Run Keras and ONNX Runtime on the same random images; return the largest difference, or raise."""
    import onnxruntime as ort

    from .engines import OUTPUT_NAMES, with_features

    size = int(keras_model.inputs[0].shape[1])
    x = np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    k_logits, k_features = (np.asarray(a) for a in with_features(keras_model).predict_on_batch(x.astype(np.float32)))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    o_logits, o_features = sess.run(OUTPUT_NAMES, {"pixels": x})
    diff = max(float(np.max(np.abs(k_logits - o_logits))), float(np.max(np.abs(k_features - o_features))))
    if not diff <= atol:
        raise OnnxExportError(f"{onnx_path}: ONNX outputs differ from Keras by {diff:.3g} (> {atol:g}); not used")
    return diff


# The config values an ONNX file carries in its metadata_props, so that the file alone says what it is.
METADATA_KEYS = ("name", "version", "architecture", "input_size", "class_names", "malignant_classes",
                 "threshold", "temperature")


def describe_in_metadata(proto, config: dict) -> None:
    """Write the model's labels, input size, threshold and temperature into ``proto.metadata_props``
    (lists as JSON), so a reader with ONNX Runtime alone knows what the outputs mean. skinmole itself
    reads them from its config, whose sha256 pins this file: these are for everyone else."""
    import json

    from . import __version__

    values = {key: config[key] for key in METADATA_KEYS if config.get(key) is not None}
    values["input"] = ("pixels: uint8 RGB, (N, input_size, input_size, 3), values 0..255, resized with "
                       "PIL bilinear (antialiased); rescaling is inside the graph")
    if list(config.get("class_names", [])) == ["benign", "malignant"]:  # a one-logit head
        head = "logits: one (malignant); p(malignant) = sigmoid(logit / temperature)"
    else:
        head = ("logits: one per class_names entry; p = softmax(logits / temperature); "
                "p(malignant) = the sum of p over malignant_classes")
    values["outputs"] = (f"{head}; labelled malignant when p(malignant) >= threshold; "
                         "features: the penultimate vector (for the quality gate)")
    values["note"] = "Not a diagnostic device: p(malignant) is resemblance to the training data's malignant lesions."
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    proto.producer_version = __version__
    proto.doc_string = f"skinmole {config.get('name', '')} ({config.get('architecture', '')}): see metadata_props"


def export_model_folder(folder, keras_model=None, *, check: bool = True) -> Path:
    """Write ``model.onnx`` beside the Keras weights and record it (``onnx_file``, its sha256) in the
    folder's config, through ``ModelFolder.update`` (the config's one writer).

    ``keras_model``: the model in memory (training passes it); None loads the folder's own checked
    weights (not the ONNX file: that is what is being rebuilt).
    """
    from .model_folder import ModelFolder

    model_folder = ModelFolder.open(folder, verify=False)  # the weights are checked as they are read
    folder = model_folder.path
    if keras_model is None:
        keras_model = model_folder.keras_model()
    proto = keras_to_onnx(keras_model)
    describe_in_metadata(proto, model_folder.config.to_dict())
    import onnx

    onnx.checker.check_model(proto, full_check=True)
    path = folder / ONNX_FILE
    tmp = folder / (ONNX_FILE + ".tmp")
    tmp.write_bytes(proto.SerializeToString())
    try:
        if check:
            check_against_keras(keras_model, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    model_folder.update(onnx_file=ONNX_FILE, int8=None, written=[ONNX_FILE])  # an int8 copy of the old file is stale
    return path
