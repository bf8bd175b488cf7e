"""Training across devices (skinmole.distribute), on CPU.

MirroredStrategy over two logical CPU devices gives one device's loss and weights for the same
global batch; two localhost workers (MultiWorkerMirroredStrategy from TF_CONFIG) train together and
only the chief writes the model folder. TensorFlow fixes its devices and collective ops when it
starts, so each case runs in a fresh process; timeouts are hang guards only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, free_port

HANG_GUARD_S = 300
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}

# One epoch of the training recipe's optimizer and loss (AdamW, binary cross-entropy on logits, class
# weights) on 32 images of 32 px, global batch 16, from the same start, on one device and mirrored on
# two. simple-cnn without dropout, no augmentation and no shuffling: nothing random differs between
# the runs but how the replicas split each batch.
MIRRORED_VS_ONE_DEVICE = r"""
import json, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np

from skinmole.architectures import build_simple_cnn
from skinmole.distribute import distribution

keras.utils.set_random_seed(7)
rng = np.random.default_rng(0)
y = (np.arange(32) % 3 == 0)
x = (rng.normal(110, 30, (32, 32, 32, 3)) + 40 * y[:, None, None, None]).clip(0, 255).astype("float32")
y = y[:, None].astype("float32")
start = build_simple_cnn(32, 1, dropout=0.0).get_weights()


def one_epoch(dist, batch_statistics):
    with dist.scope():
        model = build_simple_cnn(32, 1, dropout=0.0)
        model.set_weights(start)
        for layer in model.layers:  # frozen BatchNorm = inference statistics, as when fine-tuning
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = batch_statistics
        model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
                      loss=keras.losses.BinaryCrossentropy(from_logits=True))
    h = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, class_weight={0: 0.75, 1: 1.5})
    return h.history["loss"][0], model.get_weights()


def weight_error(a, b):  # the largest difference in any tensor, relative to that tensor's largest weight
    return max(float(np.abs(u - v).max() / max(np.abs(v).max(), 1e-12)) for u, v in zip(a, b))


one, mirrored = distribution("none"), distribution("mirrored")
result = {"replicas": mirrored.replicas}
for name, batch_statistics in (("frozen_batchnorm", False), ("batch_statistics", True)):
    loss_one, w_one = one_epoch(one, batch_statistics)
    loss_mirrored, w_mirrored = one_epoch(mirrored, batch_statistics)
    result[name] = {"loss": [loss_one, loss_mirrored], "weight_error": weight_error(w_mirrored, w_one),
                    "moved": weight_error(w_one, start)}
print(json.dumps(result))
"""

# Tolerance: the all-reduce adds the two replicas' partial gradient sums, a different summation order
# than one device's, so results agree to float32 rounding (measured: loss equal, weights within 3e-7
# of each tensor's scale), not bit for bit. 1e-4 leaves room for other CPUs and TF versions while
# staying far below what a real difference does (one epoch moves the weights by more than 1e-2).
TOLERANCE = 1e-4


def _run(code: str, env=ENV, timeout=HANG_GUARD_S) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mirrored_on_two_devices_matches_one_device_with_the_same_global_batch():
    r = _run(MIRRORED_VS_ONE_DEVICE)
    assert r["replicas"] == 2
    same = r["frozen_batchnorm"]
    assert same["moved"] > 100 * TOLERANCE  # the epoch trained: a broken split could not hide
    loss_one, loss_mirrored = same["loss"]
    assert loss_mirrored == pytest.approx(loss_one, rel=TOLERANCE)
    assert same["weight_error"] <= TOLERANCE, same
    # BatchNorm in training mode normalises with each replica's half batch (no SyncBatchNormalization):
    # the documented difference for simple-cnn from scratch, far outside the tolerance.
    assert r["batch_statistics"]["weight_error"] > 100 * TOLERANCE, r["batch_statistics"]


def test_distribute_kind_and_tf_config_are_checked(monkeypatch):
    from skinmole.distribute import distribution

    with pytest.raises(ValueError, match="none, mirrored, multi-worker"):
        distribution("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        distribution("multi-worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="not a cluster and task"):
        distribution("multi-worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}))
    with pytest.raises(ValueError, match="not in the cluster"):
        distribution("multi-worker")


def _class_folders(root: Path, per_class: int = 40) -> Path:
    """benign/ and malignant/ PNGs (48 px): light and dark blobs on skin-coloured noise."""
    from PIL import Image

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:48, :48]
    for cls, tone in (("benign", 150), ("malignant", 70)):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            img = rng.normal((200, 160, 140), 12, (48, 48, 3))
            r = rng.uniform(8, 16)
            blob = (yy - 24 - rng.normal(0, 3)) ** 2 + (xx - 24 - rng.normal(0, 3)) ** 2 < r * r
            img[blob] = rng.normal(tone, 20, (int(blob.sum()), 3))
            Image.fromarray(img.clip(0, 255).astype("uint8")).save(root / cls / f"{cls}_{i:02d}.png")
    return root


TRAIN_MIRRORED = r"""
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from skinmole.training import TrainOptions, train

