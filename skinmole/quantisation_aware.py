"""Quantisation-aware fine-tuning of an int8 (QDQ) model towards its float model's answers.

Why: post-training quantisation moves P(malignant) too far (``quantisation.py``: 30-42 of 1,494
validation labels flipped whatever the recipe), and the error enters where activations are rounded
(the residual stream spans -70..+80 in 255 steps), not only in the weights. So the int8 model's
weights are fine-tuned *through* its rounding to give the float model's logits and features
(distillation: no labels needed, and the goal is agreement with the float engine, not accuracy).

How: the QDQ graph that ONNX Runtime wrote is rebuilt as a Keras model that computes what the int8
engine computes: every activation QuantizeLinear/DequantizeLinear pair becomes a fixed fake-quant step
(the calibrated scale and zero point, kept), every quantised Conv/Gemm weight a trainable float tensor
rounded per channel on the fly exactly as ONNX Runtime rounds it (symmetric, the stored integer range:
64 for 7-bit, 127 for 8-bit), with straight-through gradients. Training starts from the float model's
own weights; afterwards the weights are rounded into the same QDQ graph, so the file ONNX Runtime runs
is the model that was trained, activation scales included. Keras works channels-last; the ONNX graph
is channels-first: each tensor carries whether its ONNX layout is NCHW.

Needs keras (the train extra) and onnx; the result is checked with ONNX Runtime by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPPORTED_OPS = ("Cast", "Transpose", "Identity", "QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "Relu",
                 "Clip", "Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten")


@dataclass
class _Tensor:
    """A value of the ONNX graph while it is rebuilt: a Keras tensor (channels-last when ``nchw``) or a
    constant array (ONNX layout)."""

    value: object
    nchw: bool = False
    constant: bool = False
    fake_quant: tuple | None = None  # (scale, zero point, qmin, qmax) of a QuantizeLinear's output
    scale: float | None = None       # the scale of a DequantizeLinear's output (a Conv/Gemm input)


@dataclass
class _Weight:
    """A quantised weight initialiser: its integers, per-channel scales, axis and integer range."""

    name: str          # the int8 initialiser's name (rewritten after training)
    scale_name: str
    q: np.ndarray
    scale: np.ndarray
    axis: int
    qmax: int

    def dequantised(self) -> np.ndarray:
        shape = [1] * self.q.ndim
        shape[self.axis] = -1
        return self.q.astype(np.float32) * self.scale.reshape(shape)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _fake_quant(x, scale, zero_point: int, qmin: int, qmax: int):
    """ONNX Runtime's QuantizeLinear + DequantizeLinear (round half to even), straight-through inside
    the range and no gradient where it clips."""
    from keras import ops

    q = ops.clip(ops.round(x / scale) + zero_point, qmin, qmax)
    rounded = (q - zero_point) * scale
    inside = ops.cast((x >= (qmin - zero_point) * scale) & (x <= (qmax - zero_point) * scale), x.dtype)
    return x * inside + ops.stop_gradient(rounded - x * inside)


def round_weights(w, axis: int, qmax: int):
    """Per-channel symmetric rounding as ONNX Runtime's quantiser does it: scale = max|w| / qmax per
    channel along ``axis`` (1.0 for an all-zero channel); works on numpy arrays and Keras tensors."""
    from keras import ops

    reduce = tuple(i for i in range(len(w.shape)) if i != axis)
    absmax = ops.max(ops.abs(w), axis=reduce, keepdims=True)
    scale = ops.where(absmax > 0, absmax / qmax, ops.ones_like(absmax))
    return ops.clip(ops.round(w / scale), -qmax, qmax) * scale


def _make_layers():
    import keras
    from keras import ops

    class FakeQuantConv(keras.layers.Layer):
        """A convolution whose kernel (Keras layout) is rounded per output channel at every call."""

        def __init__(self, kernel, bias, strides, pads, depthwise: bool, qmax: int, **kw):
            super().__init__(**kw)
            self.kernel = self.add_weight(shape=kernel.shape, initializer=keras.initializers.Constant(kernel))
            self.bias = self.add_weight(shape=bias.shape, initializer=keras.initializers.Constant(bias))
            self.strides, self.pads, self.depthwise, self.qmax = tuple(strides), pads, depthwise, qmax

        def call(self, x):
            axis = 2 if self.depthwise else 3   # output channels: (kh, kw, C, 1) or (kh, kw, I, O)
            w = round_weights(self.kernel, axis, self.qmax)
            w = self.kernel + ops.stop_gradient(w - self.kernel)
            top, left, bottom, right = self.pads
            if any(self.pads):
                x = ops.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
            conv = ops.depthwise_conv if self.depthwise else ops.conv
            return conv(x, w, strides=self.strides, padding="valid") + self.bias

    class FakeQuantDense(keras.layers.Layer):
        """A dense layer (ONNX Gemm, kernel (in, out)) whose kernel is rounded per channel of ``axis``."""

        def __init__(self, kernel, bias, axis: int, qmax: int, **kw):
            super().__init__(**kw)
            self.kernel = self.add_weight(shape=kernel.shape, initializer=keras.initializers.Constant(kernel))
            self.bias = self.add_weight(shape=bias.shape, initializer=keras.initializers.Constant(bias))
            self.axis, self.qmax = axis, qmax

        def call(self, x):
            w = round_weights(self.kernel, self.axis, self.qmax)
            return ops.matmul(x, self.kernel + ops.stop_gradient(w - self.kernel)) + self.bias

    return FakeQuantConv, FakeQuantDense


class QuantisedGraph:
    """The Keras twin of a QDQ ONNX model (see the module docstring), and the way back to ONNX.

    ``float_onnx``: the float model the QDQ file was made from (the starting weights: node names
    are shared). ``keras_model`` maps uint8-valued pixels (N, S, S, 3) to (logits, features)."""

    def __init__(self, qdq_onnx, float_onnx):
        import onnx
        from onnx import numpy_helper

        self.proto = onnx.load(str(qdq_onnx))
        float_proto = onnx.load(str(float_onnx))
        self._float_init = {i.name: numpy_helper.to_array(i) for i in float_proto.graph.initializer}
        self._float_nodes = {n.name: n for n in float_proto.graph.node}
        self._init = {i.name: numpy_helper.to_array(i) for i in self.proto.graph.initializer}
        # node name -> (Keras layer, its quantised weight, bias initialisers, input scale, ONNX kernel layout)
        self.layers: dict[str, tuple] = {}
        self.keras_model = self._build()

    # --- ONNX -> Keras ---------------------------------------------------------------------------

    def _const(self, name: str) -> np.ndarray | None:
        return self._init.get(name)

    def _float_weights(self, node, out_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The float model's weight and bias (zeros when it has none: ``out_axis`` of the weight is
        the output channels) of the node of the same name."""
        twin = self._float_nodes.get(node.name)
        if twin is None or twin.op_type != node.op_type:
            raise ValueError(f"the float model has no {node.op_type} node named {node.name!r}")
        w = self._float_init[twin.input[1]]
        b = self._float_init[twin.input[2]] if len(twin.input) > 2 else np.zeros(w.shape[out_axis], np.float32)
        return w.astype(np.float32), b.astype(np.float32)

    def _build(self):
        import keras
        from keras import ops

        FakeQuantConv, FakeQuantDense = _make_layers()
        graph = self.proto.graph
        if len(graph.input) != 1:
            raise ValueError("a skinmole model has one input")
        size = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:]
        pixels = keras.Input(shape=tuple(size), name="pixels", dtype="float32")
        values: dict[str, _Tensor] = {graph.input[0].name: _Tensor(pixels)}
        weights: dict[str, _Weight] = {}    # DequantizeLinear output of a weight -> its integers
        bias_of: dict[str, tuple] = {}      # DequantizeLinear output of a bias -> (int32 initialiser, scale)

        def get(name) -> _Tensor:
            if name in values:
                return values[name]
            const = self._const(name)
            if const is None:
                raise ValueError(f"tensor {name!r} is used before it is computed")
            return _Tensor(const, constant=True)

        def nhwc_const(array: np.ndarray, nchw: bool) -> np.ndarray:
            if nchw and array.ndim == 4:
                return np.transpose(array, (0, 2, 3, 1))
            return array

        for node in graph.node:
            op, a = node.op_type, _attrs(node)
            if op not in SUPPORTED_OPS:
                raise ValueError(f"{node.name}: {op} is not supported by quantisation-aware fine-tuning")
            out = node.output[0]
            if op == "DequantizeLinear" and self._const(node.input[0]) is not None:
                q, scale = self._const(node.input[0]), self._const(node.input[1])
                if q.dtype == np.int32:        # a bias: recomputed from the float bias after training
                    bias_of[out] = (node.input[0], node.input[1])
                    values[out] = _Tensor(q.astype(np.float32) * scale, constant=True)
                elif q.dtype == np.int8 and q.ndim >= 2:
                    if scale.ndim != 1:
                        raise ValueError(f"{node.name}: per-tensor weights: only per-channel ones are supported")
                    w = _Weight(node.input[0], node.input[1], q, scale, int(a.get("axis", 1)), int(np.abs(q).max()))
                    weights[out] = w
                    values[out] = _Tensor(w.dequantised(), constant=True)
                else:                           # a quantised constant of Mul/Add: fixed
                    zp = self._const(node.input[2]) if len(node.input) > 2 else 0
                    values[out] = _Tensor((q.astype(np.float32) - np.float32(zp)) * scale, constant=True)
                continue
            x = get(node.input[0])
            if op == "QuantizeLinear":
                scale = float(self._const(node.input[1]))
                zp_arr = self._const(node.input[2])
                signed = zp_arr.dtype == np.int8
                qmin, qmax = (-128, 127) if signed else (0, 255)
                values[out] = _Tensor(x.value, x.nchw, fake_quant=(scale, int(zp_arr), qmin, qmax))
            elif op == "DequantizeLinear":
                scale, zp, qmin, qmax = x.fake_quant
                values[out] = _Tensor(_fake_quant(x.value, scale, zp, qmin, qmax), x.nchw, scale=scale)
            elif op in ("Cast", "Identity"):
                values[out] = _Tensor(x.value, x.nchw, x.constant)
            elif op == "Transpose":
                perm = list(a["perm"])
                if perm == [0, 3, 1, 2] and not x.nchw:
                    values[out] = _Tensor(x.value, nchw=True)
                elif perm == [0, 2, 3, 1] and x.nchw:
                    values[out] = _Tensor(x.value, nchw=False)
                else:
                    raise ValueError(f"{node.name}: Transpose {perm} is not supported")
            elif op == "Conv":
                if list(a.get("dilations", [1, 1])) != [1, 1]:
                    raise ValueError(f"{node.name}: dilated convolutions are not supported")
                w_float, b_float = self._float_weights(node)
                w_int = weights.get(node.input[1])
                if w_int is None:
                    raise ValueError(f"{node.name}: its weight is not quantised (kept in float): not supported")
                group = int(a.get("group", 1))
                depthwise = group > 1
                if depthwise and group != w_float.shape[0]:
                    raise ValueError(f"{node.name}: grouped (not depthwise) convolutions are not supported")
                kernel = np.transpose(w_float, (2, 3, 0, 1) if depthwise else (2, 3, 1, 0))
                pads = list(a.get("pads", [0, 0, 0, 0]))
                layer = FakeQuantConv(kernel, b_float, a.get("strides", [1, 1]), (pads[0], pads[1], pads[2], pads[3]),
                                      depthwise, w_int.qmax, name=node.name)
                values[out] = _Tensor(layer(x.value), nchw=True)
                self.layers[node.name] = (layer, w_int, bias_of.get(node.input[2]) if len(node.input) > 2 else None,
                                          x.scale, (2, 3, 0, 1) if depthwise else (3, 2, 0, 1))
            elif op == "Gemm":
                if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
                    raise ValueError(f"{node.name}: only Gemm with transA=0, alpha=beta=1 is supported")
                trans_b = int(a.get("transB", 0))
                w_float, b_float = self._float_weights(node, out_axis=0 if trans_b else 1)
                w_int = weights.get(node.input[1])
                if w_int is None:
                    raise ValueError(f"{node.name}: its weight is not quantised (kept in float): not supported")
                kernel = w_float.T if trans_b else w_float
                axis = (1 - w_int.axis) if trans_b else w_int.axis
                layer = FakeQuantDense(kernel, b_float, axis, w_int.qmax, name=node.name)
                values[out] = _Tensor(layer(x.value))
                self.layers[node.name] = (layer, w_int, bias_of.get(node.input[2]) if len(node.input) > 2 else None,
                                          x.scale, (1, 0) if trans_b else (0, 1))
            elif op == "Relu":
                values[out] = _Tensor(ops.relu(x.value), x.nchw)
            elif op == "Clip":
                lo, hi = (self._const(n) if n else None for n in (list(node.input[1:3]) + ["", ""])[:2])
                lo = a.get("min", -np.inf) if lo is None else float(lo)
                hi = a.get("max", np.inf) if hi is None else float(hi)
                values[out] = _Tensor(ops.clip(x.value, lo, hi), x.nchw)
            elif op in ("Add", "Mul"):
                y = get(node.input[1])
                fn = ops.add if op == "Add" else ops.multiply
                if x.constant and y.constant:
                    raise ValueError(f"{node.name}: {op} of two constants")
                tensor, other = (x, y) if not x.constant else (y, x)
                operand = nhwc_const(other.value, tensor.nchw) if other.constant else other.value
                if not other.constant and other.nchw != tensor.nchw:
                    raise ValueError(f"{node.name}: {op} of tensors in different layouts")
                values[out] = _Tensor(fn(tensor.value, operand), tensor.nchw)
            elif op in ("MaxPool", "AveragePool"):
                if any(a.get("pads", [0])):
                    raise ValueError(f"{node.name}: padded pooling is not supported")
                fn = ops.max_pool if op == "MaxPool" else ops.average_pool
                values[out] = _Tensor(fn(x.value, tuple(a["kernel_shape"]), tuple(a.get("strides", a["kernel_shape"])),
                                         padding="valid"), x.nchw)
            elif op in ("GlobalAveragePool", "GlobalMaxPool"):
                fn = ops.mean if op == "GlobalAveragePool" else ops.max
                values[out] = _Tensor(fn(x.value, axis=(1, 2), keepdims=True), x.nchw)
            elif op == "Flatten":
                v = x.value
                if x.nchw and (v.shape[1] != 1 or v.shape[2] != 1):
                    v = ops.transpose(v, (0, 3, 1, 2))  # ONNX flattens channels-first
                values[out] = _Tensor(ops.reshape(v, (-1, int(np.prod(v.shape[1:])))))
        outputs = {o.name: values[o.name].value for o in graph.output}
        if not {"logits", "features"} <= set(outputs):
            raise ValueError("not a skinmole model: it needs the outputs logits and features")
        return keras.Model(pixels, [outputs["logits"], outputs["features"]], name="quantised_twin")

    # --- Keras -> ONNX ---------------------------------------------------------------------------

    def to_onnx(self) -> bytes:
        """The QDQ model with every trained weight and bias rounded into it (activation scales kept)."""
        from onnx import numpy_helper

        replace: dict[str, np.ndarray] = {}
        int32 = np.iinfo(np.int32)
        for layer, w, bias, input_scale, to_onnx_layout in self.layers.values():
            onnx_w = np.transpose(np.asarray(layer.kernel.numpy(), np.float64), to_onnx_layout)
            shape = [1] * onnx_w.ndim
            shape[w.axis] = -1
            absmax = np.abs(onnx_w).max(axis=tuple(i for i in range(onnx_w.ndim) if i != w.axis))
            scale = np.where(absmax > 0, absmax / w.qmax, 1.0)
            if bias is not None:
                # int32 bias at the input scale x the weight scale (as ONNX Runtime writes it); where that
                # scale is too fine for the bias to fit in int32, the weight scale grows (as it does there)
                if input_scale is None:
                    raise ValueError(f"{layer.name}: its input is not quantised: the int32 bias has no scale")
                b = np.asarray(layer.bias.numpy(), np.float64)
                smallest = 1.0001 * 2 * np.abs(b) / (float(int32.max) - float(int32.min + 1))
                scale = np.where(input_scale * scale < smallest, smallest / input_scale, scale)
                bias_scale = (input_scale * scale).astype(np.float32)
                replace[bias[0]] = np.clip(np.round(b / bias_scale), int32.min, int32.max).astype(np.int32)
                replace[bias[1]] = bias_scale
            scale = scale.astype(np.float32)
            replace[w.name] = np.clip(np.round(onnx_w / scale.reshape(shape)), -w.qmax, w.qmax).astype(np.int8)
            replace[w.scale_name] = scale
        proto = type(self.proto)()
        proto.CopyFrom(self.proto)
        for i, init in enumerate(proto.graph.initializer):
            if init.name in replace:
                proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(replace[init.name], init.name))
        return proto.SerializeToString()


