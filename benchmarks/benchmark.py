"""Measure skinmole's inference paths on this machine; print a table and write JSON.

    python benchmarks/benchmark.py [--model FOLDER] [--images DIR_OR_CSV] [--n 256] [--repeats 5]
                                [--output bench.json] [--quick] [--skip-keras]

What it measures (medians over ``--repeats`` runs, with min and max):
  * one image from a file through ``predict()``: p50 and p95 per call after warm-up;
  * ``--n`` real images as in-memory arrays at the model's input size through ``predict()`` (with
    and without the quality gate), through the engine alone (same arrays, same 64-image batches),
    through ONNX Runtime in one call and through the raw ``keras_model.predict``; and the arrays as
    decoded (``predict`` resizes them);
  * images per second end to end from a folder of JPEG files (``predict(list_of_paths)``: decode +
    resize + model + quality gate, decoding overlapped with the model), and the same with decoding
    inline; ``--files-n`` images (default: every timing image, i.e. HAM10000's 1,520 test images);
  * cold start: a fresh process importing skinmole, loading the model and predicting one image
    (and whether that process imported TensorFlow);
  * peak memory (ru_maxrss) of a process running ``skinmole predict --json`` over many images, and
    over an eighth of them, to show that it does not grow with the number of images.

``--images``: a folder of images, or a CSV with ``image`` (and ``split``) columns (the test split is
used for the timing sets, every row for the memory run). Default: HAM10000's labels.csv when
``skinmole.data.ham10000_root()`` finds it, else the bundled sample images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def find_images(source) -> tuple[list[Path], list[Path]]:
    """(timing paths, memory-run paths) from a folder or a CSV (test split for timing, all rows for memory)."""
    from skinmole.data import IMAGE_SUFFIXES, ham10000_labels, load_set

    if source is None:
        source = ham10000_labels() or ROOT / "skinmole" / "samples"
    source = Path(source)
    if source.suffix.lower() == ".csv":
        every = list(load_set(source).paths)
        try:
            test = list(load_set(source, split="test").paths)
        except ValueError:  # no split column
            test = every
        return (test or every), every
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return paths, paths
    raise SystemExit(f"--images {source}: not a folder or a CSV file")


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


class Times(list):
    """Wall-clock seconds per run, with the process CPU seconds (all threads) in ``.cpu``."""

    def __init__(self):
        super().__init__()
        self.cpu: list[float] = []


def timed(fns: dict, repeats: int) -> dict[str, Times]:
    """Time each of ``fns`` once per round, ``repeats`` rounds, interleaved: a slow spell of a shared
    machine (or a warming cache) then hits every variant alike instead of whichever ran at the time."""
    out = {name: Times() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c, t = time.process_time(), time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t)
            out[name].cpu.append(time.process_time() - c)
    return out


def bench_single(model, paths, repeats, calls) -> dict:
    import skinmole

    for p in paths[:3]:
        skinmole.predict(p, model=model)  # warm-up
    p50s, p95s = [], []
    for r in range(repeats):
        times = []
        for i in range(calls):
            p = paths[(r * calls + i) % len(paths)]
            t = time.perf_counter()
            skinmole.predict(p, model=model)
            times.append(time.perf_counter() - t)
        p50s.append(percentile(times, 50) * 1000)
        p95s.append(percentile(times, 95) * 1000)
    return {"p50_ms": spread(p50s), "p95_ms": spread(p95s), "calls_per_run": calls}


def bench_arrays(model, paths, repeats, skip_keras) -> dict:
    import numpy as np
    import skinmole
    from skinmole.engines import OnnxEngine
    from skinmole.images import load_image, to_model_input
    from skinmole.predict import DEFAULT_BATCH

    decoded = [load_image(p) for p in paths]  # as decoded (HAM10000: 200x150)
    arrays = [to_model_input(a, model.input_size) for a in decoded]  # already at the model's input size
    batch = np.stack(arrays)
    n = len(arrays)
    out: dict = {"n": n, "engine_name": model.engine.name, "quality_gate": model.quality_gate is not None}

    def rate(times):
        return {"seconds": spread(times), "images_per_s": n / statistics.median(times),
                "cpu_seconds": spread(times.cpu)}

    def engine_call():
        for i in range(0, n, DEFAULT_BATCH):
            model.engine.run(batch[i:i + DEFAULT_BATCH])

    runs = {
        "predict": lambda: skinmole.predict(arrays, model=model),
        "predict_no_quality": lambda: skinmole.predict(arrays, model=model, check_quality=False),
        "predict_decoded_size": lambda: skinmole.predict(decoded, model=model),
        "engine": engine_call,
    }
    int8 = None
    if model.config.get("int8"):  # the opt-in int8 engine, timed in the same interleaved rounds as float
        import skinmole as _sm

        int8 = _sm.load_model(model.folder, engine="onnx-int8", gate=model.quality_gate is not None)
        runs["engine_int8"] = lambda: [int8.engine.run(batch[i:i + DEFAULT_BATCH]) for i in range(0, n, DEFAULT_BATCH)]
        runs["predict_int8"] = lambda: skinmole.predict(arrays, model=int8)
    variants = {}  # ONNX Runtime thread settings, same 64-image batches; timed apart, as a spinning
    if model.config.get("onnx_file"):  # session's idle threads would take CPU from whatever runs next
        ort = model.engine if model.engine.name == "onnx" else OnnxEngine(model.folder / model.config["onnx_file"])
        session = ort._session  # the raw InferenceSession: the whole batch in one call
        runs["onnxruntime_one_call"] = lambda: session.run(None, {"pixels": batch})
        for threads, spinning in ((None, False), (1, False), (None, True)):
            eng = OnnxEngine(model.folder / model.config["onnx_file"], threads=threads, spinning=spinning)
            variants[f"threads={eng.threads},spinning={int(spinning)}"] = (
                lambda eng=eng: [eng.run(batch[i:i + DEFAULT_BATCH]) for i in range(0, n, DEFAULT_BATCH)])
    for fn in [*runs.values(), *variants.values()]:  # warm-up: first-call allocations, thread start-up
        fn()
    times = timed(runs, repeats)
    for name in ("predict", "predict_no_quality", "predict_decoded_size", "engine", "onnxruntime_one_call",
                 "engine_int8", "predict_int8"):
        if name in times:
            out[name] = rate(times[name])
    if int8 is not None:  # issue 15's goal: >= 2x the float engine's images/s, side by side
        out["int8_speedup"] = {k: out[f"{k}_int8"]["images_per_s"] / out[k]["images_per_s"] for k in ("engine", "predict")}
    out["predict_over_engine"] = out["predict"]["seconds"]["median"] / out["engine"]["seconds"]["median"]
    # CPU time is far less disturbed by other processes than wall time on a shared machine
    out["predict_over_engine_cpu"] = out["predict"]["cpu_seconds"]["median"] / out["engine"]["cpu_seconds"]["median"]
    out["predict_no_quality_over_engine_cpu"] = (out["predict_no_quality"]["cpu_seconds"]["median"]
                                                 / out["engine"]["cpu_seconds"]["median"])
    if variants:
        out["onnxruntime_settings"] = {k: rate(v) for k, v in timed(variants, repeats).items()}
    if not skip_keras:
        km = model.keras_model
        x = batch.astype(np.float32)
        km.predict(x[:8], verbose=0)
        out["keras_predict"] = rate(timed({"k": lambda: km.predict(x, batch_size=DEFAULT_BATCH, verbose=0)}, repeats)["k"])
    return out


def bench_files(model, paths, repeats) -> dict:
    import skinmole

    n = len(paths)
    out = {"n": n}
    skinmole.predict(paths[:8], model=model)
    times = timed({key: (lambda workers=workers: skinmole.predict(paths, model=model, workers=workers))
                   for key, workers in (("overlapped", None), ("inline_decode", 0))}, repeats)
    for key, t in times.items():
        out[key] = {"seconds": spread(t), "images_per_s": n / statistics.median(t)}
    return out


COLD = """
import sys, time
t0 = time.perf_counter()
import skinmole
m = skinmole.load_model(sys.argv[1])
p = skinmole.predict(sys.argv[2], model=m)
t1 = time.perf_counter()
print({"seconds": t1 - t0, "engine": m.engine.name, "tensorflow": "tensorflow" in sys.modules,
       "keras": "keras" in sys.modules})
