"""Time `eval/eval.sh` against the straightforward paths of the official scorers, same outputs.

    python bench/eval_bench.py [--data-mirror ../shared/data] [--json OUT] [--only e2e|webnlg]

E2E test (tgen.tsv, 630 MRs):
  ours       eval/eval.sh e2e tgen.tsv testset_w_refs.csv
  reference  what the official scorer runs, as far as it runs here: pycocoevalcap's PTBTokenizer
             (one JVM for references, one for outputs), Meteor (the full paraphrase table, one
             round trip per segment), Rouge, Cider; BLEU by sacrebleu and NIST by this package
             (the Perl mteval script is not available here: ~1-2 s of the official run).
WebNLG test (1,862 inputs; GenerationEval's sample hypotheses), microsoft/LoRA's protocol:
  ours       eval/eval.sh webnlg hypothesis test_unique.jsonl --protocol paper (all/seen/unseen)
  reference  GenerationEval on the files microsoft's gpt2_decode writes (<= 6 references per
             context padded with reference 0, lowercased, tokenized): nltk.word_tokenize, BLEU
             (sacrebleu = multi-bleu-detok), METEOR (`java -jar meteor-1.5.jar hyp ref -l en -norm
             -r 6`), TER (pyter3) -- for `all` only (the paper ran it once per subset).
Each path runs once, in a subprocess; wall time and CPU time (including child JVMs) are
reported, with the scores of both, which must agree.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
SEEN = {
    "Airport",
    "Astronaut",
    "Building",
    "City",
    "ComicsCharacter",
    "Food",
    "Monument",
    "SportsTeam",
    "University",
    "WrittenWork",
}


def reference_e2e(mirror):
    """The official E2E scorer's metric calls (pycocoevalcap), in this process."""
    import sacrebleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from lora_nlg.metrics import nist, references

    preds, keyed = references.read_predictions(
        os.path.join(mirror, "eval-samples", "e2e", "e2e-challenge-primary-outputs", "tgen.tsv")
    )
    pairs = references.pair(preds, keyed, references.read_references(os.path.join(mirror, "e2e", "testset_w_refs.csv")))
    hyps, refs = [t for _, t in pairs], [r.references for r, _ in pairs]
    width = max(map(len, refs))
    scores = {
        "BLEU": sacrebleu.metrics.BLEU(lowercase=True, tokenize="13a")
        .corpus_score(hyps, [[rs[k] if k < len(rs) else None for rs in refs] for k in range(width)])
        .score
        / 100,
        "NIST": nist.nist(hyps, refs),
    }
    gts = PTBTokenizer().tokenize({i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)})
    res = PTBTokenizer().tokenize({i: [{"caption": h}] for i, h in enumerate(hyps)})
    for name, scorer in (("METEOR", Meteor()), ("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        scores[name] = float(scorer.compute_score(gts, res)[0])
    return {"all": scores}


def _webnlg_references(mirror, path):
    root = ET.parse(os.path.join(mirror, "webnlg_challenge_2017", "test", "testdata_with_lex.xml")).getroot()
    with open(path, "w", encoding="utf-8") as f:
        for i, entry in enumerate(root.iter("entry")):
            context = " | ".join(t.text.strip() for t in entry.find("modifiedtripleset").findall("mtriple"))
            f.write(
                json.dumps(
                    {
                        "id": i,
                        "context": context,
                        "context_ids": [],
                        "references": [lex.text.strip() for lex in entry.findall("lex")],
                        "category": entry.get("category"),
                        "seen": entry.get("category") in SEEN,
                    }
                )
                + "\n"
            )


def reference_webnlg(mirror, refs_path):
    """GenerationEval (bleu, meteor, ter) on microsoft/LoRA's files for the whole test set."""
    import re

    import nltk
    import pyter
    import sacrebleu

    from lora_nlg.metrics import java, protocol, punkt

    nltk.data.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(punkt.find_punkt()))))
    rows = [json.loads(line) for line in open(refs_path, encoding="utf-8")]
    with open(os.path.join(mirror, "eval-samples", "generationeval-sample-en", "hypothesis"), encoding="utf-8") as f:
        hyps = f.read().split("\n")
    groups = {}
    for r, h in zip(rows, hyps):  # gpt2_decode: references grouped by context, last sample kept
        g = groups.setdefault(r["context"], {"refs": []})
        g["refs"] += r["references"]
        g["hyp"] = h
    tok = protocol.microsoft_tokenize
    m_hyps = [tok(g["hyp"]) for g in groups.values()]
    m_refs = [[tok(g["refs"][k] if k < len(g["refs"]) else g["refs"][0]) for k in range(6)] for g in groups.values()]
    scores = {
        "BLEU": sacrebleu.metrics.BLEU(tokenize="13a", smooth_method="none", force=True)
        .corpus_score(m_hyps, [[rs[k] for rs in m_refs] for k in range(6)])
        .score
    }
    tok_h = [" ".join(nltk.word_tokenize(h)) for h in m_hyps]
    tok_r = [[" ".join(nltk.word_tokenize(r)) for r in rs] for rs in m_refs]
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "hyp"), "w", encoding="utf-8") as f:
            f.write("\n".join(tok_h))
        with open(os.path.join(tmp, "ref"), "w", encoding="utf-8") as f:
            f.write("\n".join(r for rs in tok_r for r in rs))
        out = subprocess.run(
            [
                java.java_executable(),
                "-Xmx2G",
                "-jar",
                java.meteor_jar(),
                os.path.join(tmp, "hyp"),
                os.path.join(tmp, "ref"),
                "-l",
                "en",
                "-norm",
                "-r",
                "6",
            ],
            capture_output=True,
            check=True,
        ).stdout.decode()
    scores["METEOR"] = float(re.search(r"Final score:\s+(\S+)", out).group(1))
    ters = []
    for h, rs in zip(tok_h, tok_r):
        ters.append(min(pyter.ter(h.split(), r.split()) if len(r) else 1 for r in rs))
    scores["TER"] = sum(ters) / len(ters)
    return {"all": scores}


