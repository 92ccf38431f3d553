"""gpt2_decode.py: the files the E2E scorer and GenerationEval read, in both protocols, from our
files and from upstream's; checked with the scorers' own reading rules on the real test sets."""

import json

import pytest

from lora_nlg.data import raw as D
from lora_nlg.data.files import upstream_tokenize
from lora_nlg.data.tokenizer import GPT2Tokenizer
from lora_nlg.decode.scorer_files import main

# Tiny models are many small ops: one thread avoids OpenMP waits (10-100x on a busy machine).
pytestmark = pytest.mark.usefixtures("one_thread")


def e2e_read_lines(path, multi_ref=False):
    """tuetschek/e2e-metrics' reader (measure_scores.read_lines): blank lines separate inputs."""
    buf = [[]] if multi_ref else []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if multi_ref:
                if not line:
                    buf.append([])
                else:
                    buf[-1].append(line)
            else:
                buf.append(line)
    if multi_ref and not buf[-1]:
        del buf[-1]
    return buf


def generation_eval_parse(ref_prefix, hyp_path, num_refs):
    """WebNLG/GenerationEval's eval.parse: every file split on '\\n'."""
    references = []
    for i in range(num_refs):
        with open(f"{ref_prefix}{i}", encoding="utf-8") as f:
            for j, text in enumerate(f.read().split("\n")):
                if len(references) <= j:
                    references.append([text])
                else:
                    references[j].append(text)
    with open(hyp_path, encoding="utf-8") as f:
        hypothesis = f.read().split("\n")
    return references, hypothesis


def write_unique(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({**r, "context_ids": [1]}) + "\n")


def write_predictions(path, items):
    with open(path, "w", encoding="utf-8") as f:
        for i, text in items:
            f.write(json.dumps({"id": i, "token_ids": [1], "text": text}) + "\n")


def test_e2e_test_set_files_read_back_by_the_e2e_scorer(mirror, tmp_path):
    records = D.unique_inputs(D.read_e2e_csv(mirror / "e2e" / "testset_w_refs.csv"))
    write_unique(tmp_path / "test_unique.jsonl", records)
    hyps = [
        (r["id"], f"Hypothesis {r['id']}\nsecond line" if r["id"] == 629 else f"Hypothesis {r['id']}.") for r in records
    ]
    write_predictions(tmp_path / "pred.jsonl", hyps)
    for protocol in ("paper", "official"):
        ref, pred = tmp_path / f"ref_{protocol}.txt", tmp_path / f"pred_{protocol}.txt"
        assert (
            main(
                [
                    "--sample_file",
                    str(tmp_path / "pred.jsonl"),
                    "--input_file",
                    str(tmp_path / "test_unique.jsonl"),
                    "--output_ref_file",
                    str(ref),
                    "--output_pred_file",
                    str(pred),
                    "--protocol",
                    protocol,
                ]
            )
            == 0
        )
        groups, hyp_lines = e2e_read_lines(ref, multi_ref=True), e2e_read_lines(pred)
        assert len(groups) == len(hyp_lines) == 630
        assert sum(map(len, groups)) == 4693
        assert groups == [[x.strip() for x in r["references"]] for r in records]
        assert hyp_lines[5] == "Hypothesis 5." and hyp_lines[629] == "Hypothesis 629 second line"
        text = ref.read_text(encoding="utf-8")
        assert text.endswith("\n") and not text.endswith("\n\n")  # no blank line after the last input
        assert not pred.read_text(encoding="utf-8").endswith("\n\n")