def fine_tune(graph: QuantisedGraph, pixels: np.ndarray, teacher_logits: np.ndarray, teacher_features: np.ndarray,
              *, epochs: int = 1, learning_rate: float = 1e-5, batch_size: int = 32, feature_weight: float = 1.0,
              cosine: bool = False, seed: int = 0, after_epoch=None, log=print) -> list[float]:
    """Fine-tune ``graph``'s weights through its rounding so that it answers like the float model:
    mean squared error to the float model's logits and (weighted) features on ``pixels``. Small
    learning rates (1e-5) move the int8 answers towards the float ones; large ones (1e-4) undo part
    of what the float weights already had. ``cosine``: the rate decays to 0 over the epochs.
    ``after_epoch(epoch)`` runs after each epoch (1-based), e.g. to measure ``graph.to_onnx()``.
    Returns the loss per epoch."""
    import keras

    keras.utils.set_random_seed(seed)
    model = graph.keras_model
    steps = epochs * -(-len(pixels) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps) if cosine else learning_rate
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=["mse", "mse"],
                  loss_weights=[1.0, feature_weight])
    callbacks = [keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: after_epoch(epoch + 1))] \
        if after_epoch else []
    history = model.fit(pixels.astype(np.float32), [teacher_logits, teacher_features], batch_size=batch_size,
                        epochs=epochs, shuffle=True, verbose=2, callbacks=callbacks)
    losses = [float(v) for v in history.history["loss"]]
    log(f"quantisation-aware fine-tuning: loss per epoch {', '.join(f'{v:.3g}' for v in losses)}")
    return losses
