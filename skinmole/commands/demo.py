"""``skinmole demo [--model SOURCE] [--host HOST] [--port PORT]``: start the web demo.

Serves the bundled model (or ``--model``, else ``SKINMOLE_MODEL``: a folder or a Hub repo id) on
http://127.0.0.1:7860 (``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` are honoured; ``--host`` and
``--port`` set them). The app itself is ``skinmole.demo_app``; its endpoint ``predict`` returns
``Prediction.to_dict()``. Needs the ``[demo]`` extra. Exit 2 for a model it cannot load.
"""

from __future__ import annotations

import argparse
import os
import sys

APP_MODULE = "skinmole.demo_app"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {port}")
    return port


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Start the skinmole web demo.")
    p.add_argument("--model", metavar="SOURCE", default=None,
                   help="model folder or Hub repo id ORG/NAME (default: SKINMOLE_MODEL, else the bundled model)")
    p.add_argument("--host", default=None, help="address to listen on (default: GRADIO_SERVER_NAME, else 127.0.0.1)")
    p.add_argument("--port", type=_port, default=None, help="port (default: GRADIO_SERVER_PORT, else 7860)")
    return p


def main(argv=None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    import importlib

    from ..extras import require

    try:
        require("demo", "the web demo")
    except ImportError as exc:
        print(f"skinmole demo: {exc}", file=sys.stderr)
        return 1
    if args.host is not None:
        os.environ["GRADIO_SERVER_NAME"] = args.host
    if args.port is not None:
        os.environ["GRADIO_SERVER_PORT"] = str(args.port)
    try:
        app = importlib.import_module(APP_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != APP_MODULE:
            raise
        print(f"skinmole demo: the demo app ({APP_MODULE}) is not part of this installation", file=sys.stderr)
        return 1
    return app.main(["--model", args.model] if args.model else [])
