#!/usr/bin/env bash
# Create .venv (if absent) and install taskq editable with the dev extras (test + lint).
set -euo pipefail
cd "$(dirname "$0")/.."

[ -d .venv ] || python3 -m venv .venv
.venv/bin/python -m pip install -e '.[dev]'

echo
echo "installed; activate with:  source .venv/bin/activate"