train(TrainOptions(data=sys.argv[1], output=sys.argv[2], distribute="mirrored", architecture="simple-cnn",
                   input_size=32, head="binary", batch_size=8, epochs=1, warmup_epochs=0, cache_dir=None, verbose=0))
"""


def _assert_one_model_folder(models: Path, data: Path, distribute: str) -> None:
    """``models`` holds one loadable model folder, ``model``, whose val AUC is that of its own weights."""
    assert sorted(p.name for p in models.iterdir()) == ["model"]  # no other worker's copy, no checkpoint
    out = models / "model"
    assert not (out / "checkpoint").exists()
    config = json.loads((out / "skinmole.json").read_text())
    assert config["training"]["distribute"] == distribute
    history = json.loads((out / "history.json").read_text())
    # The epoch's val AUC was measured on the weights the folder holds (replica 0's, BatchNorm
    # statistics included): the calibration step gets the same AUC (binary head: temperature keeps the order).
    assert history[-1]["val_auc"] == pytest.approx(config["metrics"]["val"]["roc_auc"], abs=1e-6)

    from skinmole import load_model, predict

    model = load_model(out)
    assert model.input_size == 32
    pred = predict(sorted((data / "malignant").iterdir())[0], model, check_quality=False)
    assert 0.0 <= pred.malignant_probability <= 1.0


def test_train_mirrored_on_two_devices_writes_a_model_folder(tmp_path):
    data = _class_folders(tmp_path / "data")
    models = tmp_path / "models"
    models.mkdir()
    proc = subprocess.run([sys.executable, "-c", TRAIN_MIRRORED, str(data), str(models / "model")],
                          capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "mirrored: 2 replicas in sync" in proc.stdout
    _assert_one_model_folder(models, data, "mirrored")


def _worker_args(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--output", str(out), "--distribute", "multi-worker", "--architecture", "simple-cnn",
            "--input-size", "32", "--head", "binary", "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0",
            "--verbose", "0"]


def _train_command(tmp_path: Path, args: list[str]):
    """scripts/train.py ARGS for worker i, with a cache folder each (the two processes share one disk here)."""
    return lambda index: [str(ROOT / "scripts" / "train.py"), *args, "--cache-dir", str(tmp_path / f"cache{index}")]


def _two_workers(tmp_path: Path, command) -> list[tuple[int, str]]:
    """Run ``python *command(i)`` as workers 0 and 1 of a localhost cluster: [(exit code, output)]."""
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    procs = []
    for index in range(2):
        cmd = [sys.executable, *command(index)]
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      cwd=tmp_path, env={**ENV, "TF_CONFIG": json.dumps(tf_config)}))
    try:
        logs = [p.communicate(timeout=HANG_GUARD_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.returncode, log) for p, log in zip(procs, logs)]


# Image i is the one-hot vector e_i and the model one weight per image, starting at 0: an SGD step
# moves weight i only if image i was in the batch, and moves it as far as often as it was there.
SHUFFLED_SHARES = r"""
import json
from skinmole.distribute import distribution

dist = distribution("multi-worker")
import keras
import numpy as np

