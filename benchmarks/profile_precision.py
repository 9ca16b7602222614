"""Where a pass's time goes, per precision and operating point: torch
profiler over the first 80 test documents, 2 threads, grouped into products,
attention, LayerNorm and index/scatter work.

    python benchmarks/profile_precision.py training/ner-calibrated bf16 2x [corpus/test.spacy]
"""

import sys
import time

import spacy
import torch
from spacy.tokens import DocBin
from torch.profiler import ProfilerActivity, profile

from spacy_earlyexit.tools.evaluation import fresh_copy

GROUPS = {
    "products": ["mkldnn::_linear_pointwise", "quantized::linear_dynamic", "aten::linear", "aten::addmm"],
    "attention": ["aten::_scaled_dot_product_flash_attention_for_cpu"],
    "layer_norm": ["aten::native_layer_norm"],
    "index/scatter": [
        "aten::index",
        "aten::index_put_",
        "aten::_index_put_impl_",
        "aten::index_select",
        "aten::nonzero",
        "aten::gather",
    ],
}


def main() -> None:
    pipeline, precision, point = sys.argv[1:4]
    corpus = sys.argv[4] if len(sys.argv) > 4 else "corpus/test.spacy"
    torch.set_num_threads(2)
    nlp = spacy.load(pipeline)
    references = list(DocBin().from_disk(corpus).get_docs(nlp.vocab))[:80]
    cfg = {"earlyexit_ner": {"precision": precision, "operating_point": point}}
    list(nlp.pipe([fresh_copy(d) for d in references[:20]], component_cfg=cfg))  # warm-up
    docs = [fresh_copy(d) for d in references]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        list(nlp.pipe(docs, batch_size=64, component_cfg=cfg))
        wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    groups = {k: sum(e.self_cpu_time_total for e in events if e.key in v) / 1e6 for k, v in GROUPS.items()}
    parts = ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in groups.items())
    print(
        f"{precision} {point}: wall {wall:.2f} s, profiled CPU {total:.2f} s; {parts}, "
        f"rest {total - sum(groups.values()):.2f} s"
    )


if __name__ == "__main__":
    main()
