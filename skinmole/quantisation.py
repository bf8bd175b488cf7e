"""An int8 copy of a model folder's ``model.onnx``: faster on CPU, and measured against the float engine.

ONNX Runtime static quantisation (QDQ format, per-channel int8 weights, activation ranges calibrated
on training images, never on the images the agreement is measured on). The recipe, the nodes kept in
float and the calibration are chosen on the validation split (``experiments/int8_engine.py``);
the agreement with the float engine on that split (labels flipped at the threshold, |delta
P(malignant)|, ROC AUC) is recorded beside the file, because an int8 engine that changes answers must
say by how much. It is opt-in (``engine="onnx-int8"``), never the default.

Why ``reduce_range`` (7-bit weights) by default: on x86 CPUs without VNNI, ONNX Runtime's u8 x s8
kernels add pairs of products in 16 bits with saturation; full 8-bit per-channel weights overflow
there and move P(malignant) far more than the rounding itself does.

Needs ``onnx`` and ``onnxruntime`` (the train extra) to build; serving the file needs onnxruntime only.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

INT8_FILE = "model-int8.onnx"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")
WEIGHT_TYPES = ("int8", "uint8")
CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class Recipe:
    """How an int8 model is built: what is recorded in the config beside the file."""

    calibration: str = "minmax"        # one of CALIBRATION_METHODS
    activations: str = "uint8"         # one of ACTIVATION_TYPES
    weights: str = "int8"              # one of WEIGHT_TYPES
    reduce_range: bool = True          # 7-bit weights: no 16-bit saturation on CPUs without VNNI
    exclude: tuple[str, ...] = ()      # node names kept in float
    depthwise_full_range: bool = True  # depthwise convs keep 8-bit weights despite reduce_range: their
                                       # kernel accumulates in 32 bits (no saturation), and 9 weights per
                                       # channel lose most to the 7th bit (flips 64 -> 34 on validation)
    calibration_images: int = 300      # training images the activation ranges come from
    extra_options: dict = field(default_factory=dict)  # passed to quantize_static as they are
    fine_tune_epochs: int = 0          # quantisation-aware fine-tuning towards the float answers
                                       # (quantisation_aware.py) on the training images; 0: none
    fine_tune_learning_rate: float = 1e-5
    fine_tune_feature_weight: float = 0.1  # the features' MSE beside the logits' (the gate reads them)

    def __post_init__(self):
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(f"calibration must be one of {CALIBRATION_METHODS}, not {self.calibration!r}")
        if self.activations not in ACTIVATION_TYPES:
            raise ValueError(f"activations must be one of {ACTIVATION_TYPES}, not {self.activations!r}")
        if self.weights not in WEIGHT_TYPES:
            raise ValueError(f"weights must be one of {WEIGHT_TYPES}, not {self.weights!r}")
        if self.calibration_images < 1:
            raise ValueError("calibration_images must be at least 1")
        if self.fine_tune_epochs < 0 or not self.fine_tune_learning_rate > 0 or self.fine_tune_feature_weight < 0:
            raise ValueError("fine_tune_epochs must be >= 0, fine_tune_learning_rate > 0, "
                             "fine_tune_feature_weight >= 0")
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def post_training(self) -> "Recipe":
        """The same recipe without its fine-tuning (what ``quantise_onnx`` alone builds)."""
        return replace(self, fine_tune_epochs=0)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["exclude"] = list(self.exclude)
        return out


# The recipe `skinmole quantise` uses, chosen on HAM10000's validation split: the PTQ settings from
# experiments/int8_engine.py, then 2 epochs of quantisation-aware fine-tuning at 1e-5
# (experiments/int8_qat.py: 42 -> 19 labels flipped, p99 |dP| 0.103 -> 0.050; 6 epochs at 3e-5 with
# cosine decay gave 17-18 and 0.048-0.053 for three times the time).
DEFAULT_RECIPE = Recipe(fine_tune_epochs=2)


def calibration_sample(available: int, n: int, seed: int = 0) -> np.ndarray:
    """Which training images calibrate (sorted indices of a seeded random sample): the command and
    the experiment take the same ones, as the agreement moves with the sample (34-42 flips)."""
    return np.sort(np.random.default_rng(seed).permutation(available)[:n])


def quantise_onnx(src, dst, calibration_pixels: np.ndarray, recipe: Recipe = DEFAULT_RECIPE,
                  calibration_cache=None) -> Path:
    """Write the int8 (QDQ) copy of the ONNX model ``src`` to ``dst``; activation ranges from
    ``calibration_pixels`` (N, S, S, 3) uint8, the first ``recipe.calibration_images`` of them.
    ``calibration_cache``: a JSON file of ranges to reuse (same model, images and method only)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pixels = np.ascontiguousarray(calibration_pixels[:recipe.calibration_images], dtype=np.uint8)
    if len(pixels) == 0:
        raise ValueError("no calibration images")

    # Equal batches: the histogram calibrators (entropy, percentile) stack them into one array.
    batch = max(b for b in range(1, CALIBRATION_BATCH + 1) if len(pixels) % b == 0)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(range(0, len(pixels), batch))

        def get_next(self):
            i = next(self.batches, None)
            return None if i is None else {"pixels": pixels[i:i + batch]}

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[recipe.calibration]
    activations = QuantType.QUInt8 if recipe.activations == "uint8" else QuantType.QInt8
    extra = dict(recipe.extra_options)
    weights = []
    if recipe.reduce_range and recipe.depthwise_full_range:
        weights = _weight_names(src, [n for n in depthwise_nodes(src) if n not in recipe.exclude])
    if weights:
        extra["TensorQuantOverrides"] = {**extra.get("TensorQuantOverrides", {}),
                                         **{w: [{"axis": 0, "reduce_range": False}] for w in weights}}
    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix="skinmole-quantise-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        if _preprocessed(src):
            pre.write_bytes(Path(src).read_bytes())
        else:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        out = Path(tmp) / "int8.onnx"
        quantize_static(str(pre), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=recipe.reduce_range, activation_type=activations,
                        weight_type=QuantType.QInt8 if recipe.weights == "int8" else QuantType.QUInt8,
                        nodes_to_exclude=list(recipe.exclude),
                        calibrate_method=method, extra_options=extra,
                        calibration_cache_path=str(calibration_cache) if calibration_cache else None)
        out.replace(dst)
    return dst


