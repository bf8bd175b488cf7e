#!/usr/bin/env python
"""Latency of the Gradio demo under concurrent visitors: p50/p95 of a full /predict request.

Starts the demo (skinmole.demo_app) in-process on a free port (or uses --url), then runs --clients concurrent
gradio_client clients, each sending --per-client real images (HAM10000 test split when the data set
is found, else the bundled samples) and timing each request end to end (upload + queue + predict +
Grad-CAM + response). Prints the summary and writes it as JSON. A benchmark, not a test.

  python benchmarks/bench_demo.py              # 8 clients x 5 images, bundled (or SKINMOLE_MODEL) model
  python benchmarks/bench_demo.py --url http://127.0.0.1:7860/ --per-client 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _images(n: int) -> tuple[list[Path], str]:
    """n real images: distinct HAM10000 test-split images when available (distinct, so no two
    concurrent uploads share a server path), else the bundled samples, repeated."""
    from skinmole.data import ham10000_labels, read_csv

    labels = ham10000_labels()
    if labels is not None:
        test = read_csv(labels, split="test")
        paths = list(test.paths)
        step = max(1, len(paths) // n)
        return paths[::step][:n], f"HAM10000 test split ({labels.parent})"
    from skinmole.sample_images import sample_paths

    samples = sample_paths()
    return [samples[i % len(samples)] for i in range(n)], "bundled samples (repeated)"


def _start_app(model_source):
    import skinmole
    from skinmole import demo_app as demo

    model = skinmole.load_model(model_source)
    app = demo.build_app(model)  # warms the model up before the first visitor
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(app, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    info = {"model_source": str(model_source) if model_source else "bundled",
            "model": {k: model.config.get(k) for k in ("name", "version", "architecture", "input_size")},
            "concurrency_limit": demo.CONCURRENCY, "queue_max_size": demo.QUEUE_SIZE}
    return app, f"http://127.0.0.1:{port}/", info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="benchmark a running demo instead of starting one")
    ap.add_argument("--model", default=os.environ.get("SKINMOLE_MODEL") or None,
                    help="model source for the started demo (default: SKINMOLE_MODEL or the bundled model)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=5, help="images each client sends, one after another")
    ap.add_argument("--output", default=str(ROOT / "reports" / "demo-latency.json"))
    args = ap.parse_args(argv)

    from gradio_client import Client, handle_file

    app, info = None, {}
    if args.url:
        url = args.url
    else:
        app, url, info = _start_app(args.model)
    images, image_source = _images(args.clients * args.per_client)
    load_before = os.getloadavg()

    Client(url, verbose=False).predict(handle_file(str(images[0])), api_name="/predict")  # warm-up
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(args.clients)

    def visitor(k: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as exc:  # reported in the summary
            with lock:
                errors.append(f"client {k}: {exc}")
            start_line.abort()
            return
        mine = images[k * args.per_client:(k + 1) * args.per_client]
        try:
            start_line.wait()
        except threading.BrokenBarrierError:
            pass
        for path in mine:
            t0 = time.perf_counter()
            try:
                result = client.predict(handle_file(str(path)), api_name="/predict")
                ok = isinstance(result[-1], dict) and "malignant_probability" in result[-1]
            except Exception as exc:  # reported in the summary
                ok, result = False, exc
            dt = time.perf_counter() - t0
            with lock:
                if ok:
                    latencies.append(dt)
                else:
                    errors.append(f"{path.name}: {result}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=visitor, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if app is not None:
        app.close()

    lat = np.asarray(latencies)
    summary = {
        "url": url if args.url else "in-process demo on 127.0.0.1",
        "clients": args.clients,
        "requests_per_client": args.per_client,
        "requests_ok": int(lat.size),
        "errors": len(errors),
        "error_examples": errors[:5],
        "p50_s": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
        "p95_s": round(float(np.percentile(lat, 95)), 3) if lat.size else None,
        "mean_s": round(float(lat.mean()), 3) if lat.size else None,
        "max_s": round(float(lat.max()), 3) if lat.size else None,
        "throughput_per_s": round(lat.size / wall, 2) if wall else None,
        "wall_s": round(wall, 2),
        "images": image_source,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        **info,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "script": "benchmarks/bench_demo.py",
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
