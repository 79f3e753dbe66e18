#!/usr/bin/env bash
# Set up (idempotent, seconds when ready) and run the whole test suite on CPU.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Tests talk to loopback only: no telemetry, no update check.
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
exec .venv/bin/python -m pytest "$@"
