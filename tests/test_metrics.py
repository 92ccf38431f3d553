"""Metrics that need no Java: BLEU, NIST, TER, ROUGE_L/CIDEr arithmetic, word tokenization,
readers, protocols, the command line's errors, and the report without Java.

Every number is compared with a reference: the official WebNLG 2017 multi-bleu output, the
official E2E scores, sacrebleu, pyter3, pycocoevalcap, nltk, or a straightforward port.
"""

import collections
import json
import math
import os
import random
import re

import pytest

from lora_nlg.metrics import bleu, cider, evaluate, java, nist, protocol, references, rouge, ter
from lora_nlg.metrics import word_tokenize as wt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIRROR = os.environ.get("NLG_DATA_MIRROR", os.path.join(ROOT, "..", "shared", "data"))
SAMPLES = os.path.join(MIRROR, "eval-samples")
E2E_OUT = os.path.join(SAMPLES, "e2e", "e2e-challenge-primary-outputs")
E2E_REFS = os.path.join(MIRROR, "e2e", "testset_w_refs.csv")
GENEVAL = os.path.join(SAMPLES, "generationeval-sample-en")
WEBNLG_EVAL = os.path.join(SAMPLES, "webnlg2017-official-eval")
DART = os.path.join(SAMPLES, "dart", "reference-2021-08")


def _split(path):
    """Lines as GenerationEval reads them (f.read().split('\\n'))."""
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")


@pytest.fixture(scope="module")
def tgen():
    preds, keyed = references.read_predictions(os.path.join(E2E_OUT, "tgen.tsv"))
    pairs = references.pair(preds, keyed, references.read_references(E2E_REFS))
    return [text for _, text in pairs], [ref.references for ref, _ in pairs]


@pytest.fixture(scope="module")
def geneval():
    hyps = _split(os.path.join(GENEVAL, "hypothesis"))
    cols = [_split(os.path.join(GENEVAL, "references", f"reference{k}")) for k in range(4)]
    return hyps, [[col[i] for col in cols] for i in range(len(hyps))]


# --- BLEU ---------------------------------------------------------------------------------


def _bleu3ref_cases():
    folder = os.path.join(WEBNLG_EVAL, "bleu3ref")
    return sorted(f[len("bleu3ref-") : -len(".txt")] for f in os.listdir(folder))


def multibleu_line(stats):
    """The line multi-bleu(-detok).perl prints, e.g. 'BLEU = 31.06, 54.9/35.7/25.3/18.7 (...)'."""
    ratio = stats.hyp_len / stats.ref_len if stats.ref_len else 0.0
    p = "/".join("%.1f" % x for x in stats.precisions)
    return (
        f"BLEU = {stats.score:.2f}, {p} (BP={stats.bp:.3f}, ratio={ratio:.3f}, "
        f"hyp_len={stats.hyp_len}, ref_len={stats.ref_len})"
    )


@pytest.mark.parametrize("name", _bleu3ref_cases())
def test_webnlg2017_official_bleu_of_every_team(name):
    """multi-bleu.perl -lc against gold reference0..2: the official line, every number in it."""
    subset = name.rsplit("_", 1)[1]
    with open(os.path.join(WEBNLG_EVAL, "bleu3ref", f"bleu3ref-{name}.txt")) as f:
        official = f.readline().strip()
    hyps = references._lines(os.path.join(WEBNLG_EVAL, "teams", f"{name}.txt"))
    cols = [
        references._lines(os.path.join(WEBNLG_EVAL, "references", f"gold-{subset}-reference{k}.lex")) for k in range(3)
    ]
    refs = [[col[i] for col in cols] for i in range(len(hyps))]
    assert multibleu_line(bleu.bleu_stats(hyps, refs, "multi-bleu-lc")) == official


