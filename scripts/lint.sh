#!/usr/bin/env bash
# Lint and type-check: ruff over the sources, tests and scripts; mypy --strict over taskq.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then
    py=.venv/bin/python
else
    py=python3
fi

"$py" -m ruff check taskq tests scripts
"$py" -m mypy --strict taskq
