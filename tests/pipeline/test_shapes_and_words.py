"""Training for both shapes (documents and single sentences), the word
representation (first and last piece, lexical features) and a run length
that plain `spacy train` follows."""

import random
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.tokens import Doc, Span
from spacy.training import Example
from thinc.api import Config

from spacy_earlyexit.pipeline.architectures import epoch_eval_frequency, epochs_as_steps, sentence_windows
from spacy_earlyexit.pipeline.schedules import steps_per_epoch
from spacy_earlyexit.pipeline.wordpieces import LexicalFeatures
from spacy_earlyexit.tools.train import plan_training

from ..conftest import model_config, ner_corpus, ner_examples, train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = sorted(p for p in CONFIGS.glob("*.cfg"))


def _document(nlp) -> Example:
    words = "Angela Merkel met Obama . They spoke in Paris . Then they left ."
    doc = Doc(nlp.vocab, words=words.split())
    for i, token in enumerate(doc):
        token.is_sent_start = i in (0, 5, 10)
    reference = doc.copy()
    reference.ents = [Span(reference, 0, 2, "PER"), Span(reference, 3, 4, "PER"), Span(reference, 8, 9, "LOC")]
    return Example(nlp.make_doc(reference.text), reference)


def test_sentence_windows_cut_documents_at_sentences_and_keep_annotations():
    nlp = spacy.blank("en")
    example = _document(nlp)
    random.seed(0)
    split = list(sentence_windows(probability=1.0, max_sentences=1)(nlp, example))
    assert [eg.reference.text.strip() for eg in split] == [s.text for s in example.reference.sents]
    assert [(e.text, e.label_) for eg in split for e in eg.reference.ents] == [
        (e.text, e.label_) for e in example.reference.ents
    ]
    assert all(eg.predicted.text == eg.reference.text for eg in split)
    assert list(sentence_windows(probability=0.0)(nlp, example)) == [example]
    # windows of up to 2 sentences cover every token once, in order
    random.seed(1)
    windows = list(sentence_windows(probability=1.0, max_sentences=2)(nlp, example))
    assert [t.text for eg in windows for t in eg.reference] == [t.text for t in example.reference]
    assert all(len(list(eg.reference.sents)) <= 2 for eg in windows)


def test_sentence_windows_mix_documents_and_sentences_and_leave_unsplit_docs_whole():
    nlp = spacy.blank("en")
    example = _document(nlp)
    random.seed(0)
    augment = sentence_windows(probability=0.5, max_sentences=1)
    counts = [len(list(augment(nlp, example))) for _ in range(400)]
    assert set(counts) == {1, 3} and 120 < counts.count(3) < 280
    # no sentence boundaries in the corpus: the document is kept whole
    plain = Example.from_dict(nlp.make_doc("Angela Merkel met Obama . They spoke ."), {})
    assert list(sentence_windows(probability=1.0)(nlp, plain)) == [plain]
    for bad in ({"probability": 1.5}, {"probability": -0.1}, {"max_sentences": 0}, {"max_sentences": 1.5}):
        with pytest.raises(ValueError):
            sentence_windows(**bad)


def test_lexical_rows_are_stable_distinct_blocks_and_validated():
    nlp = spacy.blank("en")
    features = LexicalFeatures(("PREFIX", "SUFFIX", "SHAPE"), (20, 50, 10))
    rows = features.token_rows(nlp("Paris Berlin paris"))
    assert rows.shape == (3, 6) and features.table_rows == 1 + 2 * 80
    bounds = [(1, 21), (21, 41), (41, 91), (91, 141), (141, 151), (151, 161)]
    for column, (low, high) in enumerate(bounds):
        assert ((rows[:, column] >= low) & (rows[:, column] < high)).all()
    assert (rows[0, 4:] == rows[1, 4:]).all() and not (rows[0, 4:] == rows[2, 4:]).all()  # shape Xxxxx vs xxxxx
    assert (features.token_rows(spacy.blank("en")("Paris")) == rows[:1]).all()  # a new vocab: same rows
    assert features.token_rows(spacy.blank("en")("")).shape == (0, 6)  # an empty doc
    for attrs, sizes in ((("PREFIX",), (0,)), (("NOPE",), (10,)), (("PREFIX", "SUFFIX"), (10,))):
        with pytest.raises(ValueError):
            LexicalFeatures(attrs, sizes)