def test_dart_paper_and_official_protocols_for_generation_eval(mirror, tmp_path, capsys):
    records = D.unique_inputs(D.read_dart_json(mirror / "dart" / "dart-v1.1.1-full-dev.json"))
    write_unique(tmp_path / "dev_unique.jsonl", records)
    write_predictions(tmp_path / "pred.jsonl", [(r["id"], f"Pred {r['id']} (X)") for r in records])
    contexts = list(dict.fromkeys(r["context"] for r in records))
    assert len(contexts) < len(records)  # identical context strings: the paper protocol merges them
    base = [
        "--sample_file",
        str(tmp_path / "pred.jsonl"),
        "--input_file",
        str(tmp_path / "dev_unique.jsonl"),
        "--ref_type",
        "dart",
        "--ref_num",
        "6",
    ]

    assert (
        main([*base, "--output_ref_file", str(tmp_path / "paper"), "--output_pred_file", str(tmp_path / "paper_hyp")])
        == 0
    )
    assert "protocol paper" in capsys.readouterr().out
    refs, hyps = generation_eval_parse(tmp_path / "paper" / "reference", tmp_path / "paper_hyp", 6)
    assert len(hyps) == len(refs) == len(contexts)  # no trailing empty segment (issue 138)
    merged = {c: [] for c in contexts}
    last = {}
    for r in records:
        merged[r["context"]].extend(r["references"])
        last[r["context"]] = r["id"]
    for c, got, hyp in zip(contexts, refs, hyps):
        want = [upstream_tokenize(x.lower()) for x in merged[c]]
        assert got == (want + [want[0]] * 6)[:6]
        assert hyp == upstream_tokenize(f"pred {last[c]} (x)")

    assert (
        main(
            [
                *base,
                "--protocol",
                "official",
                "--output_ref_file",
                str(tmp_path / "official"),
                "--output_pred_file",
                str(tmp_path / "official_hyp"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    n = max(len(r["references"]) for r in records)
    assert f"reference_files {n}" in out and "protocol official" in out
    refs, hyps = generation_eval_parse(tmp_path / "official" / "reference", tmp_path / "official_hyp", n)
    assert len(refs) == len(hyps) == len(records)
    for r, got, hyp in zip(records, refs, hyps):
        assert got[: len(r["references"])] == [x.strip() for x in r["references"]]  # verbatim, all of them
        assert set(got[len(r["references"]) :]) <= {r["references"][0].strip()}
        assert hyp == f"Pred {r['id']} (X)"
    assert not (tmp_path / "official_hyp").read_text().endswith("\n")


def test_webnlg_seen_unseen_filter(tmp_path):
    records = [
        {"id": 0, "context": "a : b : c", "references": ["A B."], "category": "Airport", "seen": True},
        {"id": 1, "context": "d : e : f", "references": ["D E.", "D, E!"], "category": "Artist", "seen": False},
        {"id": 2, "context": "g : h : i", "references": ["G H."], "category": "City", "seen": True},
    ]
    write_unique(tmp_path / "u.jsonl", records)
    write_predictions(tmp_path / "p.jsonl", [(0, "x0"), (1, "x1"), (2, "x2")])
    for which, ids in (("seen", [0, 2]), ("unseen", [1]), ("all", [0, 1, 2])):
        ref_dir, hyp = tmp_path / which, tmp_path / f"{which}.hyp"
        assert (
            main(
                [
                    "--sample_file",
                    str(tmp_path / "p.jsonl"),
                    "--input_file",
                    str(tmp_path / "u.jsonl"),
                    "--ref_type",
                    "webnlg",
                    "--ref_num",
                    "2",
                    "--filter",
                    which,
                    "--output_ref_file",
                    str(ref_dir),
                    "--output_pred_file",
                    str(hyp),
                ]
            )
            == 0
        )
        assert hyp.read_text() == "\n".join(f"x{i}" for i in ids)
    assert (tmp_path / "unseen" / "reference1").read_text() == "d , e !"
    assert (
        main(
            [
                "--sample_file",
                str(tmp_path / "p.jsonl"),
                "--input_file",
                str(tmp_path / "u.jsonl"),
                "--filter",
                "seen",
                "--output_ref_file",
                str(tmp_path / "r"),
                "--output_pred_file",
                str(tmp_path / "h"),
            ]
        )
        == 2
    )


def test_seed_formatted_input_and_seed_predictions(tmp_path):
    """Upstream's files: *_formatted.jsonl (one line per pair) and {"id": line, "predict": ids}."""
    tok = GPT2Tokenizer.from_dir()
    lines = [
        ("name : A", "Ref a1"),
        ("name : A", "Ref a2"),
        ("name : B", "Ref b1<|endoftext|>"),
        ("name : A", "Ref a3\n\nignored"),
        ("name : C", " Ref c1 "),
    ]
    with open(tmp_path / "test_formatted.jsonl", "w") as f:
        for c, t in lines:
            f.write(json.dumps({"context": c, "completion": t}) + "\n")
    with open(tmp_path / "sample.jsonl", "w") as f:  # every line decoded, as upstream did; zeros after EOS
        for i in range(len(lines)):
            f.write(json.dumps({"id": i, "predict": tok.encode(f" Out {i}.") + [50256, 0, 0]}) + "\n")
    args = [
        "--sample_file",
        str(tmp_path / "sample.jsonl"),
        "--input_file",
        str(tmp_path / "test_formatted.jsonl"),
        "--output_ref_file",
        str(tmp_path / "ref.txt"),
        "--output_pred_file",
        str(tmp_path / "pred.txt"),
    ]
    assert main(args) == 0
    assert (tmp_path / "ref.txt").read_text() == "Ref a1\nRef a2\nRef a3\n\nRef b1\n\nRef c1\n"
    assert (tmp_path / "pred.txt").read_text() == "Out 3.\nOut 2.\nOut 4.\n"  # a group's last line wins
    # --ref_unique_file (one int per line) groups lines instead of the context strings
    (tmp_path / "uniq.txt").write_text("0\n0\n1\n1\n2\n")
    assert main([*args, "--ref_unique_file", str(tmp_path / "uniq.txt")]) == 0
    assert (tmp_path / "ref.txt").read_text() == "Ref a1\nRef a2\n\nRef b1\nRef a3\n\nRef c1\n"
    assert (tmp_path / "pred.txt").read_text() == "Out 1.\nOut 3.\nOut 4.\n"


def test_missing_or_foreign_predictions_are_errors(tmp_path, capsys):
    write_unique(
        tmp_path / "u.jsonl",
        [{"id": 0, "context": "a", "references": ["r"]}, {"id": 1, "context": "b", "references": ["s"]}],
    )
    args = [
        "--input_file",
        str(tmp_path / "u.jsonl"),
        "--output_ref_file",
        str(tmp_path / "r"),
        "--output_pred_file",
        str(tmp_path / "h"),
    ]
    write_predictions(tmp_path / "p1.jsonl", [(0, "x")])
    assert main(["--sample_file", str(tmp_path / "p1.jsonl"), *args]) == 2
    assert "u.jsonl:2 (id 1)" in capsys.readouterr().err
    write_predictions(tmp_path / "p2.jsonl", [(0, "x"), (1, "y"), (7, "z")])
    assert main(["--sample_file", str(tmp_path / "p2.jsonl"), *args]) == 2
    assert "[7]" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "h").exists()


def test_beam_output_feeds_decode(tmp_path, hf_tiny_dir):
    """gpt2_beam.py's predictions file is gpt2_decode.py's sample file."""
    from lora_nlg.decode.predict import main as beam_main

    records = [{"id": i, "context": f"c{i}", "references": [f"ref {i}", f"other {i}"]} for i in range(4)]
    with open(tmp_path / "u.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps({**r, "context_ids": [3 + i for i in range(r["id"] + 1)]}) + "\n")
    assert (
        beam_main(
            [
                "--data",
                str(tmp_path / "u.jsonl"),
                "--pretrained_checkpoint",
                str(hf_tiny_dir),
                "--beam",
                "2",
                "--eval_len",
                "5",
                "--work_dir",
                str(tmp_path),
                "--output_file",
                "p.jsonl",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "--sample_file",
                str(tmp_path / "p.jsonl"),
                "--input_file",
                str(tmp_path / "u.jsonl"),
                "--output_ref_file",
                str(tmp_path / "ref.txt"),
                "--output_pred_file",
                str(tmp_path / "pred.txt"),
            ]
        )
        == 0
    )
    assert len(e2e_read_lines(tmp_path / "pred.txt")) == 4
    assert e2e_read_lines(tmp_path / "ref.txt", multi_ref=True) == [r["references"] for r in records]
