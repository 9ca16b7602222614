#!/usr/bin/env bash
# After `spacy project run smoke`: check that its outputs exist and load — the
# plots, the calibrated operating points, and the packaged pipeline installed
# into a fresh virtual environment and loaded offline, outside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
for f in metrics/smoke-tradeoff.png metrics/smoke-exit-layers.png metrics/smoke-operating-points.json metrics/smoke-stage-choice.json \
         training/smoke/training-time.json training/smoke-selfsample/training-time.json \
         metrics/smoke-width-fronts.png metrics/smoke-width-operating-points.json metrics/smoke-width-benchmark.json; do
  [ -s "$f" ] || { echo "missing smoke output: $f" >&2; exit 1; }
done
.venv/bin/python - <<'PY'
import json
import spacy

# the run is counted in epochs of the corpus: dev evaluated every epoch and at the last step
for stage, epochs in (("training/smoke", 4), ("training/smoke-selfsample", 1)):
    record = json.load(open(f"{stage}/training-time.json"))
    steps = [e["step"] for e in record["evaluations"]]
    assert steps[-1] == record["max_steps"] and len(steps) == epochs + 1, (stage, steps, record["max_steps"])
print("dev evaluated at steps", steps, "of", record["max_steps"])

# the stage kept on dev at the calibrated points, recorded in the metrics and in the pipeline
choice = json.load(open("metrics/smoke-stage-choice.json"))
assert choice["kept"] in ("stage1", "stage2") and "full" in choice["compared"], choice
kept = json.load(open("training/smoke-calibrated/meta.json"))["earlyexit"]["stage_choice"]
assert kept["kept"] == choice["kept"], (kept["kept"], choice["kept"])
print("stage kept:", choice["kept"], "mean dev change of stage 2:", round(100 * choice["mean_change"], 2))

result = json.load(open("metrics/smoke-operating-points.json"))
assert result["points"] and result["stage1_points"], "no operating points evaluated"
nlp = spacy.load("training/smoke-calibrated")
ner = nlp.get_pipe("earlyexit_ner")
reached = [p["name"] for p in nlp.meta["earlyexit"]["points"] if p["reached"]]
assert set(ner.operating_points) == set(reached), (ner.operating_points, reached)
for name in ["full", *reached]:
    ner.use(name)
    nlp("Angela Merkel visited Paris on Tuesday.")
print("calibrated points load and switch:", ["full", *reached], "default:", nlp.meta["earlyexit"]["default"])

# adaptive width: a rewired pipeline whose points were searched over (width, exit)
nlp = spacy.load("training/smoke-width-calibrated")
ner = nlp.get_pipe("earlyexit_ner")
meta = nlp.meta["earlyexit"]
assert ner.model.shims[0].encoder.width_rewired, "the width stages did not rewire the encoder"
assert len(meta["widths"]) == 4, meta["widths"]
names = {p["name"] for p in meta["points"]}
assert {"2x", "2x-exit", "2x-width"} <= names, names
widths = {}
for name in ner.operating_points:
    ner.use(name)
    widths[name] = ner.width
    nlp("Angela Merkel visited Paris on Tuesday.")
assert all(w == 1.0 for n, w in widths.items() if n.endswith("-exit")), widths
assert any(w < 1.0 for n, w in widths.items() if n.endswith("-width")), widths
sweep = json.load(open("metrics/smoke-width-benchmark.json"))
assert {p["width"] for p in sweep["points"]} == {0.25, 0.5, 0.75, 1.0}
print("width points load and switch:", widths)
PY
wheel=$(ls packages/en_earlyexit_smoke-*/dist/*.whl | head -n 1)
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "torch==2.13.0"
"$venv/bin/python" -m pip install -q .
"$venv/bin/python" -m pip install -q --no-index --no-deps "$wheel"
"$venv/bin/python" -m pip check
(cd "$(dirname "$venv")" && HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$venv/bin/python" - <<'PY'
import spacy

nlp = spacy.load("en_earlyexit_smoke")
ner = nlp.get_pipe("earlyexit_ner")
doc = nlp("Angela Merkel visited Paris on Tuesday.")
print("packaged pipeline loads offline; operating points:", sorted(ner.operating_points),
      "default:", ner.operating_point, "speed-up:", round(doc._.earlyexit_speedup, 2))
assert ner.operating_points, "the package lost its operating points"
PY
)
rm -rf "$(dirname "$venv")"
echo "smoke outputs OK"
