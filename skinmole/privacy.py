"""Telemetry off in every dependency, before any of them is imported.

skinmole promises to keep and send nothing about a user's images, so it cannot leave this to each
user's environment: ``import skinmole`` (and so the CLI and the demo) imports this module first.
It is a leaf: it imports nothing but ``os``, so nothing can be imported ahead of it. ``setdefault``
leaves a value the user set on purpose alone.
"""

from __future__ import annotations

import os

TELEMETRY_OFF = {
    # onnxruntime >= 1.29 (Linux, macOS) otherwise writes a device id and queued events (executable
    # path, model loads, errors) under ~/.cache/Microsoft; read when its environment is created.
    "ORT_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub: usage pings on downloads and uploads
    "GRADIO_ANALYTICS_ENABLED": "False",  # gradio: anything but "True" turns its analytics off
    "RAY_USAGE_STATS_ENABLED": "0",  # ray (skinmole score): usage stats reported by a cluster's head
    "DO_NOT_TRACK": "1",  # the shared convention (https://donottrack.sh), for the rest
}

for _name, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_name, _value)
