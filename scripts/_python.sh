# Sourced by the scripts here: cd to the repo root and pick the interpreter, the
# project's .venv unless another venv is active.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then
    py=.venv/bin/python
else
    py=python3
fi
