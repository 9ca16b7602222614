"""The annotation of `spacy_earlyexit.annotate` as a Ray Data pipeline.

    files -> (flat_map) documents -> (map_batches, a pool of actors) JSONL lines -> OUTPUT

Each actor loads the pipeline once and annotates batches of documents with
early exit; the driver writes the lines in input order (Ray Data's
`preserve_order`) into the same JSONL file a single-process
`annotate_corpus` run writes, byte for byte. An actor that dies (a killed
worker, a lost node) is restarted by Ray and its batch is run again, so
nothing is lost; the output appears under its name only once it is complete.

Bad records and long documents are treated as by `annotate_corpus`: a bad
line stops the run with `BadRecordError` (`on_error="fail"`) or goes to the
rejects file `OUTPUT.rejects.jsonl` (`on_error="skip"`), the same bytes a
single-process run writes; each actor raises its pipeline's `max_length` to
fit the longest document it meets.

Ray is an optional dependency: `pip install "spacy-earlyexit[ray]"`. It is
imported only when a function here is called.
"""

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Type

from .annotate import (
    ON_ERROR,
    AnnotateError,
    AnnotateSummary,
    BadRecordError,
    Rejected,
    check_output_paths,
    doc_lines,
    fit_max_length,
    input_files,
    load_pipeline,
    output_format_of,
    parse_line,
    record_line,
    reject_line,
    rejects_path_of,
    token_attrs,
    whole_output,
)

RAY_MISSING = (
    "Annotating with Ray needs Ray Data, an optional dependency of spacy-earlyexit: "
    'pip install "spacy-earlyexit[ray]" (or pip install "ray[data]").'
)


