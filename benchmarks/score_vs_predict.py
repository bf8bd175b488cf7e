"""``skinmole score`` (Ray Data, local) against ``skinmole predict`` on the same files, in one run.

    python benchmarks/score_vs_predict.py [--images DIR_OR_LIST] [--n N] [--workers 2] [--batch-size 64]
                                          [--model SOURCE] [--output score_vs_predict.json]

Both commands run as child processes over the same image files (the default: every HAM10000 image),
after one pass that reads every file so that both find them in the page cache. For each it records
the wall time (start to exit: Ray's start and the model loads included), images per second, and the
peak memory of its whole process tree (for score: the driver, Ray's GCS, raylet, agents and workers),
sampled every 0.2 s as the sum of RSS and the sum of PSS (PSS splits shared pages, such as Ray's
object store, between the processes that map them; RSS counts them once per process).

For score it also reads the steady rate from its progress lines (the images finished between the
first and the last line over that time: startup excluded), the rate per worker, and from it what N
nodes would do if the rate per worker held (storage and the driver keeping up). The two outputs are
compared (rows, largest |delta P(malignant)|, labels that differ). Writes a JSON report and prints it.
Takes every core it is given: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLI = "import sys; from skinmole.cli import main; sys.exit(main(sys.argv[1:]))"
SAMPLE_EVERY_S = 0.2
CLUSTER_NODES = (1, 4, 16, 64)


def image_paths(source, n: int | None) -> list[str]:
    from skinmole.data import ham10000_root
    from skinmole.score import list_inputs

    if source is None:
        root = ham10000_root()
        if root is None:
            raise SystemExit("HAM10000 not found: pass --images DIR_OR_LIST")
        source = root / "images"
    paths = list_inputs(source)
    return paths[:n] if n else paths


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_memory_mb(pid: int) -> dict[int, tuple[str, float, float]]:
    """``{pid: (name, RSS MB, PSS MB)}`` for ``pid`` and its descendants."""
    kids, todo, out = _children(), [pid], {}
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                name = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            rss = pss = 0
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss = int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss = int(line.split()[1])
        except OSError:  # gone, or not ours to read
            continue
        out[p] = (_short(name), rss / 1024, pss / 1024)
    return out


def _short(cmdline: str) -> str:
    """A process's name for the report: Ray's title (``ray::...``) or the program's file name."""
    if cmdline.startswith("ray::"):
        return cmdline.split()[0]
    words = cmdline.split() or ["?"]
    if os.path.basename(words[0]).startswith("python"):  # a Python program: its script, or the command
        if len(words) > 1 and words[1] == "-c":
            return "skinmole (the command)"
        return os.path.basename(next((w for w in words[1:] if not w.startswith("-")), words[0]))
    return os.path.basename(words[0])


