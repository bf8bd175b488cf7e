"""Training on several devices or machines with ``tf.distribute`` (Keras 3 on TensorFlow).

Why a strategy and nothing of our own: TensorFlow already splits batches, all-reduces gradients and
keeps replicas in step; training only has to create its variables inside ``strategy.scope()``, and
only one process may write the model folder. ``Distribution`` carries both facts for ``train()``.

- ``none``: no strategy; the single-device path exactly as before.
- ``mirrored``: ``MirroredStrategy`` over every local GPU (the logical CPU devices when there is no GPU).
- ``multi-worker``: ``MultiWorkerMirroredStrategy``; the cluster and this process's place in it come
  from ``TF_CONFIG``. Worker 0 (or the task of type ``chief``) is the chief.

Settings that do not change: ``--batch-size`` is the global batch, split evenly across the replicas,
so the number of steps per epoch, the learning rate and its schedule stay as on one device (we do
not scale the rate with the replica count). BatchNorm statistics are per replica (no
SyncBatchNormalization): the pretrained backbone's BatchNorm is frozen during fine-tuning and all but
the head is frozen in warm-up, so this only matters for ``simple-cnn`` trained from scratch, whose
batch statistics come from each replica's share of the batch (``batch_size / replicas`` images) and
whose moving statistics are kept per replica: the folder gets replica 0's (the chief's first device).

Validation: the chief alone measures the epoch's val AUC and keeps the best epoch, on the weights it
will save (``local_predict``); Keras' ``val_loss`` is averaged over the replicas. Every worker runs
the same command on the same data with the same ``--seed`` (the shuffling order comes from it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

DISTRIBUTIONS = ("none", "mirrored", "multi-worker")


@dataclass(frozen=True)
class Distribution:
    """The strategy (None for ``none``) and this process's role in it."""

    kind: str
    strategy: object | None = None
    worker: int = 0  # this process's task index among the workers
    chief: bool = True  # the one process that writes the model folder and the checkpoint
    _local_copies: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def replicas(self) -> int:
        return 1 if self.strategy is None else int(self.strategy.num_replicas_in_sync)

    def scope(self):
        """Where variables are created: the strategy's scope, or nothing at all without one."""
        return contextlib.nullcontext() if self.strategy is None else self.strategy.scope()

    def checkpoint_folder(self, out: Path) -> Path:
        """The chief checkpoints under the output folder; another worker keeps its own copy beside it
        (``OUT.worker-N``) so that it can resume at the same epoch, and removes it when done."""
        out = Path(out)
        return out / "checkpoint" if self.chief else self.worker_folder(out) / "checkpoint"

    def check_workers_agree(self, **facts) -> None:
        """Every worker must run the same training from the same point: workers with other settings
        or data would silently cover the wrong images (each takes its share of the batches its own
        shuffle makes), and one that starts over while another resumes would wait forever on
        collectives never run. Compare ``facts`` (JSON values) across the workers and name the
        ones that differ (ValueError on every worker)."""
        if self.kind != "multi-worker":
            return
        import zlib

        import numpy as np
        import tensorflow as tf

        names = sorted(facts)
        mine = np.array([zlib.crc32(json.dumps(facts[k], sort_keys=True).encode()) for k in names], np.int64)
        everyone = self.strategy.gather(self.strategy.run(lambda: tf.constant(mine[None])), axis=0).numpy()
        differ = [k for k, column in zip(names, everyone.T) if len(set(column.tolist())) > 1]
        if differ:
            shown = {k: facts[k] for k in differ}
            raise ValueError(f"worker {self.worker}: the workers differ in {', '.join(differ)} (here: {json.dumps(shown)[:500]}); "
                             f"run the same command on the same data everywhere, and to start over remove every "
                             f"worker's checkpoint (OUTPUT/checkpoint on the chief, OUTPUT.worker-N on the others)")

    def worker_folder(self, out: Path) -> Path:
        out = Path(out)
        return out.parent / f"{out.name}.worker-{self.worker}"

    def finish_worker(self, out: Path) -> None:
        """A non-chief worker is done: remove what it wrote (the chief writes the model folder)."""
        shutil.rmtree(self.worker_folder(out), ignore_errors=True)

    def prepare(self, model) -> None:
        """Let Keras 3 ``fit`` and ``evaluate`` ``model`` under a multi-worker strategy.

        Two steps of Keras 3.15 fail across workers (keras-team/keras#20585, with TF 2.21):
        (1) before training it all-reduces the first (x, y, weight) batch just to learn shapes and
        dtypes, and TensorFlow cannot all-reduce that nested structure across workers: this model
        builds from the worker's own share of the batch instead (same shapes, no collective);
        (2) it averages each step's logs over replicas along axis 0, which scalars lack: the
        step's logs become one-element vectors (same mean). Epoch logs are read from the metrics
        themselves, as on one device.
        """
        if self.kind != "multi-worker":
            return
        import types

        import keras
        import tensorflow as tf

        strategy = self.strategy

        def local_share(value):
            if isinstance(value, tf.distribute.DistributedValues):
                return strategy.experimental_local_results(value)[0]
            return value

        def build_from_local_share(model, iterator=None, data_batch=None):
            if iterator is not None:
                for _, _, batches in iterator:
                    data_batch = keras.tree.map_structure(local_share, next(batches))
                    break
            with strategy.scope():
                model._symbolic_build(data_batch=data_batch)

        def with_vector_logs(step):
            def run(data):
                return keras.tree.map_structure(lambda v: keras.ops.reshape(v, (1,)) if len(v.shape) == 0 else v,
                                                step(data))
            return run

        model._maybe_symbolic_build = types.MethodType(build_from_local_share, model)
        model.train_step = with_vector_logs(model.train_step)
        model.test_step = with_vector_logs(model.test_step)

    def local_predict(self, model, x, batch_size: int):
        """``model``'s outputs for ``x`` computed here alone, with the weights this process holds
        (replica 0's: the ones the chief saves). Distributed ``predict`` would run each replica on
        its share with its own BatchNorm moving statistics, which differ between replicas when
        BatchNorm trains (statistics are per replica), and would wait on every worker."""
        if self.strategy is None:
            return model.predict(x, batch_size=batch_size, verbose=0)
        copy = self._local_copies.get(id(model))
        if copy is None:
            copy = self._local_copies[id(model)] = self.plain_model(model)
        else:
            copy.set_weights(model.get_weights())
        return copy.predict(x, batch_size=batch_size, verbose=0)

    def plain_model(self, model):
        """``model`` with its weights copied into ordinary variables, for the single-process steps
        after training (calibration, saving, ONNX): no collective op can wait there on other workers."""
        if self.strategy is None:
            return model
        import keras

        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        return copy

    def describe(self) -> str:
        if self.strategy is None:
            return "one device"
        devices = ", ".join(self.strategy.extended.worker_devices)
        role = f"worker {self.worker} ({'chief' if self.chief else 'not chief'}), " if self.kind == "multi-worker" else ""
        return f"{self.kind}: {role}{self.replicas} replicas in sync, here {devices}"