def test_webnlg2017_adapt_numbers():
    """The numbers quoted in the issue: ADAPT 31.06 / 60.59 / 10.53 (all / seen / unseen)."""
    got = []
    for subset in ("all", "old", "new"):
        hyps = references._lines(os.path.join(WEBNLG_EVAL, "teams", f"ADAPT_Centre_{subset}-cat.txt"))
        cols = [
            references._lines(os.path.join(WEBNLG_EVAL, "references", f"gold-{subset}-cat-reference{k}.lex"))
            for k in range(3)
        ]
        got.append("%.2f" % bleu.bleu(hyps, [[c[i] for c in cols] for i in range(len(hyps))], "multi-bleu-lc"))
    assert got == ["31.06", "60.59", "10.53"]


def test_e2e_bleu_and_nist_official_tgen(tgen):
    hyps, refs = tgen
    assert "%.4f" % bleu.bleu(hyps, refs, "mteval") == "0.6593"
    assert "%.4f" % nist.nist(hyps, refs, "official") == "8.6094"


def test_bleu_equals_sacrebleu(tgen, geneval):
    """The counting here equals sacrebleu's BLEU with the settings METRICS.md names."""
    import sacrebleu

    hyps, refs = tgen
    width = max(map(len, refs))
    lower = [[rs[k].lower() if k < len(rs) else None for rs in refs] for k in range(width)]
    expected = (
        sacrebleu.metrics.BLEU(lowercase=True, tokenize="13a", smooth_method="none")
        .corpus_score([h.lower() for h in hyps], lower)
        .score
        / 100
    )
    assert bleu.bleu(hyps, refs, "mteval") == pytest.approx(expected, abs=1e-12)
    hyps, refs = geneval  # empty references count as length-0 references (multi-bleu-detok)
    streams = [[rs[k] for rs in refs] for k in range(4)]
    expected = sacrebleu.metrics.BLEU(tokenize="13a", smooth_method="none", force=True).corpus_score(hyps, streams)
    assert bleu.bleu(hyps, refs, "multi-bleu-detok") == pytest.approx(expected.score, abs=1e-9)


def test_bleu_edge_cases():
    # an empty hypothesis, a single reference, £ and é, ASCII-only lowercasing in mteval
    hyps = ["", "The Café costs £20.", "Ébène is nice"]
    refs = [["a b c"], ["the café costs £20 ."], ["Ébène is nice", None, ""]]
    stats = bleu.corpus_statistics(hyps, refs, "mteval")
    assert stats[0][:2] == (0, 3)
    assert bleu.tokenize("The Café costs £20.", "mteval") == ["the", "café", "costs", "£20", "."]
    assert bleu.tokenize("Ébène", "mteval") == ["Ébène"]  # Perl tr/A-Z/a-z/ leaves É
    assert stats[2][2] == [3, 2, 1, 0]
    assert bleu.bleu(["a b c d"], [["a b c d"]], "multi-bleu") == pytest.approx(100.0)
    assert bleu.bleu(["a b c"], [["a b c"]], "multi-bleu") == 0.0  # no 4-gram: multi-bleu gives 0
    with pytest.raises(ValueError, match="segment 0 has no reference"):
        bleu.bleu(["a"], [[None, ""]], "mteval")


# --- NIST ---------------------------------------------------------------------------------


def _pymteval_tokenize(sent):
    """e2e-metrics metrics/pymteval.py NGramScore.tokenize, line by line."""
    sent = re.sub(r"<skipped>", r"", sent)
    sent = re.sub(r"-\n", r"", sent)
    sent = re.sub(r"\n", r" ", sent)
    sent = re.sub(r"&quot;", r'"', sent)
    sent = re.sub(r"&amp;", r"&", sent)
    sent = re.sub(r"&lt;", r"<", sent)
    sent = re.sub(r"&gt;", r">", sent)
    sent = " " + sent + " "
    sent = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", sent)
    sent = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", sent)
    sent = re.sub(r"([\.,])([^0-9])", r" \1 \2", sent)
    sent = re.sub(r"([0-9])(-)", r"\1 \2 ", sent)
    sent = re.sub(r"\s+", r" ", sent)
    return sent.strip().split(" ")


def _pymteval_counts(n, sents):
    """NGramScore.get_ngram_counts (case-insensitive): max count of each n-gram in any sentence."""
    merged = {}
    for sent in sents:
        counts = collections.Counter(zip(*[[t.lower() for t in sent[i:]] for i in range(n)]))
        for g, k in counts.items():
            merged[g] = max(merged.get(g, 0), k)
    return merged


