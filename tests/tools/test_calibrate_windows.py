"""Calibration's step 0: the reading window chosen on dev, kept by its rule
and written into the calibrated pipeline."""

import pytest
import spacy

from spacy_earlyexit.pipeline.model import _plan
from spacy_earlyexit.tools.calibrate import (
    SPEED_FLOOR,
    Window,
    choose_window,
    parse_windows,
    run_calibration,
    timed_windows,
)
from spacy_earlyexit.tools.calibrate.windows import reading_window

from ..conftest import ner_corpus, ner_examples


def test_windows_parse_with_and_without_a_context():
    assert parse_windows("128:8, 96") == [Window(128, 8), Window(96, None)]
    assert parse_windows("") == []
    for bad in ("128:x", "2:0", "64:-1", "a"):
        with pytest.raises(ValueError, match="window"):
            parse_windows(bad)


def _fakes(scores, ratios):
    """A real run that scores the window the component reads with, and a
    timer that gives each window its ratio."""

    def real(nlp, name, examples, point):
        return scores[str(reading_window(nlp.get_pipe(name)))], 1.0

    def timer(nlp, name, examples, windows):
        return [ratios[str(w)] for w in windows]

    return real, timer


@pytest.mark.parametrize(
    "scores, ratios, kept",
    [
        # reads better and runs faster: kept
        ({"64:4": 0.80, "32:2": 0.82, "16:2": 0.81}, {"64:4": 1.0, "32:2": 1.1, "16:2": 1.2}, "32:2"),
        # reads better but runs slower: not kept; the other reads as well and is faster
        ({"64:4": 0.80, "32:2": 0.85, "16:2": 0.80}, {"64:4": 1.0, "32:2": 0.9, "16:2": 1.2}, "16:2"),
        # faster but reads worse, or better but slower: the trained window stays
        ({"64:4": 0.80, "32:2": 0.79, "16:2": 0.85}, {"64:4": 1.0, "32:2": 1.5, "16:2": SPEED_FLOOR - 0.01}, "64:4"),
    ],
)
def test_the_window_kept_reads_dev_best_among_those_no_worse_and_no_slower(trained_ner, scores, ratios, kept):
    component = trained_ner.get_pipe("earlyexit_ner")
    trained = reading_window(component)
    real, timer = _fakes(scores, ratios)
    candidates = [Window(32, 2), Window(16, 2), Window(32, 2)]  # a repeated candidate is tried once
    try:
        component.model.attrs["max_wordpieces"], component.model.attrs["cut_context"] = 64, 4
        result = choose_window(
            trained_ner, "earlyexit_ner", ner_examples(trained_ner), candidates, lambda line: None, real, timer
        )
        assert str(reading_window(component)) == kept
        assert [f"{r['max_wordpieces']}:{r['cut_context']}" for r in result["tried"]] == ["64:4", "32:2", "16:2"]
        assert result["trained"] == {"max_wordpieces": 64, "cut_context": 4}
        assert f"{result['kept']['max_wordpieces']}:{result['kept']['cut_context']}" == kept
    finally:
        component.model.attrs["max_wordpieces"], component.model.attrs["cut_context"] = trained.pieces, trained.context


def test_windows_are_timed_against_the_trained_one_and_change_how_docs_are_cut(trained_ner):
    component = trained_ner.get_pipe("earlyexit_ner")
    examples = ner_examples(trained_ner)
    trained = reading_window(component)
    ratios = timed_windows(trained_ner, "earlyexit_ner", examples, [trained, Window(6, 1)], rounds=1)
    assert ratios[0] == 1.0 and ratios[1] > 0
    assert reading_window(component) == trained  # timing restores the window
    docs = [eg.predicted for eg in examples]
    whole = len(_plan(component.model, docs)[2].sequences)
    component.model.attrs["max_wordpieces"], component.model.attrs["cut_context"] = 6, 1
    try:
        assert len(_plan(component.model, docs)[2].sequences) > whole
    finally:
        component.model.attrs["max_wordpieces"], component.model.attrs["cut_context"] = trained.pieces, trained.context


def test_calibration_writes_the_kept_window_into_the_pipeline(trained_ner, tmp_path):
    source = tmp_path / "trained"
    trained_ner.to_disk(source)
    dev = ner_corpus(trained_ner, tmp_path / "dev.spacy")
    trained = reading_window(trained_ner.get_pipe("earlyexit_ner"))

    def timer(nlp, name, examples, windows):  # the candidate is always faster
        return [1.0] + [1.5] * (len(windows) - 1)

    result = run_calibration(
        str(source),
        dev,
        tmp_path / "calibrated",
        targets=(2.0,),
        max_drop=0.5,
        progress=lambda line: None,
        windows=[Window(trained.pieces, trained.context + 1)],  # reads these short docs alike
        window_timer=timer,
    )
    assert result["window"]["trained"] == trained.to_dict()
    assert result["window"]["kept"] == Window(trained.pieces, trained.context + 1).to_dict()
    nlp = spacy.load(tmp_path / "calibrated")
    attrs = nlp.get_pipe("earlyexit_ner").model.attrs
    kept = result["window"]["kept"]
    assert (attrs["max_wordpieces"], attrs["cut_context"]) == (kept["max_wordpieces"], kept["cut_context"])
    assert nlp.meta["earlyexit"]["window"]["kept"] == kept
    assert nlp("Angela Merkel visited Paris on Tuesday .")._.earlyexit_speedup >= 1.0
    plain = run_calibration(
        str(source), dev, tmp_path / "plain", targets=(2.0,), max_drop=0.5, progress=lambda line: None
    )
    assert plain["window"] is None
    attrs = spacy.load(tmp_path / "plain").get_pipe("earlyexit_ner").model.attrs
    assert (attrs["max_wordpieces"], attrs["cut_context"]) == (trained.pieces, trained.context)