"""


def bench_cold(folder, image, repeats) -> dict:
    inside, wall, info = [], [], {}
    for _ in range(repeats):
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", COLD, str(folder), str(image)], capture_output=True,
                             text=True, cwd=ROOT, timeout=600)
        wall.append(time.perf_counter() - t)
        if res.returncode != 0:
            raise RuntimeError(f"cold-start run failed: {res.stderr[-2000:]}")
        info = eval(res.stdout.strip().splitlines()[-1], {})  # our own dict literal
        inside.append(info["seconds"])
    return {"process_wall_s": spread(wall), "import_load_predict_s": spread(inside), "engine": info["engine"],
            "imported_tensorflow": info["tensorflow"], "imported_keras": info["keras"]}


# The CLI runs as a grandchild: Linux counts the RSS a forked child shares with its parent in
# ru_maxrss, so a small launcher (not this process, which holds the models) starts it and reads
# its ru_maxrss with wait4.
LAUNCH = """
import json, os, subprocess, sys, time
code = ("import sys; from skinmole.cli import main; "
        "paths = open(sys.argv[1]).read().splitlines(); "
        "sys.exit(main(['predict', '--json', '--model', sys.argv[2], *paths]))")
t = time.perf_counter()
proc = subprocess.Popen([sys.executable, "-c", code, sys.argv[1], sys.argv[2]],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
lines = sum(1 for _ in proc.stdout)
err = proc.stderr.read().decode(errors="replace")
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "seconds": time.perf_counter() - t,
                  "output_lines": lines, "peak_rss_mb": usage.ru_maxrss / 1024, "stderr": err[-2000:]}))
