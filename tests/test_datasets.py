"""Datasets: readers of the official and upstream's formats, and create_datasets' outputs.

Runs on the real raw files of the mirror (`../shared/data` or NLG_DATA_MIRROR). Everything is
prepared once per test process (`prepared`, about 15 s; shared with test_tokenizer.py) and the
tests read those files. The source /
download / up-to-date / atomic-write tests use a tiny mirror built in a temporary folder.
"""

import copy
import csv
import glob
import hashlib
import json
import lzma
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import upstream_files as U

from lora_nlg.catalog import SEEN_CATEGORIES
from lora_nlg.data import files, prepare
from lora_nlg.data import raw as D
from lora_nlg.data.sources import SOURCES_JSON, SourceError, fetch, load_sources
from lora_nlg.data.tokenizer import GPT2Tokenizer
from lora_nlg.errors import FormatError

REPO = Path(__file__).resolve().parents[1]
OUT = {"e2e": "e2e", "webnlg": "webnlg_challenge_2017", "dart": "dart"}


@pytest.fixture(scope="session")
def tok(prepared):
    return GPT2Tokenizer.from_dir(prepared / "gpt2-vocab")


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------------------------
# Counts (docs REFERENCE.md, shared/data/README.md)

COUNTS = {  # dataset, split -> (pairs, unique inputs)
    ("e2e", "train"): (42061, 4862),
    ("e2e", "valid"): (4672, 547),
    ("e2e", "test"): (4693, 630),
    # WebNLG inputs are entries with at least one `good` lexicalisation: 6,940 train entries, 5 of
    # them only `toFix`; 872 dev entries, 1 of them only `toFix` (checked below).
    ("webnlg", "train"): (18025, 6935),
    ("webnlg", "valid"): (2258, 871),
    ("webnlg", "test"): (4928, 1862),
    ("dart", "valid"): (6980, 2768),
    # 12,552 annotations, one of them empty (entry 115): dropped with a warning.
    ("dart", "test"): (12551, 5097),
}


@pytest.mark.parametrize("name,split", sorted(COUNTS))
def test_counts(prepared, name, split):
    n_pairs, n_inputs = COUNTS[name, split]
    folder = prepared / OUT[name]
    formatted = lines(folder / f"{split}_formatted.jsonl")
    encoded = lines(folder / f"{split}.jsonl")
    assert len(formatted) == len(encoded) == n_pairs
    assert len({(p["context"]) for p in formatted}) <= n_inputs
    if split in ("valid", "test"):
        unique = lines(folder / f"{split}_unique.jsonl")
        assert len(unique) == n_inputs
        assert [u["id"] for u in unique] == list(range(n_inputs))
        assert sum(len(u["references"]) for u in unique) == n_pairs


def test_e2e_test_has_630_inputs_and_4693_references(prepared):
    unique = lines(prepared / "e2e" / "test_unique.jsonl")
    assert (len(unique), sum(len(u["references"]) for u in unique)) == (630, 4693)


def test_webnlg_seen_unseen(prepared):
    unique = lines(prepared / "webnlg_challenge_2017" / "test_unique.jsonl")
    seen = [u for u in unique if u["seen"]]
    unseen = [u for u in unique if not u["seen"]]
    assert (len(seen), len(unseen)) == (971, 891)
    assert (sum(len(u["references"]) for u in seen), sum(len(u["references"]) for u in unseen)) == (2495, 2433)
    assert {u["category"] for u in seen} == SEEN_CATEGORIES
    assert {u["category"] for u in unseen} == {
        "Artist",
        "Athlete",
        "CelestialBody",
        "MeanOfTransportation",
        "Politician",
    }
    formatted = lines(prepared / "webnlg_challenge_2017" / "test_formatted.jsonl")
    assert sum(f["cate"] for f in formatted) == 2495


def test_webnlg_entries_without_good_lexicalisation(mirror):
    """The XML has 6,940 train and 872 dev entries; those with only `toFix` texts are no input."""
    for split, n_entries, without in (("train", 6940, 5), ("dev", 872, 1)):
        entries = [
            e
            for f in sorted(glob.glob(str(mirror / f"webnlg_challenge_2017/{split}/*/*.xml")))
            for e in ET.parse(f).getroot().iter("entry")
        ]
        assert len(entries) == n_entries
        assert sum(not any(lex.get("comment") == "good" for lex in e.iter("lex")) for e in entries) == without


def test_dart_raw_annotation_counts(mirror):
    for name, n_sets, n_annotations in (
        ("dart-v1.1.1-full-dev.json", 2768, 6980),
        ("dart-v1.1.1-full-test.json.xz", 5097, 12552),
    ):
        data = json.loads(D.read_text(mirror / "dart" / name))
        assert (len(data), sum(len(e["annotations"]) for e in data)) == (n_sets, n_annotations)
    pairs = D.read_dart_json(mirror / "dart/dart-v1.1.1-full-test.json.xz", empty_references="drop")
    assert len(pairs.dropped) == 1 and pairs.dropped[0].endswith("dart-v1.1.1-full-test.json.xz entry 115 annotation 1")


