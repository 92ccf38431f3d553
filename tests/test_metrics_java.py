"""Metrics that need Java (METEOR 1.5, PTB tokenizer): parity with the official E2E numbers and
with GenerationEval, the CLI end to end. Java is required here: a missing `java` fails these
tests (with the reason), it does not skip them. JVM results are shared by module fixtures."""

import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET

import pytest
from test_metrics import DART, E2E_OUT, E2E_REFS, GENEVAL, MIRROR, _pyter_segment, _split

from lora_nlg.metrics import bleu, cider, evaluate, java, meteor, nist, protocol, ptb, references, rouge, ter
from lora_nlg.metrics.word_tokenize import generationeval_tokenize

# Official E2E scorer on the challenge outputs (METRICS.md).
E2E_TARGETS = {
    "tgen": dict(BLEU="0.6593", NIST="8.6094", METEOR="0.4483", ROUGE_L="0.6850", CIDEr="2.2338"),
    "slug": dict(BLEU="0.6619", NIST="8.6130", METEOR="0.4454", ROUGE_L="0.6772", CIDEr="2.2615"),
    "adapt": dict(BLEU="0.5092", NIST="7.1954", METEOR="0.4025", ROUGE_L="0.5872", CIDEr="1.5039"),
}
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


@pytest.fixture(scope="module", autouse=True)
def java_required():
    if not java.java_available():
        pytest.fail(
            "Java (>= 8) is required for METEOR 1.5 and the PTB tokenizer: no working `java` "
            "on PATH or in $JAVA_HOME (install e.g. default-jre-headless)"
        )


@pytest.fixture(scope="module")
def e2e_systems():
    """The three systems scored together: one PTB JVM, one METEOR JVM (one EVAL per system)."""
    refs = references.read_references(E2E_REFS)
    systems = {}
    for name in E2E_TARGETS:
        preds, keyed = references.read_predictions(os.path.join(E2E_OUT, f"{name}.tsv"))
        systems[name] = [text for _, text in references.pair(preds, keyed, refs)]
    ref_lists = [r.references for r in refs]
    flat_refs = [r for rs in ref_lists for r in rs]
    hyps = [h for name in E2E_TARGETS for h in systems[name]]
    tokens = ptb.ptb_tokenize(hyps + flat_refs)
    tok_hyps, rest = tokens[: len(hyps)], iter(tokens[len(hyps) :])
    tok_refs = [[next(rest) for _ in rs] for rs in ref_lists]
    n = len(ref_lists)
    subsets = {name: list(range(k * n, (k + 1) * n)) for k, name in enumerate(E2E_TARGETS)}
    met = meteor.meteor_subsets(tok_hyps, tok_refs * len(E2E_TARGETS), subsets)
    scores = {}
    for k, name in enumerate(E2E_TARGETS):
        th = tok_hyps[k * n : (k + 1) * n]
        scores[name] = dict(
            BLEU=bleu.bleu(systems[name], ref_lists, "mteval"),
            NIST=nist.nist(systems[name], ref_lists),
            METEOR=met[name],
            ROUGE_L=rouge.rouge_l(th, tok_refs),
            CIDEr=cider.cider_d(th, tok_refs),
        )
    return dict(scores=scores, systems=systems, refs=refs, tok_hyps=tok_hyps, tok_refs=tok_refs)


@pytest.mark.parametrize("name", sorted(E2E_TARGETS))
def test_e2e_parity_with_official_scorer(e2e_systems, name):
    got = {m: "%.4f" % v for m, v in e2e_systems["scores"][name].items()}
    assert got == E2E_TARGETS[name]


def test_ptb_tokenizer_like_pycocoevalcap():
    texts = ["The Café costs £20 (cheap).", "", ".", "a\nb", "x\ry", "Hello, world!", "  "]
    assert ptb.ptb_tokenize(texts) == ["the café costs # 20 -lrb- cheap -rrb-", "", "", "a b", "x y", "hello world", ""]
    assert ptb.ptb_tokenize(["", ""]) == ["", ""]


