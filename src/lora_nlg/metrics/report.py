"""The evaluation report: a printed table and a JSON file with every score, the protocol, what
each metric is, what could not be computed and why, and the versions of the tools used."""

import importlib.metadata
import json
import platform

from lora_nlg.atomic import atomic_write
from lora_nlg.catalog import DATASETS

from . import java

# Printed precision per metric (the JSON keeps full precision).
DECIMALS = {"BLEU": 4, "NIST": 4, "METEOR": 4, "ROUGE_L": 4, "CIDEr": 4, "TER": 4}


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def tool_versions(paraphrase):
    """Versions of everything that can change a number."""
    import lora_nlg

    return {
        "lora_nlg": lora_nlg.__version__,
        "python": platform.python_version(),
        "sacrebleu": _version("sacrebleu"),
        "pycocoevalcap": _version("pycocoevalcap"),
        "nltk": _version("nltk"),
        "numpy": _version("numpy"),
        "java": java.java_version() if java.java_available() else None,
        "meteor": f"METEOR 1.5 (meteor-1.5.jar of pycocoevalcap; -l en -norm; paraphrase table: {paraphrase})",
        "ptb_tokenizer": "Stanford CoreNLP 3.4.1 PTBTokenizer -preserveLines -lowerCase (pycocoevalcap jar)",
        "ter": "exact re-implementation of pyter3 0.3 ter() (installed pyter3: %s)" % _version("pyter3"),
    }


def scale_of(dataset, metric):
    """The scale eval.sh reports ``metric`` on for ``dataset`` ('0-1', '0-100'), or '' for none."""
    if metric == "BLEU":
        return "0-1" if "BLEU" in DATASETS[dataset].percent else "0-100"
    return "0-1" if metric in ("METEOR", "ROUGE_L", "TER") else ""


def format_table(report):
    """Rows = subsets, columns = metrics; a header names dataset, protocol and references."""
    lines = [
        f"{report['dataset']}  protocol={report['protocol']}  references={report['references']}",
        f"  {report['protocol_description']}",
    ]
    metrics = report["metrics"]
    names = [f"{m}({scale_of(report['dataset'], m)})" if scale_of(report["dataset"], m) else m for m in metrics]
    width = max(9, *(len(n) for n in names))
    lines.append("subset    inputs  segments  refs    " + "".join(n.rjust(width + 2) for n in names))
    for name, scores in report["scores"].items():
        st = report["counts"][name]
        cells = []
        for m in metrics:
            value = scores.get(m)
            cells.append(("-" if value is None else f"{value:.{DECIMALS[m]}f}").rjust(width + 2))
        lines.append(f"{name:<8}{st['inputs']:>8}{st['segments']:>10}{st['references']:>6}    " + "".join(cells))
    for m, label in report["metric_definitions"].items():
        lines.append(f"  {m}: {label}")
    for m, why in report["not_computed"].items():
        lines.append(f"  {m} NOT COMPUTED: {why}")
    for name, st in report["counts"].items():
        if st["references_dropped"]:
            lines.append(f"  {name}: {st['references_dropped']} references dropped by the protocol")
    return "\n".join(lines)


def write_json(report, path):
    with atomic_write(path) as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
        f.write("\n")
