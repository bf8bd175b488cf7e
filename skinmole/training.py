"""Fit a classifier on a labelled set and write a self-describing model folder.

Steps: decode and cache pixels with the shared preprocessing; train with augmentation layers in the
training graph (only the bare model is saved); keep the epoch with the best validation ROC AUC; fit a
temperature and choose the operating threshold on validation; write ``model.keras`` + ``config.json``
(+ history). ``load_model(output)`` loads the result.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .calibration import fit_temperature, threshold_for_sensitivity, threshold_within_groups
from .head import Head, is_malignant
from . import ham10000
from .augmentation import augmentation
from .data import BINARY_CLASSES, DX_CLASSES, DX_NAMES, MALIGNANT_DX, LabelledSet, concatenate, load_pixels, load_set
from .distribute import distribution
from .model import save_model_folder



@dataclass
class TrainOptions:
    data: str
    output: str
    architecture: str = "efficientnet-lite0"
    input_size: int = 128
    head: str = "auto"  # "dx" (7 diagnoses), "binary", or "auto" (dx where the data has it)
    batch_size: int = 64
    warmup_epochs: int = 2
    epochs: int = 12
    learning_rate: float = 3e-4
    warmup_learning_rate: float = 1e-3
    class_weight: str = "sqrt"  # "sqrt", "balanced" or "none"
    label_smoothing: float = 0.0
    target_sensitivity: float = 0.90
    seed: int = 42
    limit: int | None = None  # at most this many images per split (smoke tests)
    val_data: str | None = None
    cache_dir: str | None = ".cache"
    pretrained: bool = True
    # Start from a trained skinmole model file (same architecture, size and head) instead of
    # ImageNet, without the warm-up phase: longer training elsewhere, or (with --epochs 0) just
    # calibrate and package weights trained with --no-validation.
    init_weights: str | None = None
    # --no-validation: no validation images at hand (e.g. on a rented GPU): keep the last epoch and
    # write model.keras and the history only; finish the folder where the validation split is with
    # --init-weights FOLDER/model.keras --epochs 0.
    validation: bool = True
    # --no-finish: keep the epoch with the best validation ROC AUC, then write only model.keras, the
    # history and every epoch's validation P(malignant) (val_predictions.npz): no temperature,
    # threshold, ONNX or quality gate, which need scikit-learn and the ONNX tools (e.g. on a lent GPU
    # machine, experiments/device_run.py); finish elsewhere with --init-weights ... --epochs 0.
    finish: bool = True
    # The generalisation recipe (MODEL_CARD "What we tried"): augmentation "standard" or "camera"
    # (white balance, gamma, field-of-view vignette); colour constancy inside the model;
    # "source-class" weights each (collection, class) so that no collection predicts the label.
    augment: str = "standard"
    colour_constancy: str = "none"
    sample_weighting: str = "class"
    # Comma-separated `source` values to leave out of train and val (the left-out-clinic protocol).
    exclude_sources: str | None = None
    # A CSV of extra *training* images (e.g. ../shared/data/isic2020-subset/labels.csv: other
    # centres and cameras), never used for validation or the quality gate; rows with dx "unknown"
    # train only benign vs malignant. Their loss is multiplied by ``extra_weight``.
    extra_train: str | None = None
    extra_weight: float = 1.0
    # Checkpoint every epoch under OUTPUT/checkpoint and resume from there when run again with the
    # same command (a run may span sessions); the checkpoint is removed when the folder is written.
    resume: bool = True
    # "none" (one device), "mirrored" (every local GPU) or "multi-worker" (machines named in TF_CONFIG);
    # --batch-size stays the global batch, so the learning rate is unchanged (skinmole.distribute).
    distribute: str = "none"
    verbose: int = 2


# Options that may differ between the workers of one multi-worker run (paths on each machine, logging).
_PER_MACHINE_OPTIONS = ("data", "val_data", "output", "cache_dir", "init_weights", "verbose")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def split_sets(opts: TrainOptions) -> tuple[LabelledSet, LabelledSet | None]:
    """(train, val); val is None with ``--no-validation``, and the train set is the same either way
    (a split carved from unsplit data still leaves its validation part out of training)."""
    source = Path(opts.data)
    if opts.val_data:
        train = load_set(source)
        val = load_set(opts.val_data) if opts.validation else None
    elif source.suffix.lower() == ".csv" and "split" in source.open().readline():
        train = load_set(source, split="train")
        val = load_set(source, split="val") if opts.validation else None
    else:
        full = load_set(source)
        rng = np.random.default_rng(opts.seed)
        val_idx = set()
        for cls in BINARY_CLASSES:
            idx = [i for i, l in enumerate(full.labels) if l == cls]
            val_idx |= set(rng.permutation(idx)[: max(1, int(0.15 * len(idx)))].tolist())
        train = full.subset(i for i in range(len(full)) if i not in val_idx)
        val = full.subset(sorted(val_idx)) if opts.validation else None
    if opts.exclude_sources:
        train = _without_sources(train, opts.exclude_sources)
        val = _without_sources(val, opts.exclude_sources) if val is not None else None
    if opts.limit:
        train = _limit(train, opts.limit, opts.seed)
        val = _limit(val, opts.limit, opts.seed) if val is not None else None
    return train, val


def _without_sources(s: LabelledSet, sources: str) -> LabelledSet:
    """``s`` without the images whose ``source`` column is one of the comma-separated ``sources``."""
    drop = {x.strip() for x in sources.split(",") if x.strip()}
    column = s.metadata.get("source")
    if column is None:
        raise ValueError(f"{s.source}: has no 'source' column to leave {sorted(drop)} out")
    unknown = drop - set(column)
    if unknown:
        raise ValueError(f"{s.source}: no images from source {sorted(unknown)} (sources: {sorted(set(column))})")
    return s.subset(i for i, v in enumerate(column) if v not in drop)


def _source_class_weights(s: LabelledSet, base: np.ndarray) -> np.ndarray:
    """Per-image weights: ``base`` (the class weights) times a factor that gives every source the
    pooled share of malignant images (clipped to [0.25, 4] so a source with a handful of malignant
    images does not dominate), so that recognising the collection no longer predicts the label."""
    w = np.array(base, dtype=np.float64)
    column = np.array(s.metadata.get("source") or [""] * len(s))
    y = s.y
    pooled = y.mean()
    for src in np.unique(column):
        m = column == src
        share = y[m].mean()
        if 0 < share < 1:
            w[m & (y == 1)] *= np.clip(pooled / share, 0.25, 4.0)
            w[m & (y == 0)] *= np.clip((1 - pooled) / (1 - share), 0.25, 4.0)
    return (w / w.mean()).astype("float32")


def _per_image_class_weights(allowed: np.ndarray, weights: dict | None) -> np.ndarray:
    """Each image's class weight; an image of unknown diagnosis (several allowed classes) gets the
    mean weight of its allowed classes, weighted by how many known images each class has."""
    if weights is None:
        return np.ones(len(allowed), dtype="float32")
    w = np.array([weights[i] for i in range(allowed.shape[1])])
    counts = allowed[allowed.sum(axis=1) == 1].sum(axis=0) + 1e-9
    return ((allowed * w * counts).sum(axis=1) / (allowed * counts).sum(axis=1)).astype("float32")


def _extra_training_set(opts: TrainOptions, like: LabelledSet) -> LabelledSet | None:
    """``--extra-train``: every row of that CSV (its split column, if any, is ignored: training only)."""
    if not opts.extra_train:
        return None
    if not opts.extra_weight > 0:
        raise ValueError(f"extra_weight must be > 0, not {opts.extra_weight}")
    extra = load_set(opts.extra_train)
    if (like.dx is None) != (extra.dx is None):
        raise ValueError(f"--extra-train {opts.extra_train}: needs a dx column exactly when the training data has one")
    if opts.limit:
        extra = _limit(extra, opts.limit, opts.seed)
    return extra


def _partial_cross_entropy(allowed, logits):
    """-log P(the true class is among the allowed ones): ordinary cross-entropy for a known
    diagnosis, and "some benign class" for an image whose only label is benign."""
    from keras import ops

    masked = ops.where(allowed > 0, logits, ops.full_like(logits, -1e9))
    return ops.logsumexp(logits, axis=-1) - ops.logsumexp(masked, axis=-1)


def _load_initial_weights(model, path) -> None:
    """Copy the weights of a saved model with the same layers into ``model`` (a clear error if not)."""
    import keras

    from . import colour_constancy  # noqa: F401  (registers ShadesOfGray)

    source = keras.saving.load_model(path, compile=False, safe_mode=True)
    got, want = [w.shape for w in source.get_weights()], [w.shape for w in model.get_weights()]
    if got != want:
        raise ValueError(f"--init-weights {path}: its layers do not match a {model.name} with this input size and head")
    model.set_weights(source.get_weights())


def _limit(s: LabelledSet, n: int, seed: int) -> LabelledSet:
    """A stratified subset of at most ``n`` images, keeping both classes."""
    rng = np.random.default_rng(seed)
    y = s.y
    pos, neg = rng.permutation(np.flatnonzero(y == 1)), rng.permutation(np.flatnonzero(y == 0))
    k = max(1, min(len(pos), n // 3))
    return s.subset(sorted(np.concatenate([pos[:k], neg[: max(1, n - k)]]).tolist()))


def _class_weights(targets: np.ndarray, n_classes: int, rule: str) -> dict[int, float] | None:
    if rule == "none":
        return None
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
    counts[counts == 0] = 1
    w = (counts.sum() / (n_classes * counts))
    if rule == "sqrt":
        w = np.sqrt(w)
    elif rule != "balanced":
        raise ValueError(f"class_weight must be sqrt, balanced or none, not {rule!r}")
    w = w / np.average(w, weights=counts)
    return {i: float(v) for i, v in enumerate(w)}


def _set_backbone_trainable(model, trainable: bool) -> None:
    from keras import layers

    from .architectures import backbone_layers

    for layer in backbone_layers(model):
        # BatchNorm stays frozen (inference statistics) even when fine-tuning: stabler on small batches.
        layer.trainable = trainable and not isinstance(layer, layers.BatchNormalization)


def train(opts: TrainOptions) -> Path:
    """Train, calibrate and write the model folder; returns its path."""
    import keras

    from . import architectures

    dist = distribution(opts.distribute)  # before TensorFlow runs anything (multi-worker start-up)
    keras.utils.set_random_seed(opts.seed)
    out = Path(opts.output)
    train_set, val_set = split_sets(opts)
    gate_set = train_set  # the quality gate learns HAM10000's look only (extra images are measured against it)
    extra_set = _extra_training_set(opts, train_set)
    if extra_set is not None:
        train_set = concatenate(train_set, extra_set)
    sets = [s for s in (train_set, val_set) if s is not None]
    use_dx = opts.head == "dx" or (opts.head == "auto" and all(s.dx is not None for s in sets))
    if use_dx and any(s.dx is None for s in sets):
        raise ValueError("head 'dx' needs a 'dx' column (or diagnosis folders) in the training data")
    class_names = DX_CLASSES if use_dx else BINARY_CLASSES
    malignant = MALIGNANT_DX if use_dx else ["malignant"]
    partial = use_dx and train_set.has_unknown_dx  # some images say only benign/malignant
    allowed = train_set.allowed_classes() if use_dx else None
    y_train = allowed.argmax(axis=1) if use_dx else train_set.y
    n_out = len(class_names) if use_dx else 1
    _log(f"train {len(train_set)}{f' (with {len(extra_set)} extra)' if extra_set else ''} / val {len(val_set) if val_set else 'none'} images, "
         f"head {'7-class dx' if use_dx else 'binary'}")

    x_train = load_pixels(gate_set, opts.input_size, opts.cache_dir)
    if extra_set is not None:  # cached apart, so the training split's cache is reused
        x_train = np.concatenate([x_train, load_pixels(extra_set, opts.input_size, opts.cache_dir)])
    x_val = load_pixels(val_set, opts.input_size, opts.cache_dir) if val_set else None
    _log(f"pixels ready: {x_train.shape}")

    if dist.strategy is not None:
        _log(f"distributed: {dist.describe()}; global batch {opts.batch_size}")
    with dist.scope():  # the model's, the augmentation's and the optimizer's variables: one copy per replica
        model = architectures.build(opts.architecture, opts.input_size, n_out, colour_constancy=opts.colour_constancy)
    lite = architectures.EFFICIENTNET_LITE.get(opts.architecture)  # None: no ImageNet weights to start from
    pretrained = opts.pretrained and lite is not None and not opts.init_weights  # ImageNet start
    if pretrained:
        architectures.load_imagenet(model, opts.architecture)
    if opts.init_weights:
        _load_initial_weights(model, opts.init_weights)
    fine_tuning = pretrained or bool(opts.init_weights)  # a trained backbone: lower rate, BatchNorm frozen
    inputs = keras.Input(model.input_shape[1:], name="pixels")
    with dist.scope():
        train_model = keras.Model(inputs, model(augmentation(opts.seed, opts.augment)(inputs)), name="training")
    dist.prepare(train_model)

    def targets(y):
        return keras.utils.to_categorical(y, n_out) if use_dx else y[:, None].astype("float32")

    if partial:
        if opts.label_smoothing:
            raise ValueError("label smoothing is not defined for images of unknown diagnosis (--extra-train)")
        loss = _partial_cross_entropy
    elif use_dx:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=opts.label_smoothing)
    else:
        loss = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=opts.label_smoothing)
    known = allowed.sum(axis=1) == 1 if use_dx else np.ones(len(y_train), bool)
    weights = _class_weights(y_train[known], max(n_out, 2), opts.class_weight)
    sample_weight = None
    if opts.sample_weighting not in ("class", "source-class"):
        raise ValueError(f"sample_weighting must be class or source-class, not {opts.sample_weighting!r}")
    if opts.sample_weighting == "source-class" or extra_set is not None:  # per image, not per class
        per_image = _per_image_class_weights(allowed, weights) if use_dx else (
            np.array([weights[int(t)] for t in y_train], "float32") if weights else np.ones(len(y_train), "float32"))
        if opts.sample_weighting == "source-class":
            per_image = _source_class_weights(train_set, per_image)
        if extra_set is not None:
            per_image[len(gate_set):] *= opts.extra_weight
        sample_weight, weights = per_image, None
    y_fit = allowed if use_dx else targets(y_train)
    if val_set is not None:
        y_val = val_set.dx_index if use_dx else val_set.y
        y_val_bin = val_set.y

    history: list[dict] = []
    best = {"auc": -1.0, "weights": None, "epoch": 0}
    ckpt = Checkpoint(dist.checkpoint_folder(out), opts) if opts.resume else None
    done_phases: set[str] = set()
    if ckpt is not None:
        done_phases = ckpt.restore(model, history, best)
    dist.check_workers_agree(
        settings={k: v for k, v in asdict(opts).items() if k not in _PER_MACHINE_OPTIONS},
        train_images=[[Path(p).name, label] for p, label in zip(train_set.paths, train_set.labels)],
        epochs_done=len(history), phases_done=sorted(done_phases))

    def head(temperature: float, threshold: float) -> Head:
        """The served arithmetic (skinmole.head) for this model's classes at a temperature."""
        return Head(tuple(class_names), tuple(malignant), temperature, threshold, not use_dx)

    val_probabilities: list[np.ndarray] = []  # each epoch's validation P(malignant), for --no-finish

    def val_auc() -> float:
        from .evaluation import roc_auc  # without scikit-learn (a lent GPU machine has none)

        if not dist.chief:
            return float("nan")  # the chief keeps the best epoch: its weights are the ones saved
        logits = dist.local_predict(model, x_val, batch_size=256)
        p = head(1.0, 0.5).malignant_probability(logits)
        val_probabilities.append(np.asarray(p, "float32"))
        return roc_auc(y_val_bin, p)

    class Track(keras.callbacks.Callback):
        def __init__(self, phase):
            super().__init__()
            self.phase = phase

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": len(history) + 1, "phase": self.phase, **{k: float(v) for k, v in (logs or {}).items()}}
            history.append(row)
            if val_set is None:
                _log(f"epoch {row['epoch']} ({self.phase}): loss {row.get('loss', float('nan')):.4f} (no validation)")
                return
            auc = row["val_auc"] = val_auc()
            if auc > best["auc"]:
                best.update(auc=auc, weights=model.get_weights(), epoch=row["epoch"])
            if ckpt is not None:
                ckpt.save_progress(history, best, model)
            _log(f"epoch {row['epoch']} ({self.phase}): loss {row.get('loss', float('nan')):.4f} "
                 f"val_loss {row.get('val_loss', float('nan')):.4f} val_auc {auc:.4f} (best {best['auc']:.4f} @ {best['epoch']})")

    steps = int(np.ceil(len(x_train) / opts.batch_size))
    started = time.time()
    phases = []
    if pretrained and opts.warmup_epochs > 0:
        phases.append(("warmup", opts.warmup_epochs, opts.warmup_learning_rate, False))
    if opts.epochs > 0:
        phases.append(("finetune" if fine_tuning else "train", opts.epochs,
                       opts.learning_rate if fine_tuning else opts.warmup_learning_rate, True))
    for phase, epochs, lr, trainable in phases:
        if phase in done_phases:
            _log(f"{phase}: done before (resumed from {ckpt.folder})")
            continue
        if fine_tuning and lite is not None:
            _set_backbone_trainable(model, trainable)
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * steps), alpha=0.02)
        with dist.scope():
            train_model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4), loss=loss, metrics=["accuracy"])
        _log(f"{phase}: {epochs} epochs at lr {lr}")
        train_model.fit(
            x_train, y_fit, batch_size=opts.batch_size, epochs=epochs, shuffle=True,
            validation_data=(x_val, targets(y_val)) if val_set is not None else None, class_weight=weights,
            sample_weight=sample_weight,
            callbacks=[Track(phase)] + ([ckpt.backup(phase)] if ckpt is not None else []), verbose=opts.verbose,
        )
        if ckpt is not None:
            ckpt.phase_done(phase, model)
    train_seconds = time.time() - started
    if not dist.chief:  # every worker trained in step; the chief alone calibrates and writes the folder
        dist.finish_worker(out)
        _log(f"worker {dist.worker} done; the chief writes {out}")
        return out
    model = dist.plain_model(model)  # the steps below run in this process alone
    if best["weights"] is not None:
        model.set_weights(best["weights"])
    if val_set is None or not opts.finish:
        out.mkdir(parents=True, exist_ok=True)
        model.save(out / "model.keras")
        _write_history(out, history)
        if val_set is not None:
            np.savez(out / "val_predictions.npz", image=np.array([Path(p).name for p in val_set.paths]),
                     y=y_val_bin, epoch=np.array([r["epoch"] for r in history][len(history) - len(val_probabilities):]),
                     p_malignant=np.array(val_probabilities, "float32").reshape(-1, len(val_set)))
        kept = f"best epoch {best['epoch']}" if val_set is not None else "last epoch"
        _log(f"wrote {out / 'model.keras'} ({kept}, {train_seconds:.0f} s); finish the folder with the "
             f"validation split: skinmole train --init-weights {out / 'model.keras'} --epochs 0 ...")
        return out

    val_logits = model.predict(x_val, batch_size=256, verbose=0)
    temperature = fit_temperature(val_logits, y_val)
    p_val = head(temperature, 0.5).malignant_probability(val_logits)
    val_sources = val_set.metadata.get("source")
    if val_sources:
        threshold, rule_sources = threshold_within_groups(y_val_bin, p_val, val_sources, opts.target_sensitivity)
    else:
        threshold, rule_sources = threshold_for_sensitivity(y_val_bin, p_val, opts.target_sensitivity), []
    from .evaluation import metrics_by_source, roc_auc

    pred = is_malignant(p_val, threshold)
    val_metrics = {
        "split": f"{val_set.source} (validation: used for early stopping, temperature and threshold)",
        "n": int(len(y_val_bin)),
        "roc_auc": roc_auc(y_val_bin, p_val),
        "sensitivity": float(pred[y_val_bin == 1].mean()),
        "specificity": float((~pred[y_val_bin == 0]).mean()),
    }
    if val_sources:
        val_metrics["by_source"] = {k: v for k, v in metrics_by_source(y_val_bin, p_val, val_sources, threshold).items()
                                    if k != "pooled"}
    _log(f"best epoch {best['epoch']}; temperature {temperature:.3f}; threshold {threshold:.4f}; val {val_metrics}")

    config = {
        "format_version": 1,
        "name": out.name,
        "version": __version__,
        "architecture": opts.architecture,
        "input_size": opts.input_size,
        "preprocessing": {
            "input": "RGB uint8 pixels, EXIF-transposed, resized to input_size x input_size "
                     "(PIL bilinear, antialiased, aspect ratio not kept)",
            "rescaling": "inside the model",
        },
        "class_names": class_names,
        "class_descriptions": {c: DX_NAMES.get(c, c) for c in class_names},
        "malignant_classes": malignant,
        "threshold": threshold,
        "threshold_rule": f"val sensitivity {opts.target_sensitivity:.2f}"
                          + (f" pooled and within {', '.join(rule_sources)}" if rule_sources else ""),
        "temperature": temperature,
        "calibration": "temperature scaling on logits, fitted on validation negative log-likelihood",
        "metrics": {"val": val_metrics},
        "training": {
            **{k: v for k, v in asdict(opts).items() if k not in ("verbose", "cache_dir")},
            "train_images": len(train_set),
            "val_images": len(val_set),
            "best_epoch": best["epoch"],
            "init_weights": opts.init_weights,
            "train_seconds": round(train_seconds, 1),
            "pretrained": f"ImageNet ({lite.package}, Apache-2.0)" if pretrained else None,
        },
        "licence": f"CC-BY-NC-4.0 (trained on HAM10000, {ham10000.LICENCE}"
                   + (f"; extra training images: {Path(opts.extra_train).parent.name}, see its licence" if extra_set else "")
                   + "); code Apache-2.0",
        "dataset_citation": ham10000.CITATION,
    }
    save_model_folder(out, model, config)
    _export_onnx(out, model)
    _write_history(out, history)
    from .quality import fit_quality_gate

    fit_quality_gate(out, gate_set, val_set, opts.cache_dir, log=_log, pixels=(x_train[:len(gate_set)], x_val))
    if ckpt is not None:
        ckpt.remove()
    _log(f"wrote {out}")
    return out


