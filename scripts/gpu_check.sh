#!/usr/bin/env bash
# GPU check (issue 20, item 7): on a machine with a CUDA device and this
# project set up (.venv with a CUDA build of torch), run the gpu-marked tests,
# a short training on the smoke corpus and a benchmark of fp32 against bf16.
# Usage: bash scripts/gpu_check.sh [conll_dir]   (default ../shared/data/conll2003)
set -euo pipefail
cd "$(dirname "$0")/.."
CONLL=${1:-../shared/data/conll2003}
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
$PY -m pytest -q -p no:cacheprovider -m gpu tests/pipeline/test_gpu.py
$PY scripts/prepare_conll.py "$CONLL" "$OUT/corpus" --max-sentences 600
$PY -m spacy_earlyexit train configs/ner.cfg --output "$OUT/ner" --paths.train "$OUT/corpus/train.spacy" \
  --paths.dev "$OUT/corpus/dev.spacy" --gpu-id 0 --training.max_epochs 1
for precision in fp32 bf16; do
  $PY -m spacy_earlyexit benchmark "$OUT/ner/model-last" "$OUT/corpus/dev.spacy" --gpu-id 0 --no-hf \
    --sentence-thresholds '' --no-fixed-depths --precision "$precision" --output "$OUT/benchmark-$precision.json"
done
