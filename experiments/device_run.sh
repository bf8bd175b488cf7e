#!/usr/bin/env bash
# On a lent GPU machine (the device tool's `run`, carry ["device"]): install the packed Keras wheels
# offline, then train the runs of experiments/device_run.py with Keras on torch; the whole log goes
# to $OUT/device_run.log and each run's zip to $OUT. Arguments go to `device_run.py run`.
#   bash experiments/device_run.sh --budget-s 480
# PYTHON picks the interpreter (default python3, the device image's, which has torch).
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
: "${OUT:?set OUT (the device tool sets it)}"
PY="${PYTHON:-python3}"
SITE="${SKINMOLE_DEVICE_SITE:-/tmp/skinmole-site}"
PACK="${SKINMOLE_DEVICE_PACK:-$REPO/device}"  # another pack folder (a test of this script elsewhere)
mkdir -p "$OUT"
{
  echo "device_run.sh: $(date -u +%FT%TZ) on $(hostname); $($PY --version 2>&1) at $(command -v "$PY")"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  if ! ls "$PACK"/wheels/*.whl >/dev/null 2>&1; then
    echo "DEVICE CHECK FAILED: no wheels in $PACK/wheels: carry [\"device\"] written by experiments/device_pack.py"; exit 3
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$PACK"/wheels/*.whl || { echo "DEVICE CHECK FAILED: pip could not install device/wheels"; exit 3; }
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=torch PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 MPLBACKEND=Agg
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    || { echo "DEVICE CHECK FAILED: no torch in $PY"; exit 3; }
  "$PY" "$REPO/experiments/device_run.py" run --pack "$PACK" "$@"
} 2>&1 | tee "$OUT/device_run.log"
exit "${PIPESTATUS[0]}"
