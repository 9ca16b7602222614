"""The serving example (examples/serve.py): one loaded pipeline, a thread per
request, the operating point chosen per request through `component_cfg`.

The server listens on 127.0.0.1 (a free port) only, for the few requests of
these tests, and is shut down after them."""

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
import spacy

from examples import serve

SHALLOW = {"policy": "fixed_depth", "layer": 1}
TEXTS = [
    "Angela Merkel visited Paris on Tuesday .",
    "John sat on the mat in Berlin .",
    "The cat visited Berlin .",
    "Paris and Berlin , John and Angela .",
    "angela merkel visited paris on tuesday",
]
#: requests alternate between these: the pipeline's default (None), "full" and "shallow"
POINTS = [None, "full", "shallow"]
N_REQUESTS = 48


@pytest.fixture(scope="module")
def nlp(saved_pipeline):
    """NER and tagger (token-level exits by default) with a second named point, "shallow"."""
    nlp = spacy.load(saved_pipeline)
    for name in ("earlyexit_ner", "earlyexit_tagger"):
        nlp.get_pipe(name).operating_points = {"shallow": dict(SHALLOW)}
    return nlp


@pytest.fixture(scope="module")
def server(nlp):
    server = serve.make_server(nlp, "127.0.0.1", 0, concurrency=4, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    assert not thread.is_alive()


def url(server, path: str) -> str:
    host, port = server.server_address[:2]
    assert host == "127.0.0.1"
    return f"http://{host}:{port}{path}"


def post(server, body, raw: bytes = None):
    """(status, answer) of POST /annotate."""
    data = raw if raw is not None else json.dumps(body).encode("utf8")
    request = urllib.request.Request(
        url(server, "/annotate"), data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def expected_answer(nlp, text, point):
    """The single-threaded answer at `point`, chosen the default-changing way (`using`)."""
    with ExitStack() as stack:
        if point is not None:
            for name in ("earlyexit_ner", "earlyexit_tagger"):
                stack.enter_context(nlp.get_pipe(name).using(point))
        doc = nlp(text)
    return {
        "ents": [[e.start_char, e.end_char, e.label_] for e in doc.ents],
        "words": [t.text for t in doc],
        "tags": [t.tag_ for t in doc],
        "exit_layers": [t._.exit_layer for t in doc],
        "operating_point": point,
    }


def test_the_pipeline_has_the_points_the_requests_ask_for(nlp):
    for name in ("earlyexit_ner", "earlyexit_tagger"):
        assert nlp.get_pipe(name).operating_points == {"shallow": SHALLOW}
    assert serve.make_server(nlp, "127.0.0.1", 0).points() == ["full", "shallow"]


def test_concurrent_requests_at_different_points_each_get_their_own_point(nlp, server):
    expected = {(text, point): expected_answer(nlp, text, point) for text in TEXTS for point in POINTS}
    # the points differ, so a request answered at the wrong point is caught
    for text in TEXTS:
        assert set(expected[text, "shallow"]["exit_layers"]) == {1}
        assert set(expected[text, "full"]["exit_layers"]) == {3}
    assert any(expected[text, None] not in (expected[text, "full"], expected[text, "shallow"]) for text in TEXTS)
    requests = [(TEXTS[i % len(TEXTS)], POINTS[i % len(POINTS)]) for i in range(N_REQUESTS)]

    def ask(request):
        text, point = request
        body = {"text": text} if point is None else {"text": text, "operating_point": point}
        return post(server, body)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, requests))
    for (text, point), (status, answer) in zip(requests, answers):
        assert status == 200, answer
        assert answer == expected[text, point], (text, point)
    # the pipeline's default is untouched by the requests
    for name in ("earlyexit_ner", "earlyexit_tagger"):
        assert nlp.get_pipe(name).operating_point is None


def test_a_bad_request_gets_a_clear_error_and_the_server_keeps_serving(server):
    status, answer = post(server, {"text": "John sat .", "operating_point": "9x"})
    assert status == 400 and "Unknown operating point '9x': use one of full, shallow" in answer["error"]
    assert post(server, {"text": 5})[0] == 400
    assert post(server, ["John"])[0] == 400
    assert post(server, None, raw=b"{not json")[0] == 400
    assert post(server, None, raw=b"\xff\xfe")[0] == 400
    status, answer = post(server, {"text": "John sat ."})
    assert status == 200 and answer["words"] == ["John", "sat", "."] and answer["operating_point"] is None
    with urllib.request.urlopen(url(server, "/health"), timeout=30) as response:
        health = json.loads(response.read())
    assert health["operating_points"] == ["full", "shallow"]
    assert health["components"] == {"earlyexit_ner": ["full", "shallow"], "earlyexit_tagger": ["full", "shallow"]}