# ----------------------------------------------------------------------------------------------
# First and last example of each split, string for string

FIRST_LAST = {
    ("e2e", "train"): (
        (
            "name : The Vaults | Type : pub | price : more than £ 30 | customer rating : 5 out of 5 | near : Café Adriatic",
            "The Vaults pub near Café Adriatic has a 5 star rating.  Prices start at £30.",
        ),
        (
            "name : Aromi | Type : restaurant | food : English | area : city centre",
            "Aromi is an English restaurant in the city centre.",
        ),
    ),
    ("e2e", "valid"): (
        (
            "name : Alimentum | area : city centre | family friendly : no",
            "There is a place in the city centre, Alimentum, that is not family-friendly.",
        ),
        (
            "name : Wildwood | Type : coffee shop | food : English | price : moderate | customer rating : 3 out of 5 | near : Ranch",
            "Wildwood is a moderately priced English coffee shop located near the Ranch. It has been rated 3 out of 5.",
        ),
    ),
    ("e2e", "test"): (
        (
            "name : Blue Spice | Type : coffee shop | area : city centre",
            "A coffee shop in the city centre area called Blue Spice.",
        ),
        ("name : Zizzi | Type : pub | near : The Sorrento", "There is a pub  called Zizzi located near The Sorrento."),
    ),
    ("webnlg", "train"): (
        ('Aarhus_Airport : cityServed : "Aarhus, Denmark"', "The Aarhus is the airport of Aarhus, Denmark."),
        (
            "Visvesvaraya_Technological_University : city : Belgaum | Acharya_Institute_of_Technology : established : 2000"
            ' | Acharya_Institute_of_Technology : motto : "Nurturing Excellence" | Acharya_Institute_of_Technology : state'
            ' : Karnataka | Acharya_Institute_of_Technology : country : "India" | Acharya_Institute_of_Technology : campus'
            ' : "In Soldevanahalli, Acharya Dr. Sarvapalli Radhakrishnan Road, Hessarghatta Main Road, Bangalore – 560090."'
            " | Acharya_Institute_of_Technology : affiliation : Visvesvaraya_Technological_University",
            'Acharya Institute of Technology (motto: "Nurturing Excellence") was established in 2000 and is located at'
            " Soldevanahalli, Acharya Dr. Sarvapalli Radhakrishnan Road, Hessarghatta Main Road, Bangalore – 560090,"
            " Karnataka, India. The Institute is affiliated with Visvesvaraya Technological University of Belgaum.",
        ),
    ),
    ("webnlg", "valid"): (
        ("Aarhus : leaderName : Jacob_Bundsgaard", "The leader of Aarhus is Jacob Bundsgaard."),
        (
            "Visvesvaraya_Technological_University : city : Belgaum | Acharya_Institute_of_Technology : director :"
            ' "Dr. G. P. Prabhukumar" | Acharya_Institute_of_Technology : established : 2000 |'
            ' Acharya_Institute_of_Technology : state : Karnataka | Acharya_Institute_of_Technology : country : "India" |'
            ' Acharya_Institute_of_Technology : campus : "In Soldevanahalli, Acharya Dr. Sarvapalli Radhakrishnan Road,'
            ' Hessarghatta Main Road, Bangalore – 560090." | Acharya_Institute_of_Technology : affiliation :'
            " Visvesvaraya_Technological_University",
            "Acharya Institute of Technology is affiliated with Visvesvaraya Technological University which is in"
            " Belgium. The institute itself is in India's Karnataka state and its full address is In Soldevanahalli,"
            " Acharya Dr. Sarvapalli Radhakrishnan Road, Hessarghatta Main Road, Bangalore – 560090. It was created in"
            " 2000 and its director is Dr. G. P. Prabhukumar.",
        ),
    ),
    ("webnlg", "test"): (
        (
            "Abilene_Regional_Airport : cityServed : Abilene,_Texas",
            "Abilene, Texas is served by the Abilene regional airport.",
        ),
        (
            "Uruguay : leaderName : Raúl_Fernando_Sendic_Rodríguez | Alfredo_Zitarrosa : deathPlace : Montevideo |"
            " Montevideo : country : Uruguay | Montevideo : leaderName : Daniel_Martínez_(politician) | Uruguay :"
            " language : Spanish_language",
            "Raúl Fernando Sendic Rodríguez is the leader of Spanish speaking, Uruguay. Daniel Martinez is the leader"
            " of Montevideo, the final resting place of Alfredo Zitarrosa.",
        ),
    ),
    ("dart", "valid"): (
        (
            "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina",
            "A school from Mars Hill, North Carolina, joined in 1973.",
        ),
        (
            "Wildwood : eattype : coffee shop | Wildwood : pricerange : moderate | Wildwood : near : Ranch",
            "The Wildwood is an affordable coffee shop located in Ranch.",
        ),
    ),
    ("dart", "test"): (
        (
            "Hawaii Five-O : notes : Episode: The Flight of the Jewels | [TABLECONTEXT] : [title] : Jeff Daniels |"
            " [TABLECONTEXT] : title : Hawaii Five-O",
            "Jeff Daniels played in the Hawaii Five-O episode The Flight of the Jewels",
        ),
        (
            "Zizzi : eattype : pub | Zizzi : near : The Sorrento",
            "There is a pub  called Zizzi located near The Sorrento.",
        ),
    ),
}


