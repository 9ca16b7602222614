"""A view of the exits: HTML in which each token is shaded by the layer where it
left the encoder (light: early, dark: the whole network), with its tag under
it, entities outlined and labelled, and each doc's speed-up.

    from spacy_earlyexit import render, serve
    html = render(nlp("Angela Merkel visited Paris."))     # a whole page
    serve([nlp(text) for text in texts], port=5000)         # like displacy.serve

Only the standard library and the public extension attributes are used
(`token._.exit_layer`, `token._.exit_layers`, `doc._.earlyexit[name]`,
`doc._.earlyexit_speedup`). Every piece of text is HTML-escaped.
"""

import zlib
from html import escape
from typing import Dict, Iterable, Optional, Sequence, Union

from spacy.tokens import Doc

CSS = """
.ee-view { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1b1b1f; line-height: 1.2; }
.ee-legend { display: flex; align-items: center; gap: 4px; margin: 0 0 14px; font-size: 13px; }
.ee-swatch { display: inline-block; min-width: 26px; padding: 3px 4px; text-align: center; border-radius: 3px; }
.ee-doc { margin: 0 0 18px; padding: 10px 12px; border: 1px solid #dde1e6; border-radius: 6px; }
.ee-doc-title { font-weight: 600; margin-bottom: 4px; }
.ee-stats { font-size: 13px; color: #4a4f57; margin-bottom: 8px; }
.ee-tokens { display: flex; flex-wrap: wrap; align-items: flex-end; row-gap: 10px; }
.ee-token { display: inline-flex; flex-direction: column; align-items: center; padding: 3px 4px 2px;
            border-radius: 3px; margin: 0 1px; }
.ee-text { font-size: 17px; white-space: pre; }
.ee-tag { font-size: 10px; opacity: 0.85; margin-top: 2px; font-family: ui-monospace, Menlo, monospace; }
.ee-ent { display: inline-flex; align-items: flex-end; border: 2px solid; border-radius: 5px; padding: 1px;
          margin: 0 2px; background: transparent; }
.ee-label { font-size: 10px; font-weight: 700; letter-spacing: 0.03em; padding: 1px 4px; margin-left: 2px;
            border-radius: 3px; color: #fff; align-self: center; }
.ee-space { width: 6px; }
"""

NO_LAYER_STYLE = "background-color: #eceff1; color: #1b1b1f"


def layer_colour(layer: int, n_layers: int) -> str:
    """The shade of an exit layer: light blue for layer 1, dark blue for the last."""
    share = 0.0 if n_layers <= 1 else (layer - 1) / (n_layers - 1)
    lightness = 92 - 62 * share
    return f"hsl(215, 70%, {lightness:.0f}%)"


def layer_style(layer: Optional[int], n_layers: int) -> str:
    if layer is None:
        return NO_LAYER_STYLE
    share = 0.0 if n_layers <= 1 else (layer - 1) / (n_layers - 1)
    text = "#ffffff" if share > 0.5 else "#1b1b1f"
    return f"background-color: {layer_colour(layer, n_layers)}; color: {text}"


def label_colour(label: str) -> str:
    """A stable colour per entity label."""
    return f"hsl({zlib.crc32(label.encode('utf8')) % 360}, 65%, 40%)"


def _components(doc: Doc, component: Optional[str]) -> Dict[str, dict]:
    info = doc._.earlyexit or {}
    if component is not None:
        return {component: info[component]} if component in info else {}
    return dict(info)


def _n_layers(doc: Doc, component: Optional[str]) -> int:
    return max((entry["n_layers"] for entry in _components(doc, component).values()), default=0)


def _token_layer(token, component: Optional[str]) -> Optional[int]:
    if component is None:
        return token._.exit_layer
    return (token._.exit_layers or {}).get(component)


def _token_html(token, component: Optional[str], n_layers: int, show_tags: bool, ent_label: Optional[str]) -> str:
    layer = _token_layer(token, component)
    per_component = token._.exit_layers or {}
    tip = [token.text]
    if token.tag_:
        tip.append(f"tag {token.tag_}")
    if ent_label:
        tip.append(f"entity {ent_label}")
    if layer is not None:
        where = f"exit layer {layer} of {n_layers}"
        if len(per_component) > 1 and component is None:
            where += " (" + ", ".join(f"{name} {value}" for name, value in sorted(per_component.items())) + ")"
        tip.append(where)
    attrs = [
        'class="ee-token"',
        f'data-i="{token.i}"',
        f'data-exit-layer="{layer if layer is not None else ""}"',
        f'data-tag="{escape(token.tag_)}"',
        f'style="{layer_style(layer, n_layers)}"',
        f'title="{escape(" · ".join(tip))}"',
    ]
    parts = [f"<span {' '.join(attrs)}>", f'<span class="ee-text">{escape(token.text)}</span>']
    if show_tags:
        parts.append(f'<span class="ee-tag">{escape(token.tag_) or "&nbsp;"}</span>')
    parts.append("</span>")
    return "".join(parts)