class Checkpoint:
    """A training run's progress under ``folder``, so the same command resumes where it stopped.

    Keras' ``BackupAndRestore`` keeps the weights, optimizer and epoch inside a phase; this adds
    what spans phases: the finished phases, the epoch history and the best weights so far. A
    checkpoint made with other options is refused rather than silently mixed in.
    """

    def __init__(self, folder: Path, opts: TrainOptions):
        self.folder = Path(folder)
        self.options = {k: v for k, v in asdict(opts).items()
                        if k not in ("verbose", "cache_dir", "resume", "output", "distribute", "finish")}
        self.state_file = self.folder / "state.json"

    def restore(self, model, history: list, best: dict) -> set[str]:
        if not self.state_file.is_file():
            return set()
        state = json.loads(self.state_file.read_text())
        if state["options"] != self.options:
            changed = sorted(k for k in self.options if state["options"].get(k) != self.options[k])
            raise ValueError(f"{self.folder}: a checkpoint of a run with other options ({', '.join(changed)}); "
                             f"remove it or use another --output")
        history.extend(state["history"])
        if (self.folder / "last_phase.weights.h5").is_file() and state["phases_done"]:
            model.load_weights(self.folder / "last_phase.weights.h5")
        if state["best"]["epoch"]:
            best_model = _clone(model)
            best_model.load_weights(self.folder / "best.weights.h5")
            best.update(auc=state["best"]["auc"], epoch=state["best"]["epoch"], weights=best_model.get_weights())
        _log(f"resuming from {self.folder}: {len(history)} epochs done, phases done {state['phases_done']}")
        return set(state["phases_done"])

    def _write(self, history, best, phases_done) -> None:
        state = {"options": self.options, "history": history, "phases_done": phases_done,
                 "best": {"auc": best["auc"], "epoch": best["epoch"]}}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_file)

    def _phases_done(self) -> list[str]:
        return json.loads(self.state_file.read_text())["phases_done"] if self.state_file.is_file() else []

    def save_progress(self, history, best, model) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if best["epoch"] == history[-1]["epoch"]:
            model.save_weights(self.folder / "best.weights.h5")
        self._write(history, best, self._phases_done())

    def phase_done(self, phase: str, model) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        model.save_weights(self.folder / "last_phase.weights.h5")
        state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {"history": [], "best": {"auc": -1.0, "epoch": 0}}
        self._write(state["history"], state["best"], self._phases_done() + [phase])

    def backup(self, phase: str):
        import keras

        return keras.callbacks.BackupAndRestore(str(self.folder / phase))

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def _clone(model):
    import keras

    return keras.models.clone_model(model)


def _export_onnx(out: Path, model) -> None:
    """Add ``model.onnx`` (the TensorFlow-free serving engine) to the folder; a missing ``onnx``
    package is a warning, not a lost training run (``skinmole export-onnx`` adds it later)."""
    from .onnx_export import OnnxExportError, export_model_folder

    try:
        _log(f"wrote {export_model_folder(out, model)}")
    except (ImportError, OnnxExportError) as exc:
        _log(f"WARNING: no ONNX file ({exc}); add it with: skinmole export-onnx --model {out}")


def _write_history(out: Path, history: list[dict]) -> None:
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    keys = sorted({k for row in history for k in row}, key=lambda k: (k not in ("epoch", "phase"), k))
    with (out / "history.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [r.get("loss") for r in history], label="train loss")
    a.plot(ep, [r.get("val_loss") for r in history], label="val loss")
    a.set_xlabel("epoch"); a.legend(); a.set_title("loss")
    b.plot(ep, [r.get("val_auc", float("nan")) for r in history], marker="o")
    b.set_xlabel("epoch"); b.set_title("validation ROC AUC (malignant)")
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=100)
    plt.close(fig)