def _load(path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _preprocessed(path) -> bool:
    """Whether ``quant_pre_process`` already ran on this file (it is then not run again)."""
    return any(p.key == "onnx.quant.pre_process" for p in _load(path).metadata_props)


def _weight_names(path, nodes) -> list[str]:
    """The weight initialiser of each named Conv/Gemm node; an unknown name is an error."""
    graph = _load(path).graph
    by_name = {n.name: n for n in graph.node}
    missing = [n for n in nodes if n not in by_name]
    if missing:
        raise ValueError(f"{path}: no node named {missing[0]!r}")
    return [by_name[n].input[1] for n in nodes]


def depthwise_nodes(onnx_path) -> list[str]:
    """The depthwise convolutions (group == input channels) of an ONNX model, by name."""
    graph = _load(onnx_path).graph
    out = []
    for n in graph.node:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if n.op_type == "Conv" and group > 1:
            out.append(n.name)
    return out


def agreement(float_logits: np.ndarray, int8_logits: np.ndarray, head, y=None) -> dict:
    """How far the int8 answers are from the float ones on the same images: labels flipped at the
    head's threshold, |delta P(malignant)| (p99, max), and ROC AUC of each when labels ``y`` are given."""
    p_float = head.malignant_probability(float_logits)
    p_int8 = head.malignant_probability(int8_logits)
    diff = np.abs(p_int8 - p_float)
    flipped = int(np.sum((p_float >= head.threshold) != (p_int8 >= head.threshold)))
    out = {"n": int(len(diff)), "labels_flipped": flipped, "labels_flipped_fraction": flipped / max(len(diff), 1),
           "p99_abs_dp": float(np.quantile(diff, 0.99)), "max_abs_dp": float(diff.max()),
           "median_abs_dp": float(np.median(diff)),
           "max_abs_dlogit": float(np.max(np.abs(int8_logits - float_logits)))}
    if y is not None and 0 < int(np.sum(y)) < len(y):
        from .evaluation import roc_auc

        out["roc_auc_float"] = roc_auc(y, p_float)
        out["roc_auc_int8"] = roc_auc(y, p_int8)
    return out


def gate_agreement(gate, float_features: np.ndarray, int8_features: np.ndarray) -> dict:
    """How often the quality gate's out-of-distribution verdict changes when it reads the int8
    engine's features instead of the float ones (its limit was fitted on float features)."""
    ood_float, ood_int8 = gate.ood_scores(float_features), gate.ood_scores(int8_features)
    changed = int(np.sum((ood_float > gate.ood_max) != (ood_int8 > gate.ood_max)))
    return {"ood_verdicts_changed": changed,
            "ood_score_p99_relative_change": float(np.quantile(np.abs(ood_int8 / ood_float - 1), 0.99))}


def conv_nodes(onnx_path) -> list[str]:
    """Names of the nodes a sensitivity search may keep in float (Conv and Gemm), in graph order."""
    graph = _load(onnx_path).graph
    return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm")]


def describe(recipe: Recipe, agreement_on_val: dict, split: str) -> dict:
    """The config's ``int8`` entry (without the file name): the recipe and the measured agreement."""
    return {"recipe": recipe.to_dict(), "agreement": {"split": split, **agreement_on_val}}


def cpu_description() -> str:
    """The CPU features int8 answers depend on (x86 without VNNI saturates u8 x s8 pairs in 16 bits)."""
    import platform

    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{platform.machine()} ({', '.join(wanted) or 'flags unknown'})"


def fine_tune_int8(int8_path, float_path, pixels: np.ndarray, recipe: Recipe, log=print) -> bytes:
    """The QDQ model ``int8_path`` after ``recipe.fine_tune_epochs`` of quantisation-aware fine-tuning
    towards the float model ``float_path``'s logits and features on ``pixels`` (training images)."""
    from .engines import OnnxEngine, run_in_batches
    from .quantisation_aware import QuantisedGraph, fine_tune

    if len(pixels) == 0:
        raise ValueError("no training images to fine-tune the int8 model on")
    teacher_logits, teacher_features = run_in_batches(OnnxEngine(float_path), pixels)
    graph = QuantisedGraph(int8_path, float_path)
    fine_tune(graph, pixels, teacher_logits, teacher_features, epochs=recipe.fine_tune_epochs,
              learning_rate=recipe.fine_tune_learning_rate, feature_weight=recipe.fine_tune_feature_weight, log=log)
    return graph.to_onnx()


def quantise_model_folder(folder, calibration_pixels: np.ndarray, validation_pixels: np.ndarray,
                          validation_y=None, *, recipe: Recipe = DEFAULT_RECIPE, split: str = "validation",
                          calibration_source: str = "", fine_tune_pixels: np.ndarray | None = None, log=print):
    """Build ``model-int8.onnx`` from the folder's checked ``model.onnx``, measure it against the float
    engine on ``validation_pixels`` (never the calibration images), and record the file, its sha256,
    the recipe and that agreement in the config (``ModelFolder.update``, the config's one writer).
    With ``recipe.fine_tune_epochs``, the int8 weights are then fine-tuned on ``fine_tune_pixels``
    (training images, never the validation ones). Returns the updated ``ModelConfig``."""
    import onnxruntime

    from .engines import OnnxEngine, run_in_batches
    from .errors import ModelLoadError
    from .head import Head
    from .model_folder import ModelFolder

    model_folder = ModelFolder.open(folder)
    config = model_folder.config
    if not config.onnx_file:
        raise ModelLoadError(f"{model_folder.path}: no ONNX file to quantise; add one with: "
                             f"skinmole export-onnx --model {model_folder.path}")
    if len(validation_pixels) == 0:
        raise ValueError("no validation images to measure the int8 model on")
    float_bytes = model_folder.read_verified(config.onnx_file)
    dst = model_folder.path / INT8_FILE
    with tempfile.TemporaryDirectory(prefix="skinmole-quantise-") as tmp:
        src = Path(tmp) / "model.onnx"
        src.write_bytes(float_bytes)
        staged = Path(tmp) / INT8_FILE
        quantise_onnx(src, staged, calibration_pixels, recipe)
        if recipe.fine_tune_epochs:
            if fine_tune_pixels is None:
                raise ValueError("the recipe fine-tunes the int8 model: give the training images (fine_tune_pixels)")
            staged.write_bytes(fine_tune_int8(staged, src, fine_tune_pixels, recipe, log=log))
        int8_engine = OnnxEngine(staged)
        int8_engine.check(config.input_size, config.n_logits, config.quality.feature_dim if config.quality else None)
        float_logits, float_features = run_in_batches(OnnxEngine(float_bytes), validation_pixels)
        int8_logits, int8_features = run_in_batches(int8_engine, validation_pixels)
        measured = agreement(float_logits, int8_logits, Head.from_config(config), validation_y)
        if config.quality:
            from .quality import QualityGate

            measured.update(gate_agreement(QualityGate.from_folder(model_folder), float_features, int8_features))
        measured.update(cpu=cpu_description(), onnxruntime=onnxruntime.__version__)
        tmp_dst = dst.with_name(f".{INT8_FILE}.tmp")
        tmp_dst.write_bytes(staged.read_bytes())
        tmp_dst.replace(dst)
    entry = {"file": INT8_FILE, **describe(recipe, measured, split)}
    if calibration_source:
        entry["recipe"]["calibration_source"] = calibration_source
    return model_folder.update(int8=entry, written=[INT8_FILE])
