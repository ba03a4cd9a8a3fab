#!/usr/bin/env bash
# Lint and type-check: ruff over the sources, tests and scripts; mypy --strict over taskq.
set -euo pipefail
source "$(dirname "$0")/_python.sh"

"$py" -m ruff check taskq tests scripts
"$py" -m mypy --strict taskq
