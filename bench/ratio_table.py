"""One table of the speed ratios the benchmarks measured (``bench/run_all.sh`` prints it).

    python bench/ratio_table.py --train train.json --beam beam.json --eval eval.json --methods methods.json [--markdown]

Reads the ``--json`` reports of ``train_bench.py``, ``beam_bench.py``, ``eval_bench.py`` and ``method_bench.py`` (any
of them may be missing: its rows say so). A ratio above 1 means ours is faster by that factor.
"""

import argparse
import json
import os
import sys


def _load(path):
    if not path:
        return None, "not run"
    if not os.path.isfile(path):
        return None, f"no report ({path}): the benchmark failed or was skipped"
    with open(path, encoding="utf-8") as f:
        return json.load(f), None


def rows(train, beam, evaluation, methods=None):
    """(area, comparison, ratio or None, note) rows."""
    out = []
    report, why = _load(train)
    if report is None:
        out.append(("training", "all comparisons", None, why))
    else:
        where = f"{report['device']}, {report['precision']}"
        for name, value in report["ratios"].items():
            out.append(("training", name, value, where))
    report, why = _load(beam)
    if report is None:
        out.append(("decoding", "all comparisons", None, why))
    else:
        where = f"{report['device']}, {report['precision']}"
        if "a" in report:
            a = report["a"]
            out.append(
                (
                    "decoding",
                    "beam search vs transformers generate (equal lengths, no n-gram ban)",
                    a["speedup"],
                    f"{where}; {a['inputs']} inputs, {a['identical_outputs']} identical",
                )
            )
        if "a_ngram" in report:
            out.append(
                (
                    "decoding",
                    "beam search vs transformers generate (no-repeat-ngram 4)",
                    report["a_ngram"]["speedup"],
                    where,
                )
            )
        if "b" in report:
            b = report["b"]
            out.append(
                (
                    "decoding",
                    "E2E test set vs upstream's protocol (4,693 lines, batch 1)",
                    b["speedup"],
                    f"{where}; ours {b['ours_total_s']:.1f} s, seed {b['seed_total_s']:.1f} s (extrapolated "
                    f"from {b['seed_lines_measured']} lines)",
                )
            )
    report, why = _load(evaluation)
    if report is None:
        out.append(("evaluation", "all comparisons", None, why))
    else:
        for name, run in report["runs"].items():
            same = "same scores" if run["same_scores"] else "SCORES DIFFER"
            out.append(
                (
                    "evaluation",
                    f"{name}: eval/eval.sh vs the official scorers (wall time)",
                    run["speedup_wall"],
                    f"ours {run['ours']['wall_s']} s, theirs {run['reference']['wall_s']} s; {same}",
                )
            )
            out.append(
                (
                    "evaluation",
                    f"{name}: eval/eval.sh vs the official scorers (CPU time)",
                    run["speedup_cpu"],
                    f"ours {run['ours']['cpu_s']} s, theirs {run['reference']['cpu_s']} s",
                )
            )
    report, why = _load(methods)
    if report is None:
        out.append(("methods", "all comparisons", None, why))
    else:
        for name, value in report["ratios"].items():
            out.append(("methods", name, value, f"{report['device']}, {report['precision']}"))
    return out


def format_table(table, markdown=False):
    if markdown:
        lines = ["| area | comparison | ratio | notes |", "|---|---|---:|---|"]
        lines += [f"| {a} | {c} | {'-' if r is None else f'{r:.2f}x'} | {n} |" for a, c, r, n in table]
        return "\n".join(lines)
    width = max(len(c) for _, c, _, _ in table)
    lines = [f"{'area':<11} {'comparison':<{width}} {'ratio':>8}  notes"]
    lines += [f"{a:<11} {c:<{width}} {'-' if r is None else f'{r:.2f}x':>8}  {n}" for a, c, r, n in table]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", help="train_bench.py --json report")
    p.add_argument("--beam", help="beam_bench.py --json report")
    p.add_argument("--eval", help="eval_bench.py --json report")
    p.add_argument("--methods", help="method_bench.py --json report")
    p.add_argument("--markdown", action="store_true", help="a markdown table")
    args = p.parse_args(argv)
    print(format_table(rows(args.train, args.beam, args.eval, args.methods), args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
