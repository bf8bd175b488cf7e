"""Train skinmole experiments on a lent GPU machine, then finish their model folders back here.

Why: a training run that takes 1-2 hours on the project's 2 CPU cores takes minutes on one GPU, but
that machine has no data, no Keras and no internet, returns at most 8 files (16 MiB each, 64 MiB in
all) and lends 15 minutes in all. So the work is split:

``run`` (on the device, through ``experiments/device_run.sh``): unpack the ``device/`` pack written by
``experiments/device_pack.py``, check torch and CUDA, time 20 training steps, then train the runs in
order with Keras on the torch backend (``--no-finish``: the best epoch by *validation* ROC AUC, HAM
val or, with ``--exclude-sources``, the training clinics' val; never test), skipping a run that the
time budget cannot hold. Each run leaves one ``$OUT/NAME.zip``: its weights (convolution kernels in
float16, to fit what comes back), history, every epoch's validation P(malignant) and its options.

``finish`` (here, with the project's venv): rebuild ``models/device-runs/NAME/init.keras`` from a
run's zip and finish it like any run trained elsewhere (``--init-weights ... --epochs 0``: temperature,
threshold, ONNX, quality gate, on the original images): a left-out-clinic run (``--exclude-sources``)
through ``experiments/left_out_clinic.py`` (models/loc-NAME and its report), another through
``skinmole train`` (models/NAME).

    bash experiments/device_run.sh [--budget-s 480] [--run 'NAME: TRAIN OPTIONS' ...]     (device)
    python experiments/device_run.py finish /work/.device/.../NAME.zip [--name NAME]        (here)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# In priority order: the time budget drops runs from the end. LOC = left-out clinic (rosendahl).
DEFAULT_RUNS = (
    "loc-lite0-128: --exclude-sources rosendahl",
    "loc-lite0-192: --exclude-sources rosendahl --input-size 192",
    "loc-lite0-192-camera: --exclude-sources rosendahl --input-size 192 --augment camera --sample-weighting source-class",
    "lite0-192-camera: --input-size 192 --augment camera --sample-weighting source-class",
)
MAX_RUNS = 6  # $OUT returns 8 files: the log, summary.json and one zip per run
TIMING_STEPS = 20
# Options that describe where a run happened, not what it trained: not passed on when finishing.
_NOT_PASSED_ON = {"data", "output", "val_data", "cache_dir", "init_weights", "epochs", "warmup_epochs", "pretrained",
                  "resume", "finish", "validation", "distribute", "verbose", "extra_train", "extra_weight",
                  "exclude_sources"}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_run(spec: str) -> tuple[str, list[str]]:
    """``'NAME: --opt value ...'`` -> (NAME, [--opt, value, ...])."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"run {spec!r}: needs 'NAME: options' with NAME of letters, digits, '-', '_', '.'")
    return name, shlex.split(rest)


# --------------------------------------------------------------------------- on the device