def run_measured(args: list[str], stdin_text: str | None = None) -> dict:
    """Run a command; wall time, peak tree memory, and its stderr lines with their times."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    peak = {"rss_mb": 0.0, "pss_mb": 0.0, "processes": 0}
    by_process: dict[int, tuple[str, float]] = {}  # the peak RSS of each process
    lines: list[tuple[float, str]] = []

    def sample():
        while proc.poll() is None:
            tree = tree_memory_mb(proc.pid)
            rss, pss = sum(t[1] for t in tree.values()), sum(t[2] for t in tree.values())
            peak["rss_mb"], peak["pss_mb"] = max(peak["rss_mb"], rss), max(peak["pss_mb"], pss)
            peak["processes"] = max(peak["processes"], len(tree))
            for p, (name, p_rss, _) in tree.items():
                by_process[p] = (name, max(p_rss, by_process.get(p, (name, 0.0))[1]))
            time.sleep(SAMPLE_EVERY_S)

    def read_stderr():
        for line in proc.stderr:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for t in threads:
        t.start()
    if stdin_text is not None:
        proc.stdin.write(stdin_text)
        proc.stdin.close()
    code = proc.wait()
    seconds = time.perf_counter() - start
    for t in threads:
        t.join(timeout=5)
    return {"exit": code, "seconds": round(seconds, 2), "peak_tree_rss_mb": round(peak["rss_mb"], 1),
            "peak_tree_pss_mb": round(peak["pss_mb"], 1), "peak_processes": peak["processes"],
            "peak_rss_mb_by_process": sorted(([name, round(mb, 1)] for name, mb in by_process.values()),
                                             key=lambda x: -x[1]),
            "stderr": lines}


def steady_rate(lines: list[tuple[float, str]]) -> float | None:
    """Images per second between the first and the last ``N/TOTAL images`` progress line."""
    points = []
    for t, line in lines:
        if line.startswith("skinmole score: ") and line.endswith(" images") and "/" in line:
            done = line.removeprefix("skinmole score: ").split("/")[0].replace(",", "")
            if done.isdigit():
                points.append((t, int(done)))
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


def compare(predict_jsonl: Path, score_parquet: Path) -> dict:
    import numpy as np
    import pandas as pd

    rows = [json.loads(line) for line in predict_jsonl.read_text().splitlines()]
    predicted = {os.path.abspath(r["input"]): r for r in rows}
    scored = pd.read_parquet(score_parquet).set_index("path")
    deltas, labels = [], 0
    for path, r in predicted.items():
        if path not in scored.index or r.get("malignant_probability") is None:
            continue
        s = scored.loc[path]
        deltas.append(abs(float(s["malignant_probability"]) - r["malignant_probability"]))
        labels += s["label"] != r["label"]
    return {"predict_lines": len(rows), "score_rows": len(scored), "same_inputs": set(predicted) == set(scored.index),
            "max_abs_delta_p_malignant": float(max(deltas, default=0.0)), "labels_differing": int(labels),
            "errors_in_score": int(scored["error"].notna().sum()),
            "errors_in_predict": sum("error" in r for r in rows), "compared": len(deltas)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default=None, help="a folder, glob or list of images (default: HAM10000's images)")
    p.add_argument("--n", type=int, default=None, help="only the first N images (default: all)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers for skinmole score (default 2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--model", default=None, help="model folder or Hub id (default: bundled)")
    p.add_argument("--output", default="score_vs_predict.json", help="the JSON report")
    args = p.parse_args(argv)

    paths = image_paths(args.images, args.n)
    for path in paths:  # both commands then read from the page cache
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    model = ["--model", args.model] if args.model else []
    with tempfile.TemporaryDirectory(prefix="score_vs_predict_") as tmp:
        listing = Path(tmp, "images.txt")
        listing.write_text("".join(f"{p}\n" for p in paths))
        predict_out, score_out = Path(tmp, "predict.jsonl"), Path(tmp, "score.parquet")
        predict = run_measured([sys.executable, "-c", CLI, "predict", "-", "--json", "--output", str(predict_out),
                                "--batch-size", str(args.batch_size), *model], stdin_text=listing.read_text())
        score = run_measured([sys.executable, "-c", CLI, "score", str(listing), "--output", str(score_out),
                              "--workers", str(args.workers), "--batch-size", str(args.batch_size), "--overwrite",
                              *model])
        agreement = compare(predict_out, score_out) if predict_out.exists() and score_out.exists() else None

    n = len(paths)
    rate = steady_rate(score["stderr"])
    for r in (predict, score):
        r["images_per_s"] = round(n / r["seconds"], 1)
        r["stderr_tail"] = [line for _, line in r.pop("stderr")[-5:]]
    per_worker = rate / args.workers if rate else None
    report = {
        "images": n, "workers": args.workers, "batch_size": args.batch_size, "cpu_cores": os.cpu_count(),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "predict": predict, "score": score,
        "throughput_ratio_score_over_predict": round(score["images_per_s"] / predict["images_per_s"], 3),
        "ray_overhead_percent": round(100 * (1 - score["images_per_s"] / predict["images_per_s"]), 1),
        "score_steady_images_per_s": round(rate, 1) if rate else None,
        "steady_ratio_score_over_predict": round(rate / predict["images_per_s"], 3) if rate else None,
        "per_worker_images_per_s": round(per_worker, 1) if per_worker else None,
        "cluster_estimate": ({f"{k} nodes x {args.workers} workers": round(k * args.workers * per_worker)
                              for k in CLUSTER_NODES} if per_worker else None),
        "agreement": agreement,
        "note": "wall times include starting Ray and loading the model in each worker; the steady rate "
                "excludes them (it needs at least two progress lines, one every 10 s); the cluster "
                "estimate assumes the rate per worker holds (storage and the driver keep up)",
    }
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if predict["exit"] in (0, 2) and score["exit"] in (0, 2) else 1


if __name__ == "__main__":
    sys.exit(main())
