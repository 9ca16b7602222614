#!/usr/bin/env bash
# Which training shapes and word representation to ship, chosen on dev:
# stage 1 on the small corpus (`spacy project run small-corpus`: the first
# 2,800 training sentences) for EPOCHS epochs per setting, then full-depth dev
# scores on documents and on sentences (scripts/evaluate_shapes.py).
#   NER:    documents only, first piece | + sentences (p 0.5) | + first/last piece and lexical features
#   tagger: first piece | first/last piece | first/last piece and lexical features (all with sentences)
# Usage: bash benchmarks/ablate_shapes_and_words.sh [EPOCHS] [JOBS]   (default 4 epochs, 2 at a time)
# Writes benchmarks/results/ablation-shapes-words.json.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-4}
JOBS=${2:-2}
PY=${PYTHON:-.venv/bin/python}
OUT=training/ablation
mkdir -p "$OUT"
[ -f corpus/small/train.spacy ] || { echo "run: spacy project run small-corpus . --vars.conll_dir DIR" >&2; exit 1; }
plain='--components.X.model.word_pooling first --components.X.model.lexical_attrs [] --components.X.model.lexical_rows []'
run() {  # name config component extra...
  local name=$1 config=$2 component=$3; shift 3
  local extra=${*//X/$component}
  OMP_NUM_THREADS=$((2 / JOBS > 0 ? 2 / JOBS : 1)) $PY -m spacy_earlyexit train "$config" --output "$OUT/$name" \
    --paths.train corpus/small/train.spacy --paths.dev corpus/dev.spacy --training.max_steps.epochs "$EPOCHS" \
    $extra > "$OUT/$name.log" 2>&1
  $PY scripts/evaluate_shapes.py "$OUT/$name/model-best" corpus/dev.spacy --output "$OUT/$name.json" > /dev/null
  echo "$name done"
}
export -f run
export PY OUT EPOCHS JOBS
{
  echo "ner-documents-first configs/ner.cfg earlyexit_ner --corpora.train.augmenter.probability 0 $plain"
  echo "ner-sentences-first configs/ner.cfg earlyexit_ner $plain"
  echo "ner-sentences-words configs/ner.cfg earlyexit_ner"
  echo "tagger-sentences-first configs/tagger.cfg earlyexit_tagger $plain"
  echo "tagger-sentences-firstlast configs/tagger.cfg earlyexit_tagger --components.X.model.lexical_attrs [] --components.X.model.lexical_rows []"
  echo "tagger-sentences-words configs/tagger.cfg earlyexit_tagger"
} | xargs -P "$JOBS" -L 1 bash -c 'run "$@"' _
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for path in sorted(out.glob("*.json")):
    result = json.loads(path.read_text())
    timing = json.loads((out / path.stem / "training-time.json").read_text())
    rows[path.stem] = {
        "dev_documents": result["documents"]["score"],
        "dev_sentences": result["sentences"]["score"],
        "dev_per_evaluation": [e["score"] for e in timing["evaluations"]],
        "train_minutes": round(timing["seconds"] / 60, 1),
    }
    print(f"{path.stem:28s} documents {100 * rows[path.stem]['dev_documents']:.2f}  sentences {100 * rows[path.stem]['dev_sentences']:.2f}")
Path("benchmarks/results/ablation-shapes-words.json").write_text(json.dumps(rows, indent=2))
PY