def _pymteval_nist(hyps, refs):
    """Straightforward port of e2e-metrics metrics/pymteval.py NISTScore (the scorer's -p)."""
    ref_ngrams = [collections.defaultdict(int) for _ in range(6)]
    hit_ngrams, cand_lens, avg_ref_len = [[] for _ in range(5)], [[] for _ in range(5)], 0.0
    for hyp, rs in zip(hyps, refs):
        h = _pymteval_tokenize(hyp)
        rr = [_pymteval_tokenize(r) for r in rs]
        for n in range(5):
            cand_lens[n].append(len(h) - n)  # sic: negative for outputs shorter than n
            merged = _pymteval_counts(n + 1, rr)
            pred = _pymteval_counts(n + 1, [h])
            hit_ngrams[n].append({g: min(k, merged.get(g, 0)) for g, k in pred.items() if merged.get(g, 0)})
            for r in rr:
                for g in zip(*[[t.lower() for t in r[i:]] for i in range(n + 1)]):
                    ref_ngrams[n + 1][g] += 1
        total = sum(len(r) for r in rr)
        ref_ngrams[0][()] += total
        avg_ref_len += total / float(len(rr))

    def info(g):
        return math.log(ref_ngrams[len(g) - 1][g[:-1]] / float(ref_ngrams[len(g)][g]), 2)

    score = sum(
        sum(info(g) * k for hits in hit_ngrams[n] for g, k in hits.items()) / sum(cand_lens[n]) for n in range(5)
    )
    ratio = sum(cand_lens[0]) / avg_ref_len
    beta = -math.log(0.5) / math.log(1.5) ** 2
    return score * (1 if ratio >= 1 else math.exp(-beta * math.log(ratio) ** 2))


def _pymteval_bleu(hyps, refs):
    """Straightforward port of e2e-metrics metrics/pymteval.py BLEUScore (the scorer's -p)."""
    ref_len, cand_lens, hits = 0, [0] * 4, [0] * 4
    for hyp, rs in zip(hyps, refs):
        h = _pymteval_tokenize(hyp)
        rr = [_pymteval_tokenize(r) for r in rs]
        for i in range(4):
            merged = _pymteval_counts(i + 1, rr)
            hits[i] += sum(min(merged.get(g, 0), k) for g, k in _pymteval_counts(i + 1, [h]).items())
            cand_lens[i] += len(h) - i
        ref_len += len(min(rr, key=lambda r: (abs(len(r) - len(h)), len(r))))
    bp = 1.0
    if cand_lens[0] <= ref_len:
        bp = math.exp(1.0 - ref_len / (float(cand_lens[0]) if cand_lens[0] else 1e-5))
    log_sum = sum(math.log(max(k, 1e-15) / max(n, 1e-9)) for k, n in zip(hits, cand_lens))
    return bp * math.exp(log_sum / 4)


# An empty output, outputs of 1 to 3 tokens (fewer n-grams than n), a single reference, an
# empty reference, `£`, `é` and `É` (Python lowercases it, Perl does not), `&amp;`.
PYMTEVAL_EDGE = (
    ["", "Café", "the Café Rouge", "Ébène is near £20 &amp; up.", "It is a pub in the city centre."],
    [
        ["Café Rouge is cheap.", "A café."],
        ["café"],
        ["The café Rouge is here.", ""],
        ["ébène is near £20 & up ."],
        ["It is a pub.", "It is a pub in the city centre near the river."],
    ],
)