@pytest.mark.parametrize("name,split", sorted(FIRST_LAST))
def test_first_and_last_example(prepared, tok, name, split):
    folder = prepared / OUT[name]
    formatted = lines(folder / f"{split}_formatted.jsonl")
    encoded = lines(folder / f"{split}.jsonl")
    for k, (context, completion) in zip((0, -1), FIRST_LAST[name, split]):
        assert (formatted[k]["context"], formatted[k]["completion"]) == (context, completion)
        # Seed encoding: BOS after the context, " " before the completion, EOS after it.
        assert encoded[k] == {
            "context": tok.encode(context) + [50256],
            "completion": tok.encode(" " + completion) + [50256],
        }


def test_unique_records(prepared, tok):
    first = lines(prepared / "webnlg_challenge_2017" / "test_unique.jsonl")[0]
    assert first == {
        "id": 0,
        "context": "Abilene_Regional_Airport : cityServed : Abilene,_Texas",
        "context_ids": tok.encode("Abilene_Regional_Airport : cityServed : Abilene,_Texas") + [50256],
        "references": [
            "Abilene, Texas is served by the Abilene regional airport.",
            "Abilene Regional Airport serves the city of Abilene in Texas.",
        ],
        "category": "Airport",
        "seen": True,
    }
    last = lines(prepared / "e2e" / "valid_unique.jsonl")[-1]
    assert (last["id"], len(last["references"]), last["references"][-1]) == (
        546,
        9,
        "Wildwood is a moderately priced English coffee shop located near the Ranch. It has been rated 3 out of 5.",
    )
    assert set(last) == {"id", "context", "context_ids", "references"}


def test_unique_context_ids_match_encoded_contexts(prepared):
    for name in OUT.values():
        for split in ("valid", "test"):
            by_context = {}
            for f, e in zip(
                lines(prepared / name / f"{split}_formatted.jsonl"), lines(prepared / name / f"{split}.jsonl")
            ):
                by_context[f["context"]] = e["context"]
            for u in lines(prepared / name / f"{split}_unique.jsonl"):
                assert u["context_ids"] == by_context[u["context"]]