keras.utils.set_random_seed(42)
n = 24
with dist.scope():
    inputs = keras.Input((n,))
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
dist.prepare(model)
model.fit(np.eye(n, dtype="float32"), np.ones((n, 1), "float32"), batch_size=8, epochs=2, shuffle=True, verbose=0)
print(json.dumps(model.get_weights()[0].ravel().tolist()))
"""


def test_two_workers_see_every_image_once_per_epoch_in_shuffled_shares(tmp_path):
    """Keras shards each shuffled global batch between the workers (DATA sharding); that covers the
    set only if both shuffle alike, which the shared seed ensures. An image seen twice or never
    would leave its weight away from the others'."""
    runs = _two_workers(tmp_path, lambda index: ["-c", SHUFFLED_SHARES])
    for index, (code, log) in enumerate(runs):
        assert code == 0, f"worker {index}:\n{log[-4000:]}"
    weights = [np.array(json.loads(log.strip().splitlines()[-1])) for _, log in runs]
    np.testing.assert_array_equal(weights[0], weights[1])
    # Epoch 1: each image's error 1, averaged over the global batch of 8 -> +0.25; epoch 2: error 0.75 -> +0.1875.
    np.testing.assert_allclose(weights[0], 0.4375, rtol=1e-6)


def test_two_workers_train_together_and_only_the_chief_writes_the_model_folder(tmp_path):
    data = _class_folders(tmp_path / "data")
    models = tmp_path / "models"
    models.mkdir()
    runs = _two_workers(tmp_path, _train_command(tmp_path, _worker_args(data, models / "model")))
    for index, (code, log) in enumerate(runs):
        assert code == 0, f"worker {index}:\n{log[-4000:]}"
    (_, chief), (_, other) = runs
    assert "2 replicas in sync" in chief and "worker 1 done" in other
    # The chief alone keeps the best epoch, on its own weights: no worker waits on another for it.
    assert re.search(r"val_auc \d\.\d+", chief) and "val_auc nan" in other
    _assert_one_model_folder(models, data, "multi-worker")


def test_workers_resuming_from_different_epochs_are_refused_not_left_waiting(tmp_path):
    """The chief's checkpoint says one epoch is done, the other worker has none (its machine was
    replaced): both stop with the reason instead of waiting on each other's collectives."""
    from skinmole.commands.train import parser
    from skinmole.training import Checkpoint, TrainOptions

    data = _class_folders(tmp_path / "data", per_class=8)
    out = tmp_path / "models" / "model"
    args = _worker_args(data, out)
    checkpoint = Checkpoint(out / "checkpoint", TrainOptions(**vars(parser().parse_args(args))))
    checkpoint.folder.mkdir(parents=True)
    checkpoint.state_file.write_text(json.dumps({
        "options": checkpoint.options, "history": [{"epoch": 1, "phase": "train", "loss": 0.7, "val_auc": 0.5}],
        "phases_done": [], "best": {"auc": -1.0, "epoch": 0}}))
    for index, (code, log) in enumerate(_two_workers(tmp_path, _train_command(tmp_path, args))):
        assert code == 2, f"worker {index}:\n{log[-4000:]}"
        assert "the workers differ in epochs_done" in log, log[-2000:]
    assert not (out / "skinmole.json").exists()


def test_workers_with_other_settings_or_images_are_refused(tmp_path):
    """Worker 1 has another seed (so another shuffle) and one image fewer: each would train on the
    wrong shares of the batches without a word. Both stop and name what differs."""
    data = _class_folders(tmp_path / "data", per_class=8)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    next((other / "benign").iterdir()).unlink()
    out = tmp_path / "models" / "model"
    commands = [_train_command(tmp_path, _worker_args(data, out))(0),
                _train_command(tmp_path, [*_worker_args(other, out), "--seed", "43"])(1)]
    for index, (code, log) in enumerate(_two_workers(tmp_path, lambda i: commands[i])):
        assert code == 2, f"worker {index}:\n{log[-4000:]}"
        assert "the workers differ in settings, train_images" in log, log[-2000:]
    assert not out.exists()