@pytest.mark.parametrize("case", ["adapt", "edge"])
def test_pymteval_variants_equal_pymteval(case):
    """`-p`: NIST and BLEU equal the scorer's Python implementation (ported above)."""
    if case == "adapt":
        preds, keyed = references.read_predictions(os.path.join(E2E_OUT, "adapt.tsv"))
        pairs = references.pair(preds, keyed, references.read_references(E2E_REFS))
        hyps, refs = [t for _, t in pairs], [r.references for r, _ in pairs]
        hyps[7], hyps[8] = "", "Blue Spice"  # an empty output and one of two tokens
    else:
        hyps, refs = PYMTEVAL_EDGE
    assert nist.nist(hyps, refs, "python") == pytest.approx(_pymteval_nist(hyps, refs), rel=1e-12)
    assert bleu.bleu(hyps, refs, "pymteval") == pytest.approx(_pymteval_bleu(hyps, refs), rel=1e-12)


def test_pymteval_tokenizer_is_13a_but_for_empty_text(geneval):
    texts = _sample_texts(geneval)[::7] + [t for rs in PYMTEVAL_EDGE[1] for t in rs]
    for text in texts:
        assert bleu.pymteval_tokenize(text) == _pymteval_tokenize(text), text
        assert bleu.pymteval_tokenize(text) == (bleu.TOKENIZERS["13a"](text) or [""]), text


def test_mteval_and_pymteval_differ_only_on_short_outputs(tgen):
    """Without outputs shorter than 4 tokens, -p BLEU is the Perl BLEU (and NIST differs only by
    its length penalty: equal when outputs are longer than L); the edge cases above tell them apart."""
    hyps, refs = tgen
    assert bleu.bleu(hyps, refs, "pymteval") == bleu.bleu(hyps, refs, "mteval")
    long_hyps = [h + " and so on and so on" for h in hyps]  # no length penalty in either variant
    assert nist.nist(long_hyps, refs, "python") == pytest.approx(nist.nist(long_hyps, refs, "official"), rel=1e-12)
    hyps, refs = PYMTEVAL_EDGE
    assert bleu.bleu(hyps, refs, "pymteval") > bleu.bleu(hyps, refs, "mteval") + 0.3
    assert nist.nist(hyps, refs, "python") > nist.nist(hyps, refs, "official") + 1


def test_nist_edge_cases():
    assert nist.nist([""], [["a b"]]) == 0.0
    one = nist.nist(["the café costs £20 ."], [["The Café costs £20."]])
    assert one > 0 and math.isfinite(one)
    with pytest.raises(ValueError):
        nist.nist([], [])


# --- TER ----------------------------------------------------------------------------------


def _pyter_segment(hyp, refs):
    """GenerationEval ter_score's inner loop, with pyter3."""
    import pyter

    scores = []
    for r in refs:
        if len(r) == 0:
            scores.append(1)
            continue
        try:
            scores.append(pyter.ter(hyp.split(), r.split()))
        except Exception:
            scores.append(1)
    return min(scores)


def test_ter_equals_pyter3_random():
    import pyter

    rng = random.Random(0)
    vocab = "a b c d the , . of".split()
    for _ in range(800):
        h = [rng.choice(vocab) for _ in range(rng.randint(0, 18))]
        r = [rng.choice(vocab) for _ in range(rng.randint(1, 18))]
        assert ter.ter(h, r) == pyter.ter(h, r), (h, r)


def test_ter_equals_pyter3_on_samples(geneval):
    """Every 25th GenerationEval segment (raw, split on spaces) and every 150th DART segment;
    bench/eval_bench.py compares the whole sets."""
    hyps, refs = geneval
    for i in range(0, len(hyps), 25):
        assert ter.segment_ter(hyps[i], refs[i]) == _pyter_segment(hyps[i], refs[i]), i
    dart_h = references._lines(os.path.join(DART, "bart-large_dart.txt"))
    cols = [references._lines(os.path.join(DART, f"all-delex-reference{k}.lex")) for k in range(3)]
    for i in range(0, len(dart_h), 150):
        rs = [c[i] for c in cols]
        assert ter.segment_ter(dart_h[i], rs) == _pyter_segment(dart_h[i], rs), i


def test_ter_edge_cases():
    assert ter.segment_ter("", ["a b"]) == 1.0  # empty hypothesis: all deletions
    assert ter.segment_ter("a b", ["", "a b"]) == 0.0  # empty reference scores 1 (GenerationEval)
    assert ter.segment_ter("a b", ["  "]) == 1  # blank reference: pyter raises, scores 1
    assert ter.corpus_ter(["café £20", "x"], [["café £20"], ["y"]]) == 0.5
    with pytest.raises(ZeroDivisionError):
        ter.ter(["a"], [])