def distribution(kind: str) -> Distribution:
    """The ``Distribution`` for ``--distribute KIND``. Call it before TensorFlow runs anything: a
    multi-worker strategy must configure the collective ops at start-up."""
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"distribute must be one of {', '.join(DISTRIBUTIONS)}, not {kind!r}")
    if kind == "none":
        return Distribution("none")
    if kind == "multi-worker":
        task_type, index = _tf_config_task()
    import tensorflow as tf

    if kind == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        return Distribution(kind, tf.distribute.MirroredStrategy(devices))
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    chief = task_type == "chief" or (task_type == "worker" and index == 0 and not _has_chief_task())
    worker = index if task_type == "worker" else 0
    return Distribution(kind, strategy, worker=worker, chief=chief)


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError("--distribute multi-worker needs TF_CONFIG: "
                         '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        task_type, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"TF_CONFIG is not a cluster and task description ({exc!r}): {raw[:200]}") from None
    if not isinstance(workers, list) or not workers:
        raise ValueError(f"TF_CONFIG: cluster.worker must list host:port addresses, not {workers!r}")
    return config | {"_task": (task_type, index)}


def _tf_config_task() -> tuple[str, int]:
    config = _tf_config()
    task_type, index = config["_task"]
    members = config["cluster"].get(task_type)
    if task_type not in ("worker", "chief") or not isinstance(members, list) or not 0 <= index < len(members):
        raise ValueError(f"TF_CONFIG: task {task_type!r} {index} is not in the cluster {config['cluster']}")
    return task_type, index


def _has_chief_task() -> bool:
    return bool(_tf_config()["cluster"].get("chief"))