def _timed(cmd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.stdout


def _load_average():
    """1-minute load average (other processes share the CPU: read the ratios with it)."""
    return round(os.getloadavg()[0], 2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-mirror", default=os.environ.get("NLG_DATA_MIRROR", os.path.join(ROOT, "..", "shared", "data"))
    )
    p.add_argument("--json", default=None)
    p.add_argument("--only", choices=("e2e", "webnlg"), default=None)
    p.add_argument("--run", choices=("reference-e2e", "reference-webnlg"), help=argparse.SUPPRESS)
    p.add_argument("--refs", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    mirror = os.path.abspath(args.data_mirror)
    if args.run == "reference-e2e":
        print(json.dumps(reference_e2e(mirror)))
        return 0
    if args.run == "reference-webnlg":
        print(json.dumps(reference_webnlg(mirror, args.refs)))
        return 0

    eval_sh = os.path.join(ROOT, "eval", "eval.sh")
    results = {"machine": {"cpus": os.cpu_count()}, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        if args.only in (None, "e2e"):
            tgen = os.path.join(mirror, "eval-samples", "e2e", "e2e-challenge-primary-outputs", "tgen.tsv")
            csv_refs = os.path.join(mirror, "e2e", "testset_w_refs.csv")
            jobs.append(
                (
                    "e2e",
                    [eval_sh, "e2e", tgen, csv_refs, "--json", os.path.join(tmp, "e2e.json")],
                    [sys.executable, __file__, "--data-mirror", mirror, "--run", "reference-e2e"],
                    "e2e.json",
                )
            )
        if args.only in (None, "webnlg"):
            refs = os.path.join(tmp, "test_unique.jsonl")
            _webnlg_references(mirror, refs)
            hyp = os.path.join(mirror, "eval-samples", "generationeval-sample-en", "hypothesis")
            jobs.append(
                (
                    "webnlg",
                    [eval_sh, "webnlg", hyp, refs, "--protocol", "paper", "--json", os.path.join(tmp, "w.json")],
                    [sys.executable, __file__, "--data-mirror", mirror, "--run", "reference-webnlg", "--refs", refs],
                    "w.json",
                )
            )
        for name, ours_cmd, ref_cmd, report in jobs:
            load = _load_average()
            ref_wall, ref_cpu, ref_out = _timed(ref_cmd)
            our_wall, our_cpu, _ = _timed(ours_cmd)
            load_after = _load_average()
            ours = json.load(open(os.path.join(tmp, report)))["scores"]
            reference = json.loads(ref_out.strip().splitlines()[-1])
            results["runs"][name] = {
                "load_average_before": load,
                "load_average_after": load_after,
                "reference": {"wall_s": round(ref_wall, 2), "cpu_s": round(ref_cpu, 2), "scores": reference["all"]},
                "ours": {"wall_s": round(our_wall, 2), "cpu_s": round(our_cpu, 2), "scores": ours},
                "speedup_wall": round(ref_wall / our_wall, 2),
                "speedup_cpu": round(ref_cpu / our_cpu, 2),
                "same_scores": all(
                    abs(ours["all"][m] - v) < 5e-5 * max(1.0, abs(v)) for m, v in reference["all"].items()
                ),
            }
            print(json.dumps({name: results["runs"][name]}, indent=2), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