# --- ROUGE_L and CIDEr arithmetic (tokens given; the PTB tokenizer is tested with Java) ----


def test_lcs_equals_pycocoevalcap():
    from pycocoevalcap.rouge.rouge import my_lcs

    rng = random.Random(1)
    for _ in range(2000):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 25))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 25))]
        assert rouge.lcs_length(a, b) == my_lcs(a, b)


def _lower_split_pairs(tgen):
    hyps, refs = tgen
    norm = lambda s: " ".join(re.findall(r"\w+|[^\w\s]", s.lower()))  # noqa: E731 (any tokens)
    return [norm(h) for h in hyps], [[norm(r) for r in rs] for rs in refs]


def test_rouge_and_cider_equal_pycocoevalcap(tgen):
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    hyps, refs = _lower_split_pairs(tgen)
    hyps[3] = ""  # an empty hypothesis
    refs[5] = refs[5][:1]  # a single reference
    gts = {i: rs for i, rs in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    assert rouge.rouge_l(hyps, refs) == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert cider.cider_d(hyps, refs) == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)


# --- word tokenization (GenerationEval's nltk.word_tokenize) ------------------------------


def _sample_texts(geneval):
    hyps, refs = geneval
    return hyps + [r for rs in refs for r in rs]


def test_tokenizer_without_punkt_is_exact_when_splitting_cannot_matter(geneval):
    """For every text the Punkt model is not needed for, tokenizing each piece between candidate
    sentence boundaries (any subset of them) gives the tokens of the whole text."""
    from nltk.tokenize.destructive import NLTKWordTokenizer

    tb = NLTKWordTokenizer()
    rng = random.Random(2)
    texts = [t for t in _sample_texts(geneval) if t] + [protocol.microsoft_tokenize(t) for t in _sample_texts(geneval)]
    checked = 0
    for text in texts:
        if wt.needs_sentence_splitter(text):
            continue
        cuts = [m.end() for m in re.finditer(r"[.?!]+[\"')\]]*(?=\s)", text)]
        chosen = sorted(c for c in cuts if rng.random() < 0.7)
        pieces = [text[a:b].strip() for a, b in zip([0] + chosen, chosen + [len(text)])]
        split = [t for p in pieces if p for t in tb.tokenize(p)]
        assert split == wt.word_tokenize(text), text
        checked += len(chosen) > 0
    assert checked > 500


def test_paper_protocol_text_never_needs_punkt(geneval):
    assert not any(wt.needs_sentence_splitter(protocol.microsoft_tokenize(t)) for t in _sample_texts(geneval))


def test_word_tokenize_equals_nltk(geneval, punkt_model, monkeypatch):
    import nltk

    monkeypatch.setattr(
        nltk.data, "path", [os.path.dirname(os.path.dirname(os.path.dirname(punkt_model)))] + list(nltk.data.path)
    )
    nltk.tokenize._get_punkt_tokenizer.cache_clear()
    texts = _sample_texts(geneval)
    needed = [t for t in texts if wt.needs_sentence_splitter(t)]
    assert len(needed) > 1000
    for text in texts[::3] + needed:
        assert wt.word_tokenize(text) == nltk.word_tokenize(text), text


# --- readers ------------------------------------------------------------------------------


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_read_e2e_csv_groups_by_mr():
    refs = references.read_references(E2E_REFS)
    assert len(refs) == 630 and sum(len(r.references) for r in refs) == 4693
    assert refs[0].mr.startswith("name[")


def test_read_reference_folder_and_blocks(tmp_path):
    refs = references.read_references(os.path.join(GENEVAL, "references"))
    assert len(refs) == 1862 and all(r.references and all(r.references) for r in refs)
    d = tmp_path / "refs"
    d.mkdir()
    _write(d / "reference0", "a\nb\n")
    _write(d / "reference1", "a2\n\n")
    assert [r.references for r in references.read_references(str(d))] == [["a", "a2"], ["b"]]
    blocks = _write(tmp_path / "multi.txt", "x1\nx2\n\n\ny1\n")
    assert [r.references for r in references.read_references(blocks)] == [["x1", "x2"], ["y1"]]
    lex = references.read_references(DART)
    assert len(lex) == 5097


