#!/usr/bin/env bash
# The README's test command (`make test`) ends here: run pytest in the venv, print its summary
# and map its exit codes (0 ok, 1 failures, 2 interrupted, 3 internal error, 4 usage, 5 no tests).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# Keep heavy libraries from oversubscribing the 2-core CI machines.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python -m pytest -ra "$@"
code=$?
case $code in
  0) echo "make test: all tests passed" ;;
  1) echo "make test: some tests FAILED (see the summary above)" ;;
  5) echo "make test: no tests were collected"; ;;
  *) echo "make test: pytest stopped with exit code $code (interrupted, internal or usage error)" ;;
esac
exit $code
