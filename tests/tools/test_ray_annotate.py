"""Annotation as a Ray Data pipeline, on a small local Ray cluster started here.

Ray is an optional extra; CI installs it. Without it these tests fail with
the install command rather than skip."""

import os
import signal
from pathlib import Path

import pytest

from spacy_earlyexit.tools.annotate import BadRecordError, annotate_corpus
from spacy_earlyexit.tools.ray_annotate import (
    RAY_MISSING,
    RayAnnotator,
    annotate_with_ray,
    line_ranges,
    require_ray,
)

from .conftest import write_corpus, write_mixed

REPO = Path(__file__).resolve().parents[2]

try:
    import ray
except ImportError:  # pragma: no cover - CI installs the extra
    ray = None


@pytest.fixture(scope="module")
def local_ray():
    if ray is None:
        pytest.fail(RAY_MISSING + " CI installs it; these tests must run.", pytrace=False)
    # workers import this checkout's package and these tests (the crashing annotator)
    python_path = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
        runtime_env={"env_vars": {"PYTHONPATH": python_path}},
        log_to_driver=False,
        configure_logging=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus_and_reference(saved_pipeline, tmp_path_factory):
    corpus = write_corpus(tmp_path_factory.mktemp("ray_corpus"))
    reference = tmp_path_factory.mktemp("ray_reference") / "single.jsonl"
    annotate_corpus(str(saved_pipeline), corpus, reference)
    return corpus, reference


class CrashOnceAnnotator(RayAnnotator):
    """Kills its own process (SIGKILL) at its first batch, once per marker file."""

    def __init__(self, pipeline, *, marker: str, **kwargs):
        super().__init__(pipeline, **kwargs)
        self.marker = Path(marker)

    def __call__(self, batch):
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


def test_ray_cuts_one_file_into_ranges_for_every_actor(local_ray, saved_pipeline, tmp_path):
    """One file is cut into ranges of lines, so that no single actor has to
    take it whole; however Ray spreads the ranges, the output is the
    single-process output, byte for byte."""
    one_file = tmp_path / "all.txt"
    one_file.write_text("\n".join(f"Angela Merkel visited Paris {i} ." for i in range(40)) + "\n")
    files = [{"path": str(one_file), "name": "all.txt"}]
    ranges = line_ranges(files, num_actors=2, lines_per_task=4)
    assert [(r["start"], r["stop"]) for r in ranges] == [(start, start + 4) for start in range(1, 41, 4)]
    assert len(line_ranges(files, num_actors=2)) >= 2  # the automatic size cuts it too
    reference = tmp_path / "single.jsonl"
    annotate_corpus(str(saved_pipeline), one_file, reference)
    output = tmp_path / "out.jsonl"
    annotate_with_ray(
        str(saved_pipeline), one_file, output, num_actors=2, batch_size=2, num_cpus_per_actor=1, lines_per_task=4
    )
    assert output.read_bytes() == reference.read_bytes()
    assert len(output.read_text().splitlines()) == 40


def test_ray_output_is_the_single_process_output(local_ray, saved_pipeline, corpus_and_reference, tmp_path):
    corpus, reference = corpus_and_reference
    output = tmp_path / "ray.jsonl"
    lines = []
    # two one-CPU actors fill the two-CPU cluster: reading must not wait for a CPU (it once hung)
    summary = annotate_with_ray(
        str(saved_pipeline), corpus, output, num_actors=2, batch_size=2, num_cpus_per_actor=1, progress=lines.append
    )
    assert summary.docs_total == 10 and summary.words_this_run > 0
    assert output.read_bytes() == reference.read_bytes()
    assert lines and "words/s" in lines[-1]
    assert not output.with_name("ray.jsonl.partial").exists()


def test_a_killed_ray_worker_loses_nothing(local_ray, saved_pipeline, corpus_and_reference, tmp_path):
    corpus, reference = corpus_and_reference
    marker = tmp_path / "killed-once"
    output = tmp_path / "ray.jsonl"
    annotate_with_ray(
        str(saved_pipeline),
        corpus,
        output,
        num_actors=2,
        batch_size=2,
        num_cpus_per_actor=0.5,
        annotator=CrashOnceAnnotator,
        annotator_kwargs={"marker": str(marker)},
    )
    assert marker.exists()  # a worker did die mid-run
    assert output.read_bytes() == reference.read_bytes()


def test_ray_is_optional_and_says_how_to_get_it(monkeypatch):
    import sys

    assert require_ray() is not None
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install \"spacy-earlyexit\[ray\]\""):
        require_ray()


def test_ray_treats_bad_records_and_long_documents_as_a_single_process_does(local_ray, saved_pipeline, tmp_path):
    corpus = write_mixed(tmp_path / "corpus")
    # over spaCy's default max_length of 1,000,000 characters (long words keep it fast)
    (corpus / "long.txt").write_text("John sat .\n" + ("Paris " + "x" * 4000 + " ") * 260 + "\n", encoding="utf8")
    reference = tmp_path / "single.jsonl"
    annotate_corpus(str(saved_pipeline), corpus, reference, on_error="skip")
    output = tmp_path / "ray.jsonl"
    summary = annotate_with_ray(
        str(saved_pipeline),
        corpus,
        output,
        num_actors=2,
        batch_size=2,
        num_cpus_per_actor=1,
        on_error="skip",
        lines_per_task=3,
    )
    assert (summary.docs_this_run, summary.rejects_this_run) == (8, 6)
    assert output.read_bytes() == reference.read_bytes()
    rejects = output.with_name("ray.jsonl.rejects.jsonl")
    assert rejects.read_bytes() == reference.with_name("single.jsonl.rejects.jsonl").read_bytes()
    # on_error="fail" names the first bad record and leaves no output behind
    failed = tmp_path / "failed.jsonl"
    with pytest.raises(BadRecordError, match=r"^a.txt:2: not valid UTF-8"):
        annotate_with_ray(str(saved_pipeline), corpus, failed, num_actors=2, batch_size=2, num_cpus_per_actor=1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("failed")) == []