def check_environment(require_cuda: bool) -> dict:
    """Versions, the backend and the accelerator; a clear SystemExit when a piece is missing."""
    facts = {"python": sys.version.split()[0], "keras_backend": os.environ.get("KERAS_BACKEND")}
    try:
        import torch
    except ImportError:
        raise SystemExit("DEVICE CHECK FAILED: no torch in this python (the device image should have it)") from None
    facts.update(torch=torch.__version__, cuda=torch.cuda.is_available(),
                 gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    if require_cuda and not facts["cuda"]:
        raise SystemExit(f"DEVICE CHECK FAILED: torch {torch.__version__} sees no CUDA device (pass --allow-cpu to run anyway)")
    if facts["keras_backend"] != "torch":
        raise SystemExit("DEVICE CHECK FAILED: set KERAS_BACKEND=torch (device_run.sh does)")
    try:
        import keras
    except ImportError as exc:
        raise SystemExit(f"DEVICE CHECK FAILED: Keras not importable ({exc}); were device/wheels installed?") from None
    facts["keras"] = keras.__version__
    if keras.backend.backend() != "torch":
        raise SystemExit(f"DEVICE CHECK FAILED: Keras runs on {keras.backend.backend()}, not torch")
    _log(f"environment: {facts}")
    if not facts["cuda"]:
        _log("WARNING: NO CUDA, training on the CPU")
    return facts


def unpack(pack: Path, dest: Path) -> dict[str, Path]:
    """Extract every data archive of the pack; {set name: its labels.csv}."""
    found = {}
    for archive in sorted((pack / "data").glob("*.zip")):
        target = dest / archive.stem
        with zipfile.ZipFile(archive) as z:
            z.extractall(target)
        found[archive.stem] = target / "labels.csv"
    if "ham10000" not in found:
        raise SystemExit(f"DEVICE CHECK FAILED: no data/ham10000.zip in {pack}; run experiments/device_pack.py")
    return found


def use_packed_imagenet(pack: Path) -> None:
    """Make ``architectures.load_imagenet`` read the pack's npz (the device has no weights packages)."""
    from skinmole import architectures

    original = architectures.load_imagenet

    def load_from_pack(model, architecture, state=None, include_top=False):
        if state is None:
            path = pack / "imagenet" / f"{architecture}.npz"
            if not path.is_file():
                raise ValueError(f"{architecture}: no ImageNet weights in the pack ({path}); "
                                 f"pack them with device_pack.py --architectures {architecture}")
            with np.load(path) as z:
                state = {k: z[k].astype("float32") for k in z.files}
        return original(model, architecture, state=state, include_top=include_top)

    architectures.load_imagenet = load_from_pack


def train_options(name: str, args: list[str], labels: Path, work: Path, extra: list[str],
                  packed_out: set[str] = frozenset()):
    """The ``TrainOptions`` of one run, parsed by ``skinmole train``'s own parser (same flags, same checks).

    A source the pack left out (``device_pack.py --exclude-sources``) is already absent from the data:
    the run must leave it out too, and it is dropped from ``exclude_sources`` here (which refuses a
    source the data lacks); ``recorded_options`` restores it for finishing."""
    from skinmole.commands.train import parser
    from skinmole.training import TrainOptions

    data_args = []
    for i, a in enumerate(args):  # --extra-train isic2020-subset: the unpacked copy's labels.csv
        if i and args[i - 1] == "--extra-train" and not Path(a).is_file():
            a = str(work / "data" / a / "labels.csv")
        data_args.append(a)
    ns = parser(f"run {name}").parse_args(["--data", str(labels), "--output", str(work / "runs" / name),
                                           "--cache-dir", str(work / "cache"), "--no-resume", "--no-finish",
                                           *data_args, *extra])
    opts = TrainOptions(**vars(ns))
    wanted = {x.strip() for x in (opts.exclude_sources or "").split(",") if x.strip()}
    if not packed_out <= wanted:
        raise ValueError(f"the pack has no {', '.join(sorted(packed_out - wanted))} images: this run needs "
                         f"--exclude-sources {','.join(sorted(wanted | packed_out))}, or a pack with every source")
    opts.exclude_sources = ",".join(sorted(wanted - packed_out)) or None
    opts.recorded_exclude_sources = ",".join(sorted(wanted)) or None  # what the run left out, packed or not
    return opts


def recorded_options(opts) -> dict:
    """The run's options as finishing needs them: the sources it left out, packed or not."""
    from dataclasses import asdict

    return asdict(opts) | {"exclude_sources": getattr(opts, "recorded_exclude_sources", opts.exclude_sources)}


def finish_arguments(options: dict, init: Path) -> list[str]:
    """``skinmole train`` flags that finish a run: its non-default settings, ``--init-weights`` and no epochs."""
    from skinmole.training import TrainOptions

    defaults = TrainOptions(data="", output="")
    passed = []
    for key, value in options.items():
        if key in _NOT_PASSED_ON or value == getattr(defaults, key):
            continue
        flag = "--" + key.replace("_", "-")
        passed += ([flag] if value else ["--no-" + key.replace("_", "-")]) if isinstance(value, bool) else [flag, str(value)]
    if options.get("extra_train"):  # the same extra images here, so that the folder's licence names them
        from skinmole.data import isic2020_subset_labels

        here = isic2020_subset_labels()
        if Path(options["extra_train"]).parent.name == "isic2020-subset" and here is not None:
            passed += ["--extra-train", str(here), "--extra-weight", str(options["extra_weight"])]
    return passed + ["--init-weights", str(init), "--epochs", "0"]


def time_steps(opts, steps: int = TIMING_STEPS) -> float:
    """Seconds per training step of ``opts``' model and batch, after 3 warm-up steps (real images)."""
    import keras

    from skinmole import architectures
    from skinmole.augmentation import augmentation
    from skinmole.data import load_pixels, load_set

    s = load_set(opts.data, split="train")
    x = load_pixels(s.subset(range(min(len(s), opts.batch_size))), opts.input_size, None)
    y = keras.utils.to_categorical(np.arange(len(x)) % 7, 7)
    model = architectures.build(opts.architecture, opts.input_size, 7, colour_constancy=opts.colour_constancy)
    inputs = keras.Input(model.input_shape[1:])
    train_model = keras.Model(inputs, model(augmentation(opts.seed, opts.augment)(inputs)))
    train_model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    for _ in range(3):
        train_model.train_on_batch(x, y)
    _sync()
    started = time.perf_counter()
    for _ in range(steps):
        train_model.train_on_batch(x, y)
    _sync()
    per_step = (time.perf_counter() - started) / steps
    _log(f"timing: {opts.architecture} {opts.input_size}px batch {len(x)}: {per_step * 1000:.0f} ms/step "
         f"({len(x) / per_step:.0f} images/s) over {steps} steps")
    return per_step


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def estimate_seconds(opts, per_step_128: float, train_images: int) -> float:
    """A run's expected seconds: its steps at the timed speed, scaled by pixels, plus 30% for
    validation and Keras' epoch overhead."""
    epochs = opts.epochs + (opts.warmup_epochs if opts.pretrained and not opts.init_weights else 0)
    steps = epochs * int(np.ceil(train_images / opts.batch_size))
    return 1.3 * steps * per_step_128 * max(1.0, (opts.input_size / 128) ** 2) + 30


def package(name: str, folder: Path, opts, seconds: float, facts: dict, pack_manifest: dict, out: Path) -> Path:
    """``$OUT/NAME.zip``: weights.npz (kernels float16), history.json, val_predictions.npz, run.json."""
    import keras

    from skinmole import colour_constancy  # noqa: F401  (registers ShadesOfGray)
    weights = keras.saving.load_model(folder / "model.keras", compile=False).get_weights()
    arrays = {f"w{i:04d}": (w.astype("float16") if w.ndim >= 2 else w) for i, w in enumerate(weights)}
    npz = folder / "weights.npz"
    np.savez(npz, **arrays)
    history = json.loads((folder / "history.json").read_text())
    best = max((r for r in history if "val_auc" in r), key=lambda r: r["val_auc"], default=None)
    record = {"name": name, "options": recorded_options(opts), "seconds": round(seconds, 1), "environment": facts,
              "pack": {k: pack_manifest.get(k) for k in ("data", "imagenet", "wheels")},
              "best_epoch": best and best["epoch"], "best_val_auc": best and best["val_auc"],
              "weights": "model.get_weights() order; kernels (ndim >= 2) stored as float16"}
    target = out / f"{name}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(npz, "weights.npz")
        for f in ("history.json", "val_predictions.npz"):
            z.write(folder / f, f)
        z.writestr("run.json", json.dumps(record, indent=1))
    _log(f"{name}: wrote {target} ({target.stat().st_size / 2**20:.1f} MiB); best epoch {record['best_epoch']} "
         f"val_auc {record['best_val_auc']}")
    return target


def run(args) -> int:
    out = Path(args.out or os.environ.get("OUT") or "")
    if not str(out):
        raise SystemExit("set $OUT or --out")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs = [parse_run(s) for s in (args.run or DEFAULT_RUNS)]
    if len(runs) > MAX_RUNS:
        raise SystemExit(f"at most {MAX_RUNS} runs: $OUT returns 8 files")
    if len({name for name, _ in runs}) < len(runs):
        raise SystemExit("two runs have the same name (each writes $OUT/NAME.zip)")
    facts = check_environment(require_cuda=not args.allow_cpu)
    pack = Path(args.pack)
    manifest = json.loads((pack / "manifest.json").read_text())
    _log(f"pack: {json.dumps(manifest['data'])}")
    work = Path(args.work)
    sets = unpack(pack, work / "data")
    use_packed_imagenet(pack)
    extra = shlex.split(args.extra)
    from skinmole.training import split_sets, train

    summary = {"environment": facts, "budget_s": args.budget_s, "runs": []}
    packed_out = set(manifest["data"][0].get("sources_left_out", []))
    prepared = {}  # every run's options checked before any training: a typo costs seconds, not a run
    for name, run_args in runs:
        try:
            prepared[name] = opts = train_options(name, run_args, sets["ham10000"], work, extra, packed_out)
            if opts.pretrained and not opts.init_weights and opts.architecture != "simple-cnn" \
                    and not (pack / "imagenet" / f"{opts.architecture}.npz").is_file():
                raise ValueError(f"no ImageNet start for {opts.architecture} in the pack: "
                                 f"device_pack.py --architectures {opts.architecture}")
        except (ValueError, SystemExit) as exc:  # argparse reports a bad flag with SystemExit
            prepared[name] = exc
            _log(f"{name}: REFUSED before training: {exc!r}")
    valid = [o for o in prepared.values() if not isinstance(o, BaseException)]
    if not valid:
        raise SystemExit("no run has valid options")
    opts0 = valid[0]
    per_step = time_steps(opts0, args.timing_steps) / max(1.0, (opts0.input_size / 128) ** 2)  # as at 128 px
    summary["seconds_per_step_at_128px"] = per_step
    correction = 1.0  # the last finished run's actual / expected seconds (the timing misses decoding, validation)
    for name, run_args in runs:
        entry = {"name": name, "args": run_args}
        summary["runs"].append(entry)
        try:
            opts = prepared[name]
            if isinstance(opts, BaseException):
                entry["status"] = f"refused: {opts!r}"
                continue
            n_train = len(split_sets(opts)[0])
            expected = estimate_seconds(opts, per_step, n_train) * correction
            left = args.budget_s - (time.time() - started)
            entry["expected_s"] = round(expected)
            if expected > left:
                entry["status"] = f"skipped: expected {expected:.0f} s, {left:.0f} s left of the budget"
                _log(f"{name}: {entry['status']}")
                continue
            _log(f"{name}: start (expected {expected:.0f} s, {left:.0f} s left): {' '.join(run_args)}")
            t0 = time.time()
            folder = train(opts)
            entry["seconds"] = round(time.time() - t0, 1)
            correction = min(4.0, max(0.25, correction * entry["seconds"] / expected))
            entry["zip"] = package(name, folder, opts, entry["seconds"], facts, manifest, out).name
            entry["status"] = "done"
        except Exception as exc:  # one broken run must not lose the others
            entry["status"] = f"failed: {exc!r}"
            _log(f"{name}: FAILED\n{traceback.format_exc()}")
        finally:
            (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _log(f"all done in {time.time() - started:.0f} s: " + "; ".join(f"{r['name']} {r.get('status')}" for r in summary["runs"]))
    return 0 if all(r.get("status") == "done" for r in summary["runs"]) else 1


# --------------------------------------------------------------------------- back here

def finish(args) -> int:
    """Rebuild the run's model from its zip and finish the folder on the original images."""
    from skinmole import architectures
    from skinmole.data import ham10000_labels

    with zipfile.ZipFile(args.zip) as z:
        record = json.loads(z.read("run.json"))
        name = args.name or record["name"]
        folder = Path(args.models) / "device-runs" / name
        folder.mkdir(parents=True, exist_ok=True)
        z.extractall(folder)
    opts = record["options"]
    with np.load(folder / "weights.npz") as w:
        weights = [w[k].astype("float32") for k in sorted(w.files)]
    model = architectures.build(opts["architecture"], opts["input_size"], weights[-1].shape[0],
                                colour_constancy=opts["colour_constancy"])
    model.set_weights(weights)
    init = folder / "init.keras"
    model.save(init)
    passed = finish_arguments(opts, init)
    _log(f"{name}: device run of {record['seconds']} s, best epoch {record['best_epoch']} (val_auc {record['best_val_auc']}); "
         f"its history is in {folder}")
    if opts.get("exclude_sources"):
        sys.path.insert(0, str(REPO / "experiments"))
        from left_out_clinic import main as left_out_clinic

        loc_name = name.removeprefix("loc-")  # left_out_clinic.py writes models/loc-NAME
        command = ["--name", loc_name, "--left-out", opts["exclude_sources"], *passed]
        _log("python experiments/left_out_clinic.py " + shlex.join(command))
        return left_out_clinic(command)
    from skinmole.commands.train import main as train_main

    command = ["--data", str(ham10000_labels()), "--output", str(Path(args.models) / name), *passed]
    _log("skinmole train " + shlex.join(command))
    return train_main(command)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="on the device: train the runs, one zip each under $OUT")
    r.add_argument("--run", action="append", help="'NAME: skinmole train options' (repeat; default: DEFAULT_RUNS)")
    r.add_argument("--extra", default="", help="options added to every run (e.g. '--limit 40 --epochs 1' for a smoke test)")
    r.add_argument("--budget-s", type=float, default=480, help="start no run expected to end after this many seconds")
    r.add_argument("--pack", default=str(REPO / "device"))
    r.add_argument("--work", default="/tmp/skinmole-device", help="where data, caches and runs are unpacked")
    r.add_argument("--out", default=None, help="default $OUT")
    r.add_argument("--timing-steps", type=int, default=TIMING_STEPS, help="training steps timed before the runs")
    r.add_argument("--allow-cpu", action="store_true", help="run without CUDA (a test of this script on a CPU)")
    f = sub.add_parser("finish", help="here: finish a run's model folder from its zip")
    f.add_argument("zip")
    f.add_argument("--name", default=None)
    f.add_argument("--models", default=str(REPO / "models"))
    args = p.parse_args(argv)
    return run(args) if args.command == "run" else finish(args)


if __name__ == "__main__":
    sys.exit(main())