def test_read_predictions_text_trailing_newline(tmp_path):
    assert references.read_predictions(_write(tmp_path / "p.txt", "a\nb\n"))[0] == [(0, "a"), (1, "b")]
    assert references.read_predictions(_write(tmp_path / "q.txt", "a\r\n\nb"))[0] == [(0, "a"), (1, ""), (2, "b")]


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"id": 0, "text": "a"}\nnot json\n', r"p\.jsonl:2: malformed JSON"),
        ('{"id": 0}\n', r":1: field 'text' is missing"),
        ('{"id": "0", "text": "a"}\n', r":1: field 'id' must be an integer, got str"),
        ('{"id": 0, "text": "a"}\n{"id": 0, "text": "b"}\n', r":2: id 0 already on line 1"),
    ],
)
def test_bad_prediction_files(tmp_path, content, message):
    with pytest.raises(references.FormatError, match=message):
        references.read_predictions(_write(tmp_path / "p.jsonl", content))


def _refs_jsonl(tmp_path, rows):
    return _write(tmp_path / "test_unique.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def test_pairing_names_missing_and_extra(tmp_path):
    refs = references.read_references(
        _refs_jsonl(
            tmp_path, [{"id": i, "context": f"c{i}", "context_ids": [], "references": [f"r{i}"]} for i in range(4)]
        )
    )
    preds = [(0, "a"), (1, "b"), (7, "c")]
    with pytest.raises(references.FormatError, match=r"no output for 2 id\(s\).*2, 3; 1 output id\(s\) not in .*: 7"):
        references.pair(preds, "id", refs, "p.jsonl", "test_unique.jsonl")
    with pytest.raises(references.FormatError, match="3 outputs .* has 4 inputs"):
        references.pair([(0, "a"), (1, "b"), (2, "c")], "order", refs, "p.txt", "refs")
    with pytest.raises(references.FormatError, match="field 'references' must be a non-empty list"):
        references.read_references(_refs_jsonl(tmp_path, [{"id": 0, "references": []}]))


def test_tsv_outputs_pair_by_mr(tmp_path):
    refs = references.read_references(E2E_REFS)
    tsv = _write(tmp_path / "out.tsv", 'MR\toutput\n"%s"\thello\n' % refs[3].mr)
    preds, keyed = references.read_predictions(tsv)
    with pytest.raises(references.FormatError, match="no output for 629 mr"):
        references.pair(preds, keyed, refs)


def _reference_folder(tmp_path, files):
    folder = tmp_path / "refs"
    folder.mkdir()
    for name, text in files.items():
        _write(folder / name, text)
    return str(folder)


@pytest.mark.parametrize(
    "files,message",
    [
        ({"reference0": "a\nb\n", "reference1": "c\nd\ne\n"}, r"reference1: 3 lines, .*reference0 has 2"),
        ({"reference0": "a\n", "reference2": "b\n"}, r"numbered 0\.\.1, found \[0, 2\]"),
        ({"reference0": "a\n\nc\n", "reference1": "a2\n  \nc2\n"}, r"input on line 2 has no reference in any file"),
        ({"notes.txt": "a\n"}, r"expected one set of files .*found none"),
        (
            {"x-reference0.lex": "a\n", "y-reference0.lex": "a\n"},
            r"found \['x-reference\*\.lex', 'y-reference\*\.lex'\]",
        ),
    ],
)
def test_bad_reference_folders(tmp_path, files, message):
    with pytest.raises(references.FormatError, match=message):
        references.read_references(_reference_folder(tmp_path, files))


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("refs.csv", "mr,text\nx,y\n", r"refs\.csv:1: expected one ref column in the header, got \['mr', 'text'\]"),
        ("refs.csv", "mr,ref\nx,y\nz\n", r"refs\.csv:3: 1 fields, the header has 2"),
        ("test_unique.jsonl", '{"id": 0, "refs": ["a"]}\n', r":1: missing field 'references'"),
        (
            "test_unique.jsonl",
            '{"id": 0, "references": ["a", 3]}\n',
            r":1: field 'references' must be a non-empty list of strings",
        ),
        (
            "test_unique.jsonl",
            '{"id": 0, "references": ["a"], "seen": "yes"}\n',
            r":1: field 'seen' must be true or false",
        ),
        (
            "test_unique.jsonl",
            '{"id": 0, "references": ["a"]}\n{"id": 0, "references": ["b"]}\n',
            r":2: id 0 already on line 1",
        ),
        ("refs.txt", "\n\n", r"refs\.txt: no references"),
    ],
)
def test_bad_reference_files(tmp_path, name, content, message):
    with pytest.raises(references.FormatError, match=message):
        references.read_references(_write(tmp_path / name, content))