"""


def _cli_run(folder, paths) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(str(p) for p in paths))
        listing = f.name
    try:
        res = subprocess.run([sys.executable, "-c", LAUNCH, listing, str(folder)], cwd=ROOT,
                             capture_output=True, text=True, timeout=3600)
    finally:
        os.unlink(listing)
    if res.returncode != 0:
        raise RuntimeError(f"CLI launcher failed: {res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["exit"] not in (0, 2):
        raise RuntimeError(f"CLI run failed ({out['exit']}): {out['stderr']}")
    del out["stderr"]
    out["images"] = len(paths)
    out["images_per_s"] = len(paths) / out["seconds"]
    return out


def bench_memory(folder, paths) -> dict:
    small = paths[: max(1, len(paths) // 8)]
    return {"all": _cli_run(folder, paths), "eighth": _cli_run(folder, small)}


def machine() -> dict:
    import numpy as np

    info = {"cpu_cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform(), "load_average_at_start": os.getloadavg()}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def fmt(res: dict) -> str:
    def ms(d):
        return f"{d['median']:.1f} ms (min {d['min']:.1f}, max {d['max']:.1f})"

    def rate(d):
        s = d["seconds"]
        cpu = f", cpu {d['cpu_seconds']['median']:.3f} s" if "cpu_seconds" in d else ""
        return f"{d['images_per_s']:.0f} img/s ({s['median']:.3f} s, min {s['min']:.3f}, max {s['max']:.3f}{cpu})"

    rows = []
    if "single" in res:
        rows += [("1 image from a file, predict() p50", ms(res["single"]["p50_ms"])),
                 ("1 image from a file, predict() p95", ms(res["single"]["p95_ms"]))]
    if "arrays" in res:
        a = res["arrays"]
        gate = "with quality gate" if a["quality_gate"] else "no quality gate in this model"
        rows.append((f"{a['n']} arrays at input size, predict() [{a['engine_name']}, {gate}]", rate(a["predict"])))
        rows.append((f"{a['n']} arrays, predict(check_quality=False)", rate(a["predict_no_quality"])))
        rows.append((f"{a['n']} arrays as decoded (resized in predict)", rate(a["predict_decoded_size"])))
        rows.append((f"{a['n']} arrays, engine.run only (same batches)", rate(a["engine"])))
        rows.append(("predict() / engine time (wall; cpu)", f"{a['predict_over_engine']:.2f}x; "
                     f"{a['predict_over_engine_cpu']:.2f}x (no quality gate: {a['predict_no_quality_over_engine_cpu']:.2f}x)"))
        if "onnxruntime_one_call" in a:
            rows.append((f"{a['n']} arrays, raw ONNX Runtime session, one call", rate(a["onnxruntime_one_call"])))
        if "int8_speedup" in a:
            rows.append((f"{a['n']} arrays, int8 engine.run only (opt-in)", rate(a["engine_int8"])))
            rows.append((f"{a['n']} arrays, predict() with the int8 engine", rate(a["predict_int8"])))
            rows.append(("int8 / float images/s (engine; predict)",
                         f"{a['int8_speedup']['engine']:.2f}x; {a['int8_speedup']['predict']:.2f}x"))
        for key, v in a.get("onnxruntime_settings", {}).items():
            rows.append((f"{a['n']} arrays, ONNX Runtime {key}", rate(v)))
        if "keras_predict" in a:
            rows.append((f"{a['n']} arrays, keras_model.predict", rate(a["keras_predict"])))
    if "files" in res:
        f = res["files"]
        rows.append((f"{f['n']} JPEG files end to end (overlapped)", rate(f["overlapped"])))
        rows.append((f"{f['n']} JPEG files end to end (inline decode)", rate(f["inline_decode"])))
    if "cold_start" in res:
        c = res["cold_start"]
        rows.append(("cold start: import+load+predict", f"{c['import_load_predict_s']['median']:.2f} s "
                     f"(min {c['import_load_predict_s']['min']:.2f}, max {c['import_load_predict_s']['max']:.2f})"))
        rows.append(("cold start: whole process", f"{c['process_wall_s']['median']:.2f} s"))
        rows.append(("cold start imported TensorFlow", str(c["imported_tensorflow"])))
    if "memory" in res:
        for key in ("all", "eighth"):
            m = res["memory"][key]
            rows.append((f"CLI over {m['images']} images: peak RSS",
                         f"{m['peak_rss_mb']:.0f} MB ({m['images_per_s']:.0f} img/s, exit {m['exit']})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--images", default=None, help="a folder of images or a CSV (default: HAM10000 labels.csv)")
    parser.add_argument("--n", type=int, default=256, help="images in the batch tests (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement (default 5)")
    parser.add_argument("--single-calls", type=int, default=50, help="predict() calls per single-image run")
    parser.add_argument("--files-n", type=int, default=None,
                        help="images in the JPEG-folder run (default: all timing images)")
    parser.add_argument("--memory-n", type=int, default=None, help="images for the CLI memory run (default: all)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="a few images, one repeat (for tests)")
    parser.add_argument("--skip-keras", action="store_true", help="do not time keras_model.predict (no TensorFlow)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.single_calls = min(args.n, 8), 1, 5
        args.files_n = min(args.files_n or 8, 8)
        args.memory_n = min(args.memory_n or 16, 16)

    from skinmole.model import BUNDLED_MODEL, load_model

    folder = Path(args.model) if args.model else BUNDLED_MODEL
    timing_paths, memory_paths = find_images(args.images)
    if not timing_paths:
        raise SystemExit("no images found")
    if args.memory_n:
        memory_paths = memory_paths[: args.memory_n]
    paths = (timing_paths * (args.n // len(timing_paths) + 1))[: args.n]

    res: dict = {"machine": machine(), "model": str(folder), "images": str(args.images or "default"),
                 "n": args.n, "repeats": args.repeats}
    model = load_model(folder)
    res["engine"] = model.engine.name
    print(f"model {folder} ({model.config.get('architecture')}, {model.input_size}px), engine {model.engine.name}, "
          f"{len(paths)} images, {args.repeats} repeats", file=sys.stderr)
    res["single"] = bench_single(model, paths, args.repeats, args.single_calls)
    res["arrays"] = bench_arrays(model, paths, args.repeats, args.skip_keras)
    res["files"] = bench_files(model, timing_paths[: args.files_n] if args.files_n else timing_paths, args.repeats)
    res["cold_start"] = bench_cold(folder, paths[0], args.repeats)
    res["memory"] = bench_memory(folder, memory_paths)
    res["machine"]["load_average_at_end"] = os.getloadavg()
    print(fmt(res))
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