def _doc_stats(doc: Doc, component: Optional[str]) -> str:
    components = _components(doc, component)
    if not components:
        return "no early-exit annotation"
    cost = sum(entry["cost"] for entry in components.values())
    full = sum(entry["full_cost"] for entry in components.values())
    speedup = (full / cost if cost > 0 else 1.0) if component else doc._.earlyexit_speedup
    parts = [f"speed-up {speedup:.2f}×", f"cost {100 * cost / full:.0f}% of full depth" if full else ""]
    layers = [_token_layer(token, component) for token in doc]
    layers = [layer for layer in layers if layer is not None]
    if layers:
        parts.append(f"mean exit layer {sum(layers) / len(layers):.2f} of {_n_layers(doc, component)}")
    parts.append(", ".join(sorted(components)))
    return " · ".join(escape(part) for part in parts if part)


def _doc_html(doc: Doc, component: Optional[str], show_tags: bool, n_layers: int) -> str:
    starts = {ent.start: ent for ent in doc.ents}
    speedup = doc._.earlyexit_speedup
    out = [f'<div class="ee-doc" data-speedup="{"" if speedup is None else f"{speedup:.4f}"}">']
    title = doc.user_data.get("title") if isinstance(doc.user_data.get("title"), str) else None
    if title:
        out.append(f'<div class="ee-doc-title">{escape(title)}</div>')
    out.append(f'<div class="ee-stats">{_doc_stats(doc, component)}</div>')
    out.append('<div class="ee-tokens">')
    i = 0
    while i < len(doc):
        ent = starts.get(i)
        if ent is not None:
            colour = label_colour(ent.label_)
            out.append(f'<mark class="ee-ent" data-label="{escape(ent.label_)}" style="border-color: {colour}">')
            for token in ent:
                out.append(_token_html(token, component, n_layers, show_tags, ent.label_))
                if token.whitespace_ and token.i < ent.end - 1:
                    out.append('<span class="ee-space"></span>')
            out.append(f'<span class="ee-label" style="background-color: {colour}">{escape(ent.label_)}</span></mark>')
            i = ent.end
            if doc[i - 1].whitespace_:
                out.append('<span class="ee-space"></span>')
            continue
        token = doc[i]
        out.append(_token_html(token, component, n_layers, show_tags, None))
        if token.whitespace_:
            out.append('<span class="ee-space"></span>')
        i += 1
    out.append("</div></div>")
    return "".join(out)


def _legend(n_layers: int) -> str:
    if n_layers < 1:
        return ""
    swatches = "".join(
        f'<span class="ee-swatch" data-exit-layer="{layer}" style="{layer_style(layer, n_layers)}">{layer}</span>'
        for layer in range(1, n_layers + 1)
    )
    return (
        f'<div class="ee-legend"><span>exit layer:</span><span>early</span>{swatches}<span>whole network</span></div>'
    )


def render(
    docs: Union[Doc, Iterable[Doc]],
    *,
    page: bool = True,
    component: Optional[str] = None,
    show_tags: bool = True,
    title: str = "spacy-earlyexit: where each token left the network",
) -> str:
    """HTML showing each token shaded by its exit layer, with tags under the
    tokens, entities outlined with their labels, a legend of layers and each
    doc's speed-up.

    docs: a Doc or several.
    page: a complete HTML page (True) or a fragment to embed (False).
    component: show this early-exit component's exits (default: each
        token's deepest exit over all components).
    show_tags: write each token's fine-grained tag under it.
    title: the page's title (page=True only).
    RETURNS: the HTML, with every piece of text escaped.
    """
    docs = [docs] if isinstance(docs, Doc) else list(docs)
    n_layers = max((_n_layers(doc, component) for doc in docs), default=0)
    body = "".join(
        [
            '<div class="ee-view">',
            _legend(n_layers),
            *(_doc_html(doc, component, show_tags, n_layers) for doc in docs),
            "</div>",
        ]
    )
    if not page:
        return f"<style>{CSS}</style>{body}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS} body {{ margin: 20px; background: #fff; }}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def make_app(docs: Union[Doc, Sequence[Doc]], **render_kwargs):
    """A WSGI application that answers every request with the rendered page."""
    html = render(docs, page=True, **render_kwargs).encode("utf8")

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(html)))])
        return [html]

    return app


def make_server(docs: Union[Doc, Sequence[Doc]], port: int = 5000, host: str = "127.0.0.1", **render_kwargs):
    """A wsgiref server for the page, not yet serving (port 0: any free port)."""
    from wsgiref.simple_server import WSGIRequestHandler
    from wsgiref.simple_server import make_server as wsgi_server

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):  # noqa: A002  (the base class's name)
            pass

    return wsgi_server(host, port, make_app(docs, **render_kwargs), handler_class=QuietHandler)


def serve(docs: Union[Doc, Sequence[Doc]], port: int = 5000, host: str = "127.0.0.1", **render_kwargs) -> None:
    """Serve the rendered page over HTTP until interrupted (like displacy.serve).
    By default only this machine can reach it (host 127.0.0.1)."""
    server = make_server(docs, port, host, **render_kwargs)
    print(f"Serving the early-exit view on http://{host}:{server.server_port} ... (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("Shutting down server")
    finally:
        server.server_close()