def test_bad_prediction_inputs_name_the_problem(tmp_path):
    refs = references.read_references(E2E_REFS)
    dup = _write(tmp_path / "dup.tsv", 'mr\toutput\n"%s"\ta\n"%s"\tb\n' % (refs[0].mr, refs[0].mr))
    with pytest.raises(references.FormatError, match=r"dup\.tsv: MRs given more than once: 'name\[Blue Spice\]"):
        references.pair(*references.read_predictions(dup), refs, dup, "testset_w_refs.csv")
    rows = "".join('"%s"\tx\n' % r.mr for r in refs)
    extra = _write(tmp_path / "extra.tsv", "mr\toutput\n" + rows + '"name[Nowhere]"\tx\n')
    with pytest.raises(references.FormatError, match=r"1 output mr\(s\) not in testset_w_refs\.csv: 'name\[Nowhere\]'"):
        references.pair(*references.read_predictions(extra), refs, extra, "testset_w_refs.csv")
    blocks = references.read_references(_write(tmp_path / "refs.txt", "a\n\nb\n"))
    with pytest.raises(
        references.FormatError, match=r"extra\.tsv: outputs keyed by MR need references keyed by MR .*, not refs\.txt"
    ):
        references.pair(*references.read_predictions(extra), blocks, extra, "refs.txt")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(references.FormatError, match=r"latin1\.txt: not UTF-8"):
        references.read_predictions(str(latin1))
    with pytest.raises(references.FormatError, match=r":1: expected a JSON object"):
        references.read_predictions(_write(tmp_path / "list.jsonl", "[1, 2]\n"))


# --- protocols ----------------------------------------------------------------------------


def test_paper_protocol_groups_by_context_and_keeps_six(tmp_path):
    rows = [
        {"id": 0, "context": "same", "references": [f"R{k}." for k in range(4)], "seen": True},
        {"id": 1, "context": "same", "references": ["R4.", "R5.", "R6!"], "seen": True},
        {"id": 2, "context": "other", "references": ["Hello, World."], "seen": False},
    ]
    refs = references.read_references(_refs_jsonl(tmp_path, rows))
    pairs = list(zip(refs, ["First.", "Second one.", "Bye<|endoftext|>junk"]))
    paper = protocol.prepare(pairs, "webnlg", "paper")
    assert paper.hyps[:2] == ["second one .", "bye"]
    assert paper.refs[0] == ["r0 .", "r1 .", "r2 .", "r3 .", "r4 .", "r5 ."]
    assert paper.stats["all"] == {"inputs": 3, "segments": 2, "references": 7, "references_dropped": 1}
    assert set(paper.subsets) == {"all", "seen", "unseen"}
    official = protocol.prepare(pairs, "webnlg", "official")
    assert official.hyps[:3] == ["First.", "Second one.", "Bye<|endoftext|>junk"]
    assert official.stats["all"]["references"] == 8 and official.stats["seen"]["segments"] == 2


# --- command line -------------------------------------------------------------------------