WORDS = {"word_pooling": "first_last", "lexical_attrs": ["PREFIX", "SUFFIX", "SHAPE"], "lexical_rows": [20, 50, 10]}


@pytest.fixture(scope="module")
def worded_ner(tiny_model_dir):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    policy = {"@misc": "spacy-earlyexit.token_window_exit.v1", "threshold": 0.1, "window": 1}
    nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir, **WORDS), "exit_policy": policy})
    return train(nlp, ner_examples(nlp))


TEXTS = ["Angela Merkel visited Paris on Tuesday .", "John sat on the mat in Berlin .", "Unbelievably , Xylophones ."]


def test_word_features_train_save_load_and_stay_batch_invariant(worded_ner, tmp_path):
    encoder = worded_ner.get_pipe("earlyexit_ner").encoder
    assert encoder.word_pooling == "first_last" and encoder.lexical_embedding.num_embeddings == 161
    assert float(encoder.lexical_embedding.weight[1:].detach().abs().sum()) > 0  # it learned
    assert float(encoder.lexical_embedding.weight[0].detach().abs().sum()) == 0
    docs = list(worded_ner.pipe(TEXTS, batch_size=8))
    one_by_one = [worded_ner(text) for text in TEXTS]
    exits = [[t._.exit_layer for t in doc] for doc in docs]
    assert exits == [[t._.exit_layer for t in doc] for doc in one_by_one]
    assert [[(e.start, e.end, e.label_) for e in d.ents] for d in docs] == [
        [(e.start, e.end, e.label_) for e in d.ents] for d in one_by_one
    ]
    worded_ner.to_disk(tmp_path / "nlp")
    loaded = spacy.load(tmp_path / "nlp")
    again = list(loaded.pipe(TEXTS))
    assert [[(e.start, e.end, e.label_) for e in d.ents] for d in again] == [
        [(e.start, e.end, e.label_) for e in d.ents] for d in docs
    ]
    assert [[t._.exit_layer for t in d] for d in again] == exits
    reloaded = loaded.get_pipe("earlyexit_ner").encoder
    assert reloaded.word_pooling == "first_last"
    assert numpy.allclose(reloaded.lexical_embedding.weight.detach(), encoder.lexical_embedding.weight.detach())


def test_initializing_from_a_pipeline_with_other_word_features_is_a_clear_error(worded_ner, tiny_model_dir, tmp_path):
    worded_ner.to_disk(tmp_path / "source")
    nlp = spacy.blank("en")
    plain = {"word_pooling": "first", "lexical_attrs": [], "lexical_rows": []}
    ner = nlp.add_pipe("earlyexit_ner", config=model_config(tiny_model_dir, **plain))
    with pytest.raises(ValueError, match="word_pooling"):
        ner._initialize_from(str(tmp_path / "source"))


