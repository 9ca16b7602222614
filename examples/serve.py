"""A small threaded HTTP server for an early-exit pipeline, on the standard
library only (`http.server.ThreadingHTTPServer`):

    python examples/serve.py PIPELINE [--host 127.0.0.1] [--port 8080] [--concurrency 2]

It loads the pipeline once and answers

- `POST /annotate` with a JSON body `{"text": "...", "operating_point": "4x"}`
  (the point is optional: without it, each component runs at its default)
  with `{"ents": [[start_char, end_char, label], ...], "words": [...],
  "tags": [...], "exit_layers": [...], "operating_point": "4x" or null}`;
- `GET /health` with the early-exit components and their operating points.

Each request thread calls `nlp(text, component_cfg=...)`: the operating
point is chosen per call through spaCy's `component_cfg`, so requests at
different points run at once on the one loaded pipeline, each at its own
point. `component.use(point)` would change the default of every thread, and
`with component.using(point):` is scoped to the calling thread; neither is
needed here.

At most `--concurrency` requests run the pipeline at a time (the others wait
their turn): each call already uses torch's intra-op threads, so more at once
only makes them compete for the cores. Bodies over `--max-bytes` get 413.
Serve on 127.0.0.1, behind a reverse proxy, unless you mean to expose it.
"""

import argparse
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

MAX_BYTES = 1_000_000


def earlyexit_components(nlp) -> Dict[str, Any]:
    """The pipeline's early-exit components by name (those that take an
    operating point per call; a shared encoder's tasks take it from it)."""
    from spacy_earlyexit.pipeline.labeler import EarlyExitLabeler

    return {name: proc for name, proc in nlp.pipeline if isinstance(proc, EarlyExitLabeler) and not proc.listening}


def annotate(nlp, components: Dict[str, Any], text: str, operating_point: Optional[str] = None) -> Dict[str, Any]:
    """One answer: the doc of `text` at `operating_point` (per call; None:
    each component's default) as JSON-able lists."""
    if operating_point is None:
        doc = nlp(text)
    else:
        doc = nlp(text, component_cfg={name: {"operating_point": operating_point} for name in components})
    return {
        "ents": [[ent.start_char, ent.end_char, ent.label_] for ent in doc.ents],
        "words": [token.text for token in doc],
        "tags": [token.tag_ for token in doc] if doc.has_annotation("TAG") else [],
        "exit_layers": [token._.exit_layer for token in doc],
        "operating_point": operating_point,
    }


class BadRequest(ValueError):
    """A request the server answers with a 4xx status and a message."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class AnnotationServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer (one thread per request) that holds the pipeline."""

    daemon_threads = True

    def __init__(
        self, address: Tuple[str, int], nlp, *, concurrency: int = 2, max_bytes: int = MAX_BYTES, quiet: bool = False
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}.")
        self.nlp = nlp
        self.components = earlyexit_components(nlp)
        if not self.components:
            raise ValueError("The pipeline has no early-exit component (earlyexit_ner, earlyexit_tagger).")
        self.slots = threading.BoundedSemaphore(concurrency)
        self.max_bytes = max_bytes
        self.quiet = quiet
        super().__init__(address, AnnotationHandler)

    def points(self) -> List[str]:
        """The operating points every early-exit component knows ("full" always)."""
        known = [set(["full", *proc.operating_points]) for proc in self.components.values()]
        return sorted(set.intersection(*known), key=lambda point: (point != "full", point))

    def check_request(self, body: Any) -> Tuple[str, Optional[str]]:
        if not isinstance(body, dict):
            raise BadRequest('The body must be a JSON object: {"text": "...", "operating_point": "..."}.')
        text, point = body.get("text"), body.get("operating_point")
        if not isinstance(text, str):
            raise BadRequest("'text' must be a string.")
        if point is not None and point not in self.points():
            raise BadRequest(f"Unknown operating point {point!r}: use one of {', '.join(self.points())}.")
        return text, point


class AnnotationHandler(BaseHTTPRequestHandler):
    server: AnnotationServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != "/health":
            return self._send(HTTPStatus.NOT_FOUND, {"error": "GET /health or POST /annotate."})
        components = {name: ["full", *proc.operating_points] for name, proc in self.server.components.items()}
        self._send(HTTPStatus.OK, {"status": "ok", "components": components, "operating_points": self.server.points()})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/annotate":
            return self._send(HTTPStatus.NOT_FOUND, {"error": "POST /annotate."})
        try:
            length = self._content_length()
            try:
                body = json.loads(self.rfile.read(length).decode("utf8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as err:
                raise BadRequest(f"The body is not JSON in UTF-8 ({err}).") from None
            text, point = self.server.check_request(body)
            with self.server.slots:
                answer = annotate(self.server.nlp, self.server.components, text, point)
        except BadRequest as err:
            return self._send(err.status, {"error": str(err)})
        except Exception as err:  # the pipeline failed: say so, keep serving
            self.log_error("annotating failed: %r", err)
            return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(err).__name__}: {err}"})
        self._send(HTTPStatus.OK, answer)

    def _content_length(self) -> int:
        value = self.headers.get("Content-Length")
        if value is None or not value.strip().isdigit():
            raise BadRequest("Send the body with a Content-Length.", HTTPStatus.LENGTH_REQUIRED)
        if int(value) > self.server.max_bytes:
            raise BadRequest(f"The body is over {self.server.max_bytes:,} bytes.", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        return int(value)

    def _send(self, status: HTTPStatus, payload: Dict[str, Any]) -> None:
        data = json.dumps(payload).encode("ascii")  # \u escapes: any text, even a lone surrogate, goes through
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        if not self.server.quiet:
            super().log_message(format, *args)


def make_server(nlp, host: str = "127.0.0.1", port: int = 8080, **kwargs) -> AnnotationServer:
    """A server for a loaded pipeline, bound to (host, port) (port 0: any free
    one, see `server.server_address`); run it with `serve_forever()`, stop it
    with `shutdown()` and `server_close()`. `kwargs`: `concurrency`,
    `max_bytes`, `quiet`."""
    return AnnotationServer((host, port), nlp, **kwargs)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="pipeline directory or package name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--concurrency", type=int, default=2, help="requests that run the pipeline at once")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="largest request body")
    args = parser.parse_args(argv)

    import spacy

    import spacy_earlyexit  # noqa: F401  registers the factories and extensions

    nlp = spacy.load(args.pipeline)
    server = make_server(nlp, args.host, args.port, concurrency=args.concurrency, max_bytes=args.max_bytes)
    host, port = server.server_address[:2]
    print(
        f"Serving {args.pipeline} on http://{host}:{port} (POST /annotate, GET /health); points: "
        f"{', '.join(server.points())}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