def test_cli_errors_name_the_problem(tmp_path, capsys):
    refs = _refs_jsonl(tmp_path, [{"id": 0, "references": ["a"]}, {"id": 1, "references": ["b"]}])
    preds = _write(tmp_path / "p.txt", "only one\n")
    assert evaluate.main(["dart", preds, refs]) == 2
    assert "p.txt: 1 outputs (one per line) but" in capsys.readouterr().err
    assert evaluate.main(["dart", preds, str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    assert evaluate.main(["e2e", preds, "--data-dir", str(tmp_path)]) == 2
    assert "test_unique.jsonl: no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["e2e", preds, "--protocol", "nonsense"])


def test_without_java_reports_only_what_needs_no_java(tmp_path, monkeypatch, capsys):
    """No `java`: a clear message, BLEU and NIST (E2E) / BLEU and TER (DART), never an
    approximation under the METEOR name."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    java.java_version.cache_clear()
    try:
        refs = _refs_jsonl(
            tmp_path,
            [
                {"id": 0, "references": ["The Café costs £20.", "It is nice."]},
                {"id": 1, "references": ["A single reference."]},
            ],
        )
        preds = _write(tmp_path / "p.jsonl", '{"id": 1, "text": ""}\n{"id": 0, "text": "The café costs £20."}\n')
        out = str(tmp_path / "r.json")
        assert evaluate.main(["e2e", preds, refs, "--json", out]) == 0
        printed = capsys.readouterr().out
        assert "METEOR NOT COMPUTED" in printed and "Java was not found" in printed
        report = json.load(open(out))
        assert set(report["scores"]["all"]) == {"BLEU", "NIST"}
        assert set(report["not_computed"]) == {"METEOR", "ROUGE_L", "CIDEr"}
        assert report["tools"]["java"] is None
        assert report["scores"]["all"]["BLEU"] == bleu.bleu(
            ["The café costs £20.", ""], [["The Café costs £20.", "It is nice."], ["A single reference."]], "mteval"
        )
        assert evaluate.main(["e2e", preds, refs, "--protocol", "paper", "--json", out]) == 0
        report = json.load(open(out))  # the scorer's -p: pymteval BLEU and NIST
        hyps, refs_ = ["The café costs £20.", ""], [["The Café costs £20.", "It is nice."], ["A single reference."]]
        assert report["scores"]["all"]["BLEU"] == pytest.approx(_pymteval_bleu(hyps, refs_), rel=1e-12)
        with pytest.raises(ZeroDivisionError):  # 4-gram total (5 - 3) + (1 - 3) = 0: pymteval fails, we divide by 1
            _pymteval_nist(hyps, refs_)
        assert math.isfinite(report["scores"]["all"]["NIST"])
        assert "pymteval" in report["metric_definitions"]["BLEU"] and "-p" in report["metric_definitions"]["NIST"]
        assert evaluate.main(["dart", preds, refs, "--json", out]) == 0
        report = json.load(open(out))
        assert set(report["scores"]["all"]) == {"BLEU", "TER"} and "METEOR" in report["not_computed"]
    finally:
        java.java_version.cache_clear()


def test_paper_protocol_on_dart_test_merges_as_microsoft():
    """METRICS.md: microsoft/LoRA's pipeline scores 4,159 of DART test's 5,097 inputs and drops
    576 references (contexts 'subject : property : object | ...', property lowercased)."""
    import lzma

    with lzma.open(os.path.join(MIRROR, "dart", "dart-v1.1.1-full-test.json.xz"), "rt", encoding="utf-8") as f:
        entries = json.load(f)
    refs = [
        references.Reference(
            id=i,
            references=[a["text"] for a in e["annotations"]],
            context=" | ".join(f"{s} : {p.lower()} : {o}" for s, p, o in e["tripleset"]),
        )
        for i, e in enumerate(entries)
    ]
    stats = protocol.prepare([(r, "x") for r in refs], "dart", "paper").stats["all"]
    assert (stats["inputs"], stats["segments"], stats["references_dropped"]) == (5097, 4159, 576)
    assert protocol.prepare([(r, "x") for r in refs], "dart", "official").stats["all"]["segments"] == 5097