def test_shipped_configs_plan_their_run_in_epochs_of_the_corpus(tmp_path):
    nlp = spacy.blank("en")
    train_path = ner_corpus(nlp, tmp_path / "train.spacy", copies=30)
    assert SHIPPED, "no shipped configs found"
    for path in SHIPPED:
        config = Config().from_disk(path, overrides={"paths.train": train_path, "paths.dev": train_path})
        training = config["training"]
        assert training["max_epochs"] == 0, path.name
        resolved = spacy.util.registry.resolve({"f": training["eval_frequency"], "s": training["max_steps"]})
        batcher = training["batcher"]
        per_epoch = steps_per_epoch(train_path, batcher["size"], batcher["buffer"], batcher["discard_oversize"])
        epochs, floor = training["max_steps"]["epochs"], training["max_steps"].get("min_steps", 0)
        assert resolved["f"] == per_epoch, path.name
        # the epochs asked for, or at least the floor of steps (stage-1 configs), ending on an evaluation
        expected = max(epochs * per_epoch, -(-floor // per_epoch) * per_epoch)
        assert resolved["s"] == expected and resolved["s"] % resolved["f"] == 0, path.name
        # the learning-rate schedule ends where the run ends
        assert config["training"]["optimizer"]["learn_rate"]["max_steps"] == training["max_steps"]
        # training reads both shapes; the model reads first and last pieces and lexical features
        assert config["corpora"]["train"]["augmenter"]["@augmenters"] == "spacy-earlyexit.sentence_windows.v1"
        model = next(c["model"] for c in config["components"].values())
        assert model["word_pooling"] == "first_last" and model["lexical_attrs"], path.name


def test_run_length_functions_evaluate_each_epoch_and_at_the_last_step(tmp_path):
    nlp = spacy.blank("en")
    train_path = ner_corpus(nlp, tmp_path / "train.spacy", copies=30)
    per_epoch = steps_per_epoch(train_path, 40)
    assert per_epoch > 3
    frequency = epoch_eval_frequency(train_path, batch_size=40, evals_per_epoch=3)
    assert frequency == -(-per_epoch // 3)
    steps = epochs_as_steps(4, frequency, evals_per_epoch=3)
    assert steps % frequency == 0 and steps >= 4 * per_epoch
    # a small corpus runs at least min_steps, still ending on an evaluated step; a large one is unchanged
    assert epochs_as_steps(4, 10, min_steps=95) == 100
    assert epochs_as_steps(4, 10, min_steps=30) == 40
    for bad in (
        {"epochs": 0, "eval_frequency": 3},
        {"epochs": 2, "eval_frequency": 0},
        {"epochs": 2, "eval_frequency": 3, "min_steps": -1},
    ):
        with pytest.raises(ValueError):
            epochs_as_steps(**bad)
    with pytest.raises(ValueError, match="train_path"):
        epoch_eval_frequency(None)
    # `python -m spacy_earlyexit train --training.max_epochs N` on a shipped config: N epochs, planned by it
    config = Config().from_disk(CONFIGS / "ner.cfg", overrides={"paths.train": train_path, "paths.dev": train_path})
    assert plan_training(config) == ({}, None)
    # so are epochs given as the config's own run length on the command line
    asked = {"training.max_steps.epochs": 2}
    assert plan_training(config, user_overrides=asked) == ({"training.max_steps.min_steps": 0}, None)
    floor_too = {**asked, "training.max_steps.min_steps": 500}
    assert plan_training(config, user_overrides=floor_too) == ({}, None)
    config["training"]["max_epochs"] = 2
    # the epochs the user asked for are what runs: the config's floor of steps is lifted
    assert plan_training(config) == (
        {"training.max_epochs": 0, "training.max_steps.epochs": 2, "training.max_steps.min_steps": 0},
        None,
    )


def test_own_train_command_passes_the_config_s_own_run_length_and_logs_every_evaluation(tmp_path):
    from spacy_earlyexit.tools import train as train_tool

    nlp = spacy.blank("en")
    train_path = ner_corpus(nlp, tmp_path / "train.spacy", copies=30)
    per_epoch = steps_per_epoch(train_path, 1000)
    overrides = {"paths.train": train_path, "paths.dev": train_path, "training.max_steps.epochs": 3}
    config = spacy.util.load_config(CONFIGS / "ner.cfg", overrides=overrides, interpolate=True)
    assert train_tool.counts_itself(config)
    plan = train_tool.resolved_run_length(CONFIGS / "ner.cfg", overrides)
    # the numbers plain `spacy train` computes, as integers (spaCy's progress bar counts them): on
    # this tiny corpus, the shipped floor of steps (min_steps), as a whole number of epochs
    floor = -(-1000 // per_epoch) * per_epoch
    assert plan == {"training.max_epochs": 0, "training.eval_frequency": per_epoch, "training.max_steps": floor}
    plan = train_tool.resolved_run_length(CONFIGS / "ner.cfg", {**overrides, "training.max_steps.min_steps": 0})
    assert plan["training.max_steps"] == 3 * per_epoch
    logged = train_tool._logger_overrides(config, {}, tmp_path / "out")
    assert logged["training.logger.progress_bar"] == "eval"
    assert logged["training.logger.output_file"] == str(tmp_path / "out" / train_tool.TRAINING_LOG_FILE)
    assert train_tool._logger_overrides(config, {"training.logger.progress_bar": "train"}, None) == {}
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 0, "step": 0, "score": 0.1, "losses": {}}\n{"epoch": 1, "step": 9, "score": 0.8}\n')
    assert train_tool.read_evaluations(str(log)) == [
        {"epoch": 0, "step": 0, "score": 0.1},
        {"epoch": 1, "step": 9, "score": 0.8},
    ]
    assert train_tool.read_evaluations(None) is None
