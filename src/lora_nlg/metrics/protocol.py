"""Which segments are scored against which references: the `official` and `paper` protocols.

`official`: every input once, with all its references, texts as they are. WebNLG subsets:
  all, seen (the 10 training categories), unseen (from the references' `seen` field).
`paper`: what microsoft/LoRA's `gpt2_decode.py` + GenerationEval (WebNLG, DART) or
  `measure_scores.py -p` (E2E) computed for the LoRA paper:
  - references are grouped by the *context string*: inputs with equal contexts become one
    segment (all their references, in input order; the output of the last of them, as
    gpt2_decode's dictionary overwrite does). On DART test this merges inputs (fewer segments);
  - at most `--ref_num 6` references per segment (WebNLG, DART; the rest are dropped; the
    padding with reference 0 changes no score: BLEU, METEOR and TER take a max/min over
    references);
  - WebNLG/DART text is lowercased and split at every non-word character
    (`' '.join(re.split(r'(\\W)', s.lower()))`, whitespace squeezed), outputs and references;
  - outputs and references are cut at `<|endoftext|>` and at the first blank line (`\\n\\n`);
  - WebNLG seen / unseen: inputs filtered by category first, then grouped.
"""

import collections
import dataclasses

from lora_nlg.catalog import DATASETS
from lora_nlg.data.files import upstream_cut, upstream_tokenize

PROTOCOLS = ("official", "paper")


@dataclasses.dataclass
class Prepared:
    """Segments to score and, per subset name, the indices of its segments."""

    hyps: list
    refs: list
    subsets: dict
    stats: dict  # per subset: inputs, segments, references used, references dropped


def microsoft_tokenize(text):
    """microsoft/LoRA gpt2_decode `post_process(text, tokenize=True, lower=True)`."""
    return upstream_tokenize(text.lower())


def subset_filters(pairs, dataset):
    """Subset name -> predicate on a Reference; WebNLG seen/unseen when every input says."""
    filters = {"all": lambda ref: True}
    if dataset == "webnlg" and pairs and all(ref.seen is not None for ref, _ in pairs):
        filters["seen"] = lambda ref: ref.seen
        filters["unseen"] = lambda ref: not ref.seen
    return filters


def prepare(pairs, dataset, protocol):
    """pairs: list of (Reference, output text) in input order (see references.pair)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    hyps, refs, subsets, stats = [], [], {}, {}
    for name, keep in subset_filters(pairs, dataset).items():
        chosen = [(ref, text) for ref, text in pairs if keep(ref)]
        if not chosen:
            continue
        segments = _official(chosen) if protocol == "official" else _paper(chosen, dataset)
        subsets[name] = list(range(len(hyps), len(hyps) + len(segments)))
        used = sum(len(r) for _, r, _ in segments)
        stats[name] = {
            "inputs": len(chosen),
            "segments": len(segments),
            "references": used,
            "references_dropped": sum(d for _, _, d in segments),
        }
        for hyp, rs, _ in segments:
            hyps.append(hyp)
            refs.append(rs)
    return Prepared(hyps=hyps, refs=refs, subsets=subsets, stats=stats)


def _official(chosen):
    return [(text, list(ref.references), 0) for ref, text in chosen]


def _paper(chosen, dataset):
    groups = collections.OrderedDict()
    for ref, text in chosen:
        key = ref.context if ref.context is not None else ("id", ref.id)
        group = groups.setdefault(key, {"refs": [], "hyp": None})
        group["refs"].extend(upstream_cut(r) for r in ref.references)
        group["hyp"] = upstream_cut(text)  # the last output of the group, as gpt2_decode
    limit = DATASETS[dataset].paper_max_references
    transform = microsoft_tokenize if DATASETS[dataset].paper_lower_tokenize else (lambda s: s)
    segments = []
    for group in groups.values():
        kept = group["refs"][:limit] if limit else group["refs"]
        segments.append((transform(group["hyp"]), [transform(r) for r in kept], len(group["refs"]) - len(kept)))
    return segments