def test_e2e_cli_with_prediction_jsonl(e2e_systems, tmp_path):
    """The documented formats end to end: predictions jsonl (gpt2_beam.py) + test_unique.jsonl."""
    refs = e2e_systems["refs"]
    ref_file = tmp_path / "test_unique.jsonl"
    ref_file.write_text(
        "".join(
            json.dumps({"id": r.id, "context": r.mr, "context_ids": [], "references": r.references}) + "\n"
            for r in refs
        )
    )
    pred_file = tmp_path / "pred.jsonl"
    pred_file.write_text(
        "".join(
            json.dumps({"id": r.id, "token_ids": [], "text": t}) + "\n"
            for r, t in zip(refs, e2e_systems["systems"]["tgen"])
        )
    )
    out = tmp_path / "report.json"
    assert evaluate.main(["e2e", str(pred_file), str(ref_file), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {m: "%.4f" % v for m, v in report["scores"]["all"].items()} == E2E_TARGETS["tgen"]
    assert report["protocol"] == "official" and report["not_computed"] == {}
    assert report["counts"]["all"] == {"inputs": 630, "segments": 630, "references": 4693, "references_dropped": 0}
    assert report["tools"]["java"].startswith(("openjdk", "java")) and report["tools"]["sacrebleu"]
    assert "mteval-v13a-sig" in report["metric_definitions"]["NIST"]


def test_meteor_edge_cases():
    scores = meteor.meteor_subsets(
        ["the café costs # 20", "le café", "", "a single reference"],
        [["the café costs # 20"], ["le cafe"], ["something"], ["a single reference"]],
        {"same": [0], "accent": [1], "empty": [2], "all": [0, 1, 2, 3]},
    )
    assert scores["same"] == 1.0  # UTF-8 both ways: identical text scores 1
    assert scores["accent"] < 1.0  # é is not e (no lossy decoding on the way)
    assert scores["empty"] == 0.0  # an empty hypothesis is scored, not an error
    two = meteor.meteor_subsets(["a b c", "d e f", "x"], [["a b c d"], ["d e"], ["y", "x"]], jobs=2)
    one = meteor.meteor_subsets(["a b c", "d e f", "x"], [["a b c d"], ["d e"], ["y", "x"]], jobs=1)
    assert two == one


def test_meteor_vocabulary_contains_the_jars_normalizer_output(e2e_systems):
    """The paraphrase table is cut to `meteor_vocabulary`: it must contain every token the jar's
    own normalizer (`-norm`) makes of the texts."""
    dart = references._lines(os.path.join(DART, "bart-large_dart.txt"))[:1500]
    geneval = _split(os.path.join(GENEVAL, "hypothesis")) + _split(os.path.join(GENEVAL, "references", "reference0"))
    texts = (
        e2e_systems["tok_hyps"][:630]
        + [r for rs in e2e_systems["tok_refs"] for r in rs]
        + dart
        + geneval
        + [generationeval_tokenize(t) for t in geneval[:500]]
        + ["U.S.-based e-mail don’t “x” -- a–b ... Mr. Smith 1,000.5 ŁÓDŹ Σίσυφος İstanbul 1990's"]
    )
    cmd = java.java_command("-cp", java.meteor_jar(), "edu.cmu.meteor.util.Normalizer", "en", "true")
    out = subprocess.run(cmd, input=("\n".join(texts) + "\n").encode("utf-8"), capture_output=True, check=True)
    jar_tokens = set(out.stdout.decode("utf-8").lower().split())
    assert jar_tokens - meteor.meteor_vocabulary(texts) == set()


@pytest.fixture(scope="module")
def geneval_tokenized(punkt_model):
    """GenerationEval's own sample as GenerationEval parses it: 4 references per line, empty
    lines kept as empty references, word_tokenize'd for METEOR and TER."""
    hyps = _split(os.path.join(GENEVAL, "hypothesis"))
    cols = [_split(os.path.join(GENEVAL, "references", f"reference{k}")) for k in range(4)]
    refs = [[c[i] for c in cols] for i in range(len(hyps))]
    tok = {t: generationeval_tokenize(t) for t in set(hyps) | {r for rs in refs for r in rs}}
    return hyps, refs, [tok[h] for h in hyps], [[tok[r] for r in rs] for rs in refs]


def test_generationeval_sample_meteor_equals_jar_file_mode(geneval_tokenized, tmp_path):
    """GenerationEval's exact command (file mode, -r 4, the full paraphrase table, default JVM)
    against the fast path (stdio, cut-down table, C1 JIT)."""
    _, _, tok_h, tok_r = geneval_tokenized
    (tmp_path / "hyp").write_text("\n".join(tok_h), encoding="utf-8")
    (tmp_path / "ref").write_text("\n".join(r for rs in tok_r for r in rs), encoding="utf-8")
    cmd = [
        java.java_executable(),
        "-Xmx2G",
        "-jar",
        java.meteor_jar(),
        str(tmp_path / "hyp"),
        str(tmp_path / "ref"),
        "-l",
        "en",
        "-norm",
        "-r",
        "4",
    ]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout.decode()
    official = float(re.search(r"Final score:\s+(\S+)", out).group(1))
    assert meteor.meteor(tok_h, tok_r) == official


def test_generationeval_sample_bleu_and_ter(geneval_tokenized):
    hyps, refs, tok_h, tok_r = geneval_tokenized
    import sacrebleu

    expected = (
        sacrebleu.metrics.BLEU(tokenize="13a", smooth_method="none", force=True)
        .corpus_score(hyps, [[rs[k] for rs in refs] for k in range(4)])
        .score
    )
    assert bleu.bleu(hyps, refs, "multi-bleu-detok") == pytest.approx(expected, abs=1e-9)
    for i in range(0, len(tok_h), 30):
        assert ter.segment_ter(tok_h[i], tok_r[i]) == _pyter_segment(tok_h[i], tok_r[i]), i


def _webnlg_references(path):
    root = ET.parse(os.path.join(MIRROR, "webnlg_challenge_2017", "test", "testdata_with_lex.xml")).getroot()
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


def test_webnlg_cli_paper_protocol(tmp_path):
    """microsoft/LoRA's pipeline on the WebNLG test set (GenerationEval's hypotheses): compared
    with the files microsoft's gpt2_decode writes (<= 6 references per context, padded with
    reference 0, lowercased, \\W-tokenized) scored as GenerationEval does."""
    refs_path = tmp_path / "test_unique.jsonl"
    _webnlg_references(refs_path)
    hyp_path = os.path.join(GENEVAL, "hypothesis")
    out = tmp_path / "r.json"
    assert evaluate.main(["webnlg", hyp_path, str(refs_path), "--protocol", "paper", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["counts"]["all"]["segments"] == 1862 and set(report["scores"]) == {"all", "seen", "unseen"}
    assert report["counts"]["seen"]["inputs"] == 971 and report["counts"]["unseen"]["inputs"] == 891

    # microsoft's files, built here independently of protocol.py
    rows = [json.loads(line) for line in refs_path.read_text().splitlines()]
    hyps = _split(hyp_path)
    for subset, keep in (("all", lambda r: True), ("seen", lambda r: r["seen"]), ("unseen", lambda r: not r["seen"])):
        groups = {}
        for r, h in zip(rows, hyps):
            if keep(r):
                g = groups.setdefault(r["context"], {"refs": []})
                g["refs"] += r["references"]
                g["hyp"] = h
        tok = protocol.microsoft_tokenize
        m_hyps = [tok(g["hyp"]) for g in groups.values()]
        m_refs = [
            [tok(g["refs"][k] if k < len(g["refs"]) else g["refs"][0]) for k in range(6)] for g in groups.values()
        ]
        import sacrebleu

        expected = (
            sacrebleu.metrics.BLEU(tokenize="13a", smooth_method="none", force=True)
            .corpus_score(m_hyps, [[rs[k] for rs in m_refs] for k in range(6)])
            .score
        )
        assert report["scores"][subset]["BLEU"] == pytest.approx(expected, abs=1e-9)
        if subset == "unseen":
            w_h = [generationeval_tokenize(h) for h in m_hyps]
            w_r = [[generationeval_tokenize(r) for r in rs] for rs in m_refs]
            assert report["scores"][subset]["METEOR"] == meteor.meteor(w_h, w_r)
            for i in range(0, len(w_h), 25):
                assert ter.segment_ter(w_h[i], w_r[i]) == _pyter_segment(w_h[i], w_r[i])


def test_dart_cli_official_protocol_on_reference_folder(tmp_path, punkt_model):
    """DART (2021 release sample, first 1,200 inputs): a folder of all-delex-reference{0,1,2}.lex
    files (CRLF), every input once with all its references."""
    n = 1200
    folder = tmp_path / "refs"
    folder.mkdir()
    for k in range(3):
        lines = references._lines(os.path.join(DART, f"all-delex-reference{k}.lex"))[:n]
        (folder / f"all-delex-reference{k}.lex").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    hyps = references._lines(os.path.join(DART, "bart-large_dart.txt"))[:n]
    hyp_path = tmp_path / "hyp.txt"
    hyp_path.write_text("\n".join(hyps) + "\n", encoding="utf-8")
    out = tmp_path / "r.json"
    assert evaluate.main(["dart", str(hyp_path), str(folder), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["counts"]["all"]["segments"] == n and report["not_computed"] == {}
    cols = [references._lines(str(folder / f"all-delex-reference{k}.lex")) for k in range(3)]
    refs = [[c[i] for c in cols if c[i].strip()] for i in range(n)]
    assert report["counts"]["all"]["references"] == sum(map(len, refs))
    assert report["scores"]["all"]["BLEU"] == pytest.approx(bleu.bleu(hyps, refs), abs=1e-12)
    tok_h = [generationeval_tokenize(h) for h in hyps]
    tok_r = [[generationeval_tokenize(r) for r in rs] for rs in refs]
    assert report["scores"]["all"]["TER"] == ter.corpus_ter(tok_h, tok_r)
    for i in range(0, n, 100):
        assert ter.segment_ter(tok_h[i], tok_r[i]) == _pyter_segment(tok_h[i], tok_r[i])
    assert 0 < report["scores"]["all"]["METEOR"] < 1


def test_e2e_edge_cases_equal_pycocoevalcap(tmp_path, monkeypatch):
    """An empty hypothesis, single references, `£` and `é`, files ending with a newline: through
    the command line (plain-text outputs, blank-line separated references), against the official
    scorer's own calls (pycocoevalcap PTBTokenizer, Meteor with the full table, Rouge, Cider) and
    sacrebleu's BLEU; NIST -p against the pymteval port."""
    import sacrebleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from test_metrics import _pymteval_nist

    preds, keyed = references.read_predictions(os.path.join(E2E_OUT, "adapt.tsv"))
    pairs = references.pair(preds, keyed, references.read_references(E2E_REFS))[::15]
    hyps, refs = [text for _, text in pairs], [list(ref.references) for ref, _ in pairs]
    hyps[0] = ""  # an empty hypothesis
    refs[1] = refs[1][:1]  # a single reference (and some MRs have only one)
    hyps[2] = "Café Rouge – a café with prices of more than £30, très cher."
    refs[2] = refs[2] + ["Café Rouge is a café; prices are more than £30."]
    assert any("£" in r for rs in refs for r in rs) and any("é" in h for h in hyps)
    pred_file = tmp_path / "pred.txt"
    pred_file.write_text("\n".join(hyps) + "\n", encoding="utf-8")
    ref_file = tmp_path / "refs.txt"
    ref_file.write_text("\n\n".join("\n".join(rs) for rs in refs) + "\n", encoding="utf-8")
    out = tmp_path / "r.json"
    assert evaluate.main(["e2e", str(pred_file), str(ref_file), "--json", str(out)]) == 0
    got = json.loads(out.read_text())["scores"]["all"]

    # The reference side: pycocoevalcap as the E2E scorer calls it (its JVMs take the default
    # charset: make it UTF-8 whatever the locale, as in the scorer's usual environment).
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Dfile.encoding=UTF-8 -Dsun.stdout.encoding=UTF-8")
    gts = PTBTokenizer().tokenize({i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)})
    res = PTBTokenizer().tokenize({i: [{"caption": h}] for i, h in enumerate(hyps)})
    assert res[0] == [""] and "#" in res[2][0] and "café" in res[2][0]
    assert got["METEOR"] == pytest.approx(Meteor().compute_score(gts, res)[0], abs=1e-12)
    assert got["ROUGE_L"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert got["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)
    width = max(map(len, refs))
    expected = (
        sacrebleu.metrics.BLEU(lowercase=True, tokenize="13a")
        .corpus_score(hyps, [[rs[k] if k < len(rs) else None for rs in refs] for k in range(width)])
        .score
        / 100
    )
    assert got["BLEU"] == pytest.approx(expected, abs=1e-12)
    assert nist.nist(hyps, refs, "python") == pytest.approx(_pymteval_nist(hyps, refs), rel=1e-12)
