#!/usr/bin/env bash
# Set up (idempotent, seconds when ready), check the code with ruff, and run the whole test suite on CPU.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m unit` (the fast tests) or `-m e2e`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Tests talk to loopback only: no telemetry, no update check.
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