def require_ray():
    """The `ray` module with `ray.data`, or an ImportError that says how to get it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise ImportError(RAY_MISSING) from err
    return ray


def read_file_rows(row: Dict[str, Any], text_field: str) -> Iterator[Dict[str, Any]]:
    """flat_map function: the records of one range of lines of an input file,
    as rows; a bad record is a row with its `reason` (and no text)."""
    path = Path(row["path"])
    for number, line, reason in doc_lines(path):
        if number < row["start"]:
            continue
        if number >= row["stop"]:
            break
        record = parse_line(path, row["name"], number, line, text_field, reason)
        if isinstance(record, Rejected):
            yield {"id": record.id, "text": "", "meta": "{}", "reason": record.reason}
            continue
        # meta as JSON text: Arrow would otherwise unify the fields of all rows
        yield {"id": record.id, "text": record.text, "meta": json.dumps(record.meta, ensure_ascii=False), "reason": ""}


class RayAnnotator:
    """map_batches callable: the pipeline, loaded once per actor, annotates a
    batch of documents into JSONL lines (`annotate.doc_record`); a bad record
    passes through as an empty line with its reason."""

    def __init__(
        self,
        pipeline: str,
        *,
        use_gpu: bool = False,
        code_path: Optional[str] = None,
        torch_threads: int = 1,
        batch_size: int = 64,
    ) -> None:
        import torch

        torch.set_num_threads(torch_threads)
        # Ray gives a GPU actor its own device(s) through CUDA_VISIBLE_DEVICES: it is device 0
        self.nlp = load_pipeline(pipeline, 0 if use_gpu else -1, Path(code_path) if code_path else None)
        self.attrs = token_attrs(self.nlp)
        self.batch_size = batch_size

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, list]:
        from .annotate import doc_record

        ids, texts, metas = list(batch["id"]), list(batch["text"]), list(batch["meta"])
        reasons = [str(reason) for reason in batch["reason"]]
        good = [i for i, reason in enumerate(reasons) if not reason]
        fit_max_length(self.nlp, (texts[i] for i in good))
        lines, n_words = [""] * len(ids), [0] * len(ids)
        docs = self.nlp.pipe((str(texts[i]) for i in good), batch_size=self.batch_size)
        for i, doc in zip(good, docs):
            lines[i] = record_line(doc_record(doc, str(ids[i]), json.loads(metas[i]), self.attrs))
            n_words[i] = len(doc)
        return {"id": ids, "line": lines, "n_words": n_words, "reason": reasons}


def line_ranges(files: List[Dict[str, Any]], num_actors: int, lines_per_task: int = 0) -> List[Dict[str, Any]]:
    """Cut the input files into ranges of lines, so that the documents of one
    file spread over every actor (one file would otherwise be one block, read
    and annotated by a single actor). Auto size: about 8 ranges per actor."""
    counts = []
    for item in files:
        with open(item["path"], "rb") as file:
            counts.append(sum(1 for _ in file))
    size = lines_per_task or max(16, min(2000, -(-sum(counts) // max(1, 8 * num_actors))))
    return [
        {**item, "start": start, "stop": start + size}
        for item, count in zip(files, counts)
        for start in range(1, count + 1, size)
    ]


def annotate_with_ray(
    pipeline: str,
    input_path: Path,
    output_path: Path,
    *,
    text_field: str = "text",
    num_actors: int = 2,
    batch_size: int = 64,
    num_cpus_per_actor: float = 1,
    num_gpus_per_actor: float = 0,
    code_path: Optional[Path] = None,
    annotator: Type[RayAnnotator] = RayAnnotator,
    annotator_kwargs: Optional[Dict[str, Any]] = None,
    progress: Optional[Callable[[str], None]] = None,
    lines_per_task: int = 0,
    on_error: str = "fail",
) -> AnnotateSummary:
    """Annotate the documents of `input_path` (a .txt or .jsonl file or a
    directory, as in `annotate_corpus`) into the JSONL file `output_path`
    with a pool of `num_actors` Ray actors. A bad record raises
    `BadRecordError` (`on_error="fail"`, the output is not written) or is
    written to the rejects file (`"skip"`).

    Connects to the running Ray cluster (Ray Data starts a local one when
    `ray.init` was not called). Ray Data restarts an actor that dies and runs
    its batches again (its actor pools default to unlimited restarts and task
    retries). `annotator` may be a subclass of RayAnnotator;
    `annotator_kwargs` go to its constructor."""
    ray = require_ray()
    from ray.data import ActorPoolStrategy

    input_path, output_path = Path(input_path), Path(output_path)
    if output_format_of(output_path) != "jsonl":
        raise AnnotateError(f"{output_path}: annotating with Ray writes JSONL (a .jsonl output).")
    if on_error not in ON_ERROR:
        raise AnnotateError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}.")
    check_output_paths(output_path, (pipeline, input_path, code_path))
    files = [{"path": str(path.resolve()), "name": name} for path, name in input_files(input_path)]
    ranges = line_ranges(files, num_actors, lines_per_task)
    kwargs = {
        "use_gpu": num_gpus_per_actor > 0,
        "code_path": str(code_path) if code_path else None,
        "torch_threads": max(1, int(num_cpus_per_actor)),
        "batch_size": batch_size,
        **(annotator_kwargs or {}),
    }
    dataset = (
        ray.data.from_items(ranges, override_num_blocks=max(1, len(ranges)))
        # reading lines takes no CPU worth reserving: with num_cpus > 0 it could wait
        # forever for actors that hold every CPU of the cluster
        .flat_map(read_file_rows, fn_kwargs={"text_field": text_field}, num_cpus=0)
        .map_batches(
            annotator,
            fn_constructor_args=(str(pipeline),),
            fn_constructor_kwargs=kwargs,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=num_actors),
            num_cpus=num_cpus_per_actor,
            num_gpus=num_gpus_per_actor,
        )
    )
    dataset.context.execution_options.preserve_order = True
    say = progress or (lambda line: None)
    start = time.perf_counter()
    n_docs = n_words = 0
    rejects_path = rejects_path_of(output_path)
    # no half-written output stays behind (there is no resuming a Ray run)
    with whole_output(output_path) as written:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows = zip(batch["id"], batch["line"], batch["n_words"], batch["reason"])
            for doc_id, line, words, reason in rows:
                if reason:
                    if on_error == "fail":
                        raise BadRecordError(
                            str(doc_id),
                            str(reason),
                            (
                                f"{doc_id}: {reason}. Stopped there (nothing written); run again with "
                                f"on_error='skip' to set bad records aside in {rejects_path}."
                            ),
                        )
                    written.reject(reject_line(Rejected(str(doc_id), str(reason))))
                    continue
                written.output.write(str(line))
                n_docs += 1
                n_words += int(words)
            elapsed = time.perf_counter() - start
            say(f"{n_docs} docs, {n_words:,} words, {n_words / elapsed if elapsed > 0 else 0.0:,.0f} words/s")
    n_rejects = written.rejected
    return AnnotateSummary(
        n_docs + n_rejects,
        0,
        n_docs,
        n_words,
        time.perf_counter() - start,
        rejects_this_run=n_rejects,
        rejects_path=rejects_path if n_rejects else None,
    )