def test_e2e_ids_follow_first_appearance_of_mr(prepared, mirror):
    with open(mirror / "e2e" / "testset_w_refs.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    order = list(dict.fromkeys(r["mr"] for r in rows))
    unique = lines(prepared / "e2e" / "test_unique.jsonl")
    assert [D.e2e_context(mr, "?") for mr in order] == [u["context"] for u in unique]
    assert [[r["ref"] for r in rows if r["mr"] == mr] for mr in order[:20]] == [u["references"] for u in unique[:20]]


def test_outputs_are_identical_when_rebuilt(prepared, mirror, tok, tmp_path):
    """Stable ids: building the valid and test splits again gives byte-identical files."""
    web = mirror / "webnlg_challenge_2017"
    readers = {
        ("e2e", "valid"): lambda: D.read_e2e_csv(mirror / "e2e" / "devset.csv"),
        ("e2e", "test"): lambda: D.read_e2e_csv(mirror / "e2e" / "testset_w_refs.csv"),
        ("webnlg_challenge_2017", "valid"): lambda: D.read_webnlg_xml(sorted(web.glob("dev/*/*.xml"))),
        ("webnlg_challenge_2017", "test"): lambda: D.read_webnlg_xml([web / "test" / "testdata_with_lex.xml"]),
        ("dart", "valid"): lambda: D.read_dart_json(mirror / "dart" / "dart-v1.1.1-full-dev.json"),
        ("dart", "test"): lambda: D.read_dart_json(
            mirror / "dart" / "dart-v1.1.1-full-test.json.xz", empty_references="drop"
        ),
    }
    for (name, split), read in readers.items():
        prepare.write_split(tmp_path / name, split, read(), tok)
        for suffix in ("_formatted.jsonl", ".jsonl", "_unique.jsonl"):
            assert (prepared / name / f"{split}{suffix}").read_bytes() == (
                tmp_path / name / f"{split}{suffix}"
            ).read_bytes(), (name, split, suffix)


def test_rerun_does_nothing_when_up_to_date(prepared, mirror, capsys):
    before = {p: p.stat().st_mtime_ns for p in prepared.rglob("*.jsonl")}
    rc = prepare.main(["--datasets", "all", "--mirror", str(mirror), "--data_dir", str(prepared), "--no_download"])
    out = capsys.readouterr()
    assert rc == 0
    assert out.out.count("up to date") == 3
    assert "WARNING: dart train unavailable" in out.err
    assert "dart-v1.1.1-full-train.json" in out.err and "NLG_DATA_MIRROR" in out.err
    assert {p: p.stat().st_mtime_ns for p in prepared.rglob("*.jsonl")} == before


def test_dart_alone_without_train_is_an_error_after_writing_valid_and_test(prepared, mirror, capsys):
    rc = prepare.main(["--datasets", "dart", "--mirror", str(mirror), "--data_dir", str(prepared), "--no_download"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "ERROR: dart train unavailable, the other splits were written" in err
    assert "https://raw.githubusercontent.com/Yale-LILY/dart/" in err and "NLG_DATA_MIRROR" in err
    assert (prepared / "dart" / "test_unique.jsonl").is_file()
    assert not (prepared / "dart" / "train.jsonl").exists()


def test_vocab_copied_and_ignored_by_git(prepared, mirror):
    for name in ("encoder.json", "vocab.bpe"):
        assert (prepared / "gpt2-vocab" / name).read_bytes() == (mirror / "gpt2-vocab" / name).read_bytes()
    assert (prepared / "gpt2-vocab" / ".gitignore").read_text() == "*\n"


# ----------------------------------------------------------------------------------------------
# Upstream's formats give the same records


def test_e2e_seed_format_and_official_csv_agree(mirror):
    """Contexts: equal line for line on valid and test (upstream tokenized MR values with Moses).
    Completions: upstream's are Moses-tokenized; our tokenization recipe applied to the official
    references reproduces valid.txt on all 4,672 lines; test.txt was made with another tokenizer
    upstream (`is n't`), and 4,557 of its 4,693 lines match. Grouping into inputs: equal."""
    for csv_name, seed_name, n_lines, n_same_completions in (
        ("devset.csv", "valid.txt", 4672, 4672),
        ("testset_w_refs.csv", "test.txt", 4693, 4557),
    ):
        official = D.read_e2e_csv(mirror / "e2e" / csv_name, text="moses")
        seed = U.read_e2e_upstream_txt(mirror / "e2e" / "microsoft-format" / seed_name)
        assert len(official) == len(seed) == n_lines
        assert [p.context for p in official] == [p.context for p in seed]
        assert sum(a.completion == b.completion for a, b in zip(official, seed)) == n_same_completions
        u_official, u_seed = D.unique_inputs(official), D.unique_inputs(seed)
        assert [(u["context"], len(u["references"])) for u in u_official] == [
            (u["context"], len(u["references"])) for u in u_seed
        ]
    # The contexts do not depend on how the completions are written.
    raw = D.read_e2e_csv(mirror / "e2e" / "testset_w_refs.csv")
    assert [p.context for p in raw] == [p.context for p in seed]


def test_e2e_moses_formatted_valid_is_the_seeds_converter_output(mirror, tok, tmp_path):
    """With --e2e_text moses our valid_formatted.jsonl is byte for byte what upstream's
    format_converting_e2e.py writes from its valid.txt."""
    seed_lines = []
    for line in D.read_text(mirror / "e2e" / "microsoft-format" / "valid.txt").splitlines():
        items = line.strip().split("||")
        seed_lines.append(json.dumps({"context": items[0], "completion": items[1].strip("\n")}) + "\n")
    pairs = D.read_e2e_csv(mirror / "e2e" / "devset.csv", text="moses")
    prepare.write_split(tmp_path, "valid", pairs, tok)
    assert (tmp_path / "valid_formatted.jsonl").read_text(encoding="utf-8") == "".join(seed_lines)


def test_e2e_seed_text_recipe():
    assert (
        D.e2e_upstream_text("Prices start at £30. It's family-friendly!  Rated 5. out of 5.")
        == "Prices start at £ 30 . It 's family - friendly ! Rated 5. out of 5 ."
    )
    # no split after a number when a lower-case word follows; otherwise split
    assert D.split_sentences("A. B? c 5. d 6. E") == ["A.", "B?", "c 5. d 6.", "E"]


@pytest.mark.parametrize(
    "split,xml,seed_json",
    [
        ("train", "train/*/*.xml", "train.json.xz"),
        ("valid", "dev/*/*.xml", "dev.json"),
        ("test", "test/testdata_with_lex.xml", "test.json.xz"),
    ],
)
def test_webnlg_xml_and_seed_json_give_identical_records(mirror, split, xml, seed_json):
    folder = mirror / "webnlg_challenge_2017"
    from_xml = D.read_webnlg_xml(sorted(glob.glob(str(folder / xml))))
    from_json = U.read_webnlg_upstream_json(folder / seed_json)
    assert len(from_xml) == len(from_json) == COUNTS["webnlg", split][0]
    key = lambda p: (p.context, p.completion, p.input_key, p.category)  # noqa: E731
    assert [key(p) for p in from_xml] == [key(p) for p in from_json]
    assert D.unique_inputs(from_xml) == D.unique_inputs(from_json)


def _seed_webnlg_converter(data):
    """microsoft/LoRA src/format_converting_webnlg.py, re-typed: upstream's formatted lines."""
    out = []
    for i, example in enumerate(data["entries"]):
        entry = example[str(i + 1)]
        triples = " | ".join(
            "{} : {} : {}".format(t["subject"], t["property"], t["object"]) for t in entry["modifiedtripleset"]
        )
        for sent in entry["lexicalisations"]:
            if sent["comment"] == "good":
                out.append(
                    json.dumps(
                        {"context": triples, "completion": sent["lex"], "cate": entry["category"] in SEEN_CATEGORIES}
                    )
                    + "\n"
                )
    return "".join(out)


def _seed_dart_converter(data):
    """microsoft/LoRA src/format_converting_dart.py, re-typed."""
    out = []
    for example in data:
        triples = " | ".join("{} : {} : {}".format(s, p.lower(), o) for s, p, o in example["tripleset"])
        for sent in example["annotations"]:
            out.append(json.dumps({"context": triples, "completion": sent["text"]}) + "\n")
    return "".join(out)


def test_formatted_files_equal_the_seeds_converters(prepared, mirror):
    web = mirror / "webnlg_challenge_2017"
    for split, name in (("test", "test.json.xz"), ("valid", "dev.json")):
        seed = _seed_webnlg_converter(json.loads(D.read_text(web / name)))
        assert (prepared / "webnlg_challenge_2017" / f"{split}_formatted.jsonl").read_text(encoding="utf-8") == seed
    seed = _seed_dart_converter(json.loads(D.read_text(mirror / "dart" / "dart-v1.1.1-full-dev.json")))
    assert (prepared / "dart" / "valid_formatted.jsonl").read_text(encoding="utf-8") == seed


def test_gpt2_encode_script_matches_prepared_files(prepared, tmp_path):
    sys.path.insert(0, str(REPO / "src"))
    import gpt2_encode

    vocab = str(prepared / "gpt2-vocab")
    src = prepared / "e2e" / "valid_formatted.jsonl"
    assert (
        gpt2_encode.main(
            ["--vocab", vocab, "--input", str(src), "--output", str(tmp_path / "a.jsonl"), "--add_bos", "--add_eos"]
        )
        == 0
    )
    assert (tmp_path / "a.jsonl").read_bytes() == (prepared / "e2e" / "valid.jsonl").read_bytes()
    assert gpt2_encode.main(["--vocab", vocab, "--input", str(src), "--output", str(tmp_path / "b.jsonl")]) == 0
    with_flags, without = lines(tmp_path / "a.jsonl"), lines(tmp_path / "b.jsonl")
    assert [(w["context"] + [50256], w["completion"] + [50256]) for w in without] == [
        (f["context"], f["completion"]) for f in with_flags
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "completion": "b"}\n{"context": "a"}\n')
    assert gpt2_encode.main(["--vocab", vocab, "--input", str(bad), "--output", str(tmp_path / "c.jsonl")]) == 1
    assert not (tmp_path / "c.jsonl").exists()


# ----------------------------------------------------------------------------------------------
# Bad input: file, line (or entry) and what was expected


def write(path, text, xz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    path.write_bytes(lzma.compress(data) if xz else data)
    return path


E2E_CSV = 'mr,ref\n"name[A], eatType[pub]","A is a pub."\n"name[B], priceRange[£20-25]","B costs £20-25."\n'


@pytest.mark.parametrize(
    "text,message",
    [
        ("mr,reference\n", r"x.csv:1: expected the header 'mr,ref'"),
        ('mr,ref\n"name[A]","A.",extra\n', r"x.csv:2: expected 2 fields \(mr, ref\), got 3"),
        ('mr,ref\n"name[A]","ok"\n"name[B]"\n', r"x.csv:3: expected 2 fields \(mr, ref\), got 1"),
        ('mr,ref\n"name[A]",""\n', r"x.csv:2: empty reference \(ref\)"),
        ('mr,ref\n"name[A]","  "\n', r"x.csv:2: empty reference \(ref\)"),
        ('mr,ref\n"name A","A."\n', r"x.csv:2: mr 'name A' is not a list of 'attribute\[value\]'"),
        ('mr,ref\n"name[A], colour[red]","A."\n', r"x.csv:2: unknown MR attribute 'colour'"),
    ],
)
def test_e2e_csv_errors(tmp_path, text, message):
    with pytest.raises(FormatError, match=message):
        D.read_e2e_csv(write(tmp_path / "x.csv", text))


def test_e2e_csv_reads_xz_and_quoted_newlines(tmp_path):
    text = E2E_CSV + '"name[C]","Line one.\nLine two."\n'
    pairs = D.read_e2e_csv(write(tmp_path / "x.csv.xz", text, xz=True))
    assert [(p.context, p.completion, p.where) for p in pairs] == [
        ("name : A | Type : pub", "A is a pub.", f"{tmp_path}/x.csv.xz:2"),
        ("name : B | price : £ 20 - 25", "B costs £20-25.", f"{tmp_path}/x.csv.xz:3"),
        ("name : C", "Line one.\nLine two.", f"{tmp_path}/x.csv.xz:5"),
    ]


def test_e2e_seed_txt_errors(tmp_path):
    with pytest.raises(FormatError, match=r"v.txt:2: expected 'context\|\|text', found 0"):
        U.read_e2e_upstream_txt(write(tmp_path / "v.txt", "name : A||A .\nname : B without text\n"))
    with pytest.raises(FormatError, match=r"v.txt:1: empty reference"):
        U.read_e2e_upstream_txt(write(tmp_path / "v.txt", "name : A|| \n"))


WEBNLG_ENTRY = """<entry category="{cat}" eid="Id{eid}" size="1">
<modifiedtripleset><mtriple>{triple}</mtriple></modifiedtripleset>
<lex comment="good" lid="Id1">{lex}</lex><lex comment="toFix" lid="Id2">bad</lex></entry>"""


def webnlg_xml(*entries):
    return "<benchmark><entries>" + "".join(entries) + "</entries></benchmark>"


def test_webnlg_xml_reader(tmp_path):
    a = write(tmp_path / "a.xml", webnlg_xml(WEBNLG_ENTRY.format(cat="Food", eid=1, triple="X | p | Y", lex="X p Y.")))
    b = write(
        tmp_path / "b.xml", webnlg_xml(WEBNLG_ENTRY.format(cat="Artist", eid=1, triple="Z | q | W", lex="Z q W."))
    )
    pairs = D.read_webnlg_xml([a, b])
    assert [(p.context, p.completion, p.input_key, p.category) for p in pairs] == [
        ("X : p : Y", "X p Y.", 1, "Food"),
        ("Z : q : W", "Z q W.", 2, "Artist"),
    ]
    assert [u["seen"] for u in D.unique_inputs(pairs)] == [True, False]


@pytest.mark.parametrize(
    "text,message",
    [
        (
            webnlg_xml(WEBNLG_ENTRY.format(cat="Food", eid=1, triple="X | p | Y", lex="ok"))[:-20],
            r"w.xml:3:\d+: malformed XML",
        ),
        (
            webnlg_xml(WEBNLG_ENTRY.format(cat="Food", eid=7, triple="X | p", lex="ok")),
            r"w.xml entry Id7: mtriple 'X \| p': expected 'subject \| property \| object'",
        ),
        (
            webnlg_xml(WEBNLG_ENTRY.format(cat="Food", eid=3, triple="X | p | Y", lex="")),
            r"w.xml entry Id3 lex Id1: empty reference \(lex\)",
        ),
        (
            webnlg_xml(WEBNLG_ENTRY.format(cat="", eid=4, triple="X | p | Y", lex="ok")),
            r"w.xml entry Id4: missing attribute 'category'",
        ),
        ("<benchmark><entries></entries></benchmark>", r"w.xml: no <benchmark><entries><entry>"),
    ],
)
def test_webnlg_xml_errors(tmp_path, text, message):
    with pytest.raises(FormatError, match=message):
        D.read_webnlg_xml(write(tmp_path / "w.xml", text))


def test_webnlg_seed_json_errors(tmp_path):
    entry = {
        "category": "Food",
        "modifiedtripleset": [{"subject": "X", "property": "p", "object": "Y"}],
        "lexicalisations": [{"comment": "good", "lex": "X p Y."}],
    }
    ok = write(tmp_path / "t.json", json.dumps({"entries": [{"1": entry}]}))
    assert [p.context for p in U.read_webnlg_upstream_json(ok)] == ["X : p : Y"]
    broken = copy.deepcopy(entry)
    del broken["lexicalisations"]
    with pytest.raises(FormatError, match=r"t.json entry 2: missing field 'lexicalisations'"):
        U.read_webnlg_upstream_json(write(tmp_path / "t.json", json.dumps({"entries": [{"1": entry}, {"2": broken}]})))
    with pytest.raises(FormatError, match=r"t.json:1:\d+: malformed JSON"):
        U.read_webnlg_upstream_json(write(tmp_path / "t.json", '{"entries": [}'))


@pytest.mark.parametrize(
    "data,message",
    [
        (
            '[{"tripleset": [["a", "B", "c"]], "annotations": [{"text": "t"}]},\n {"tripleset": []',
            r"d.json:2:\d+: malformed JSON",
        ),
        ('[{"tripleset": [["a", "B", "c"]]}]', r"d.json entry 0: missing field 'annotations'"),
        (
            '[{"tripleset": [["a", "B"]], "annotations": [{"text": "t"}]}]',
            r"d.json entry 0 triple 0: expected \[subject, property, object\]",
        ),
        (
            '[{"tripleset": [["a", "B", "c"]], "annotations": [{"text": "t"}, {"source": "x"}]}]',
            r"d.json entry 0 annotation 1: missing field 'text'",
        ),
        (
            '[{"tripleset": [["a", "B", "c"]], "annotations": [{"text": " "}]}]',
            r"d.json entry 0 annotation 0: empty reference",
        ),
    ],
)
def test_dart_errors(tmp_path, data, message):
    with pytest.raises(FormatError, match=message):
        D.read_dart_json(write(tmp_path / "d.json", data))


def test_dart_reader_lowercases_property_and_can_drop_empty_references(tmp_path):
    path = write(
        tmp_path / "d.json",
        json.dumps(
            [
                {
                    "tripleset": [["Aa", "CITY_SERVED", "Bb"], ["Aa", "eatType", "pub"]],
                    "annotations": [{"text": "one"}, {"text": ""}, {"text": "two"}],
                }
            ]
        ),
    )
    pairs = D.read_dart_json(path, empty_references="drop")
    assert [(p.context, p.completion) for p in pairs] == [
        ("Aa : city_served : Bb | Aa : eattype : pub", "one"),
        ("Aa : city_served : Bb | Aa : eattype : pub", "two"),
    ]
    assert pairs.dropped == [f"{path} entry 0 annotation 1"]


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"context": "a", "completion": "b"}\n{"context": "a", "completion": \n', r"f.jsonl:2: malformed JSON"),
        ('{"context": "a"}\n', r"f.jsonl:1: missing field 'completion'"),
        ('{"context": "a", "completion": ""}\n', r"f.jsonl:1: empty completion"),
        ('["a", "b"]\n', r"f.jsonl:1: expected a JSON object, got list"),
    ],
)
def test_formatted_jsonl_errors(tmp_path, text, message):
    with pytest.raises(FormatError, match=message):
        files.read_formatted(write(tmp_path / "f.jsonl", text))


# ----------------------------------------------------------------------------------------------
# Sources: mirror, download, sha256; up to date; atomic outputs (tiny mirror)


def sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture
def tiny(tmp_path, mirror):
    """A mirror with three-line E2E files and the real vocabulary, and its sources.json."""
    root = tmp_path / "mirror"
    texts = {"e2e/trainset.csv": E2E_CSV, "e2e/devset.csv": E2E_CSV, "e2e/testset_w_refs.csv": E2E_CSV}
    for key, text in texts.items():
        write(root / key, text)
    (root / "gpt2-vocab").mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        os.symlink(mirror / "gpt2-vocab" / name, root / "gpt2-vocab" / name)
    sources = json.loads(SOURCES_JSON.read_text())
    for key, text in texts.items():
        sources["files"][key]["sha256"] = sha256(text)
    sources_path = tmp_path / "sources.json"
    sources_path.write_text(json.dumps(sources))

    def run(*extra):
        return prepare.main(
            [
                "--datasets",
                "e2e",
                "--mirror",
                str(root),
                "--data_dir",
                str(tmp_path / "data"),
                "--sources",
                str(sources_path),
                *extra,
            ]
        )

    return dict(root=root, sources=sources, sources_path=sources_path, out=tmp_path / "data" / "e2e", run=run)


def test_sources_json_lists_official_urls_and_shas():
    sources = load_sources()
    assert (
        sources["gpt2-vocab/encoder.json"]["sha256"]
        == "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
    )
    assert sources["e2e/trainset.csv"]["url"].startswith("https://raw.githubusercontent.com/tuetschek/e2e-dataset/")
    assert len([k for k in sources if k.startswith("webnlg_challenge_2017/train/")]) == 52
    assert len([k for k in sources if k.startswith("webnlg_challenge_2017/dev/")]) == 52
    assert sources["dart/dart-v1.1.1-full-train.json"]["optional"] is True
    assert all(s["url"].startswith("https://") for s in sources.values())


def test_every_mirror_file_has_the_recorded_sha256(mirror):
    sources = load_sources()
    present = {k: s for k, s in sources.items() if (mirror / k).is_file() or (mirror / (k + ".xz")).is_file()}
    assert len(present) == len(sources) - 1  # all but DART train
    for key, spec in present.items():
        assert fetch(key, spec, mirror, None, download=False)[1] == spec["sha256"]


def test_tiny_mirror_build_rerun_and_rebuild(tiny, capsys):
    assert tiny["run"]("--no_download") == 0
    unique = lines(tiny["out"] / "valid_unique.jsonl")
    assert [u["context"] for u in unique] == ["name : A | Type : pub", "name : B | price : £ 20 - 25"]
    assert tiny["run"]("--no_download") == 0
    assert "e2e: up to date" in capsys.readouterr().out
    assert tiny["run"]("--no_download", "--e2e_text", "moses") == 0  # other options: rebuilt
    assert lines(tiny["out"] / "train_formatted.jsonl")[1]["completion"] == "B costs £ 20 - 25 ."
    (tiny["out"] / "test.jsonl").unlink()  # an output missing: rebuilt
    assert tiny["run"]("--no_download", "--e2e_text", "moses") == 0
    assert (tiny["out"] / "test.jsonl").is_file()


def test_changed_raw_file_fails_its_sha256_check(tiny, capsys):
    write(tiny["root"] / "e2e/devset.csv", E2E_CSV + '"name[D]","D."\n')
    assert tiny["run"]("--no_download") == 1
    err = capsys.readouterr().err
    assert "devset.csv: sha256" in err and "data/sources.json records" in err


def test_missing_file_downloads_from_url_into_cache(tiny, tmp_path):
    upstream = write(tmp_path / "upstream" / "devset.csv", E2E_CSV)
    (tiny["root"] / "e2e/devset.csv").unlink()
    tiny["sources"]["files"]["e2e/devset.csv"]["url"] = upstream.as_uri()
    tiny["sources_path"].write_text(json.dumps(tiny["sources"]))
    assert tiny["run"]() == 0
    assert (tmp_path / "data" / "cache" / "e2e" / "devset.csv").read_text() == E2E_CSV


def test_download_with_wrong_sha256_is_refused_and_not_kept(tiny, tmp_path, capsys):
    upstream = write(tmp_path / "upstream" / "devset.csv", E2E_CSV + '"name[D]","D."\n')
    (tiny["root"] / "e2e/devset.csv").unlink()
    tiny["sources"]["files"]["e2e/devset.csv"]["url"] = upstream.as_uri()
    tiny["sources_path"].write_text(json.dumps(tiny["sources"]))
    assert tiny["run"]() == 1
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "data" / "cache" / "e2e" / "devset.csv").exists()


def test_unreachable_source_names_file_url_and_mirror_variable(tiny, tmp_path, capsys):
    (tiny["root"] / "e2e/devset.csv").unlink()
    url = (tmp_path / "nowhere" / "devset.csv").as_uri()
    tiny["sources"]["files"]["e2e/devset.csv"]["url"] = url
    tiny["sources_path"].write_text(json.dumps(tiny["sources"]))
    assert tiny["run"]() == 1
    err = capsys.readouterr().err
    assert "e2e/devset.csv" in err and url in err and "NLG_DATA_MIRROR" in err and "download" in err
    spec = {"url": url, "sha256": "0" * 64}
    with pytest.raises(SourceError, match="downloads off"):
        fetch("e2e/devset.csv", spec, tiny["root"], tmp_path / "cache", download=False)


def test_git_blob_prefix_check(tmp_path):
    data = b"hello\n"
    write(tmp_path / "m" / "x.json", data.decode())
    blob = hashlib.sha1(b"blob 6\0" + data).hexdigest()
    assert (
        fetch("x.json", {"url": "u", "git_blob_prefix": blob[:8]}, tmp_path / "m")[1]
        == hashlib.sha256(data).hexdigest()
    )
    with pytest.raises(SourceError, match="git blob id"):
        fetch("x.json", {"url": "u", "git_blob_prefix": "00000000"}, tmp_path / "m")


def test_failure_leaves_no_half_file(tiny, capsys):
    """A bad row at the end of the test split: train and valid are written, test is not, no
    temporary file is left, and the dataset stays marked out of date."""
    bad = E2E_CSV + '"name[C]",""\n'
    write(tiny["root"] / "e2e/testset_w_refs.csv", bad)
    tiny["sources"]["files"]["e2e/testset_w_refs.csv"]["sha256"] = sha256(bad)
    tiny["sources_path"].write_text(json.dumps(tiny["sources"]))
    assert tiny["run"]("--no_download") == 1
    assert "e2e/testset_w_refs.csv:4: empty reference (ref)" in capsys.readouterr().err
    names = sorted(p.name for p in tiny["out"].iterdir())
    assert names == [
        "train.jsonl",
        "train_formatted.jsonl",
        "valid.jsonl",
        "valid_formatted.jsonl",
        "valid_unique.jsonl",
    ]


def test_write_jsonl_is_atomic(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")

    def records():
        yield {"a": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        files.write_jsonl(target, records())
    assert target.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]


def test_create_datasets_sh(tiny, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [
        "bash",
        str(REPO / "scripts" / "create_datasets.sh"),
        "e2e",
        "--mirror",
        str(tiny["root"]),
        "--data_dir",
        str(tmp_path / "sh"),
        "--sources",
        str(tiny["sources_path"]),
        "--no_download",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "e2e valid: 2 pairs, 2 inputs" in run.stdout
    assert (tmp_path / "sh" / "e2e" / "test_unique.jsonl").is_file()
    bad = subprocess.run(cmd[:2] + ["e3e"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "unknown dataset 'e3e'" in bad.stderr
