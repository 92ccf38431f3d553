"""PTB tokenization as the official E2E scorer does it (pycocoevalcap `PTBTokenizer`), in one JVM.

Stanford CoreNLP 3.4.1 `PTBTokenizer -preserveLines -lowerCase` (the jar in pycocoevalcap), then
the punctuation tokens in pycocoevalcap's list are dropped. Lowercases; maps `£` to `#`, `(` to
`-lrb-` (kept: the list holds the upper-case form). METEOR, ROUGE_L and CIDEr of the E2E scorer
score these tokens.

pycocoevalcap starts one JVM for the references and another for the outputs; tokenization is
line by line (`-preserveLines`), so one JVM for both gives the same tokens. Characters the
tokenizer takes as line breaks (\\r, \\v, \\f, U+2028, U+2029) are replaced by spaces, as
pycocoevalcap does for \\n; otherwise lines would shift (pycocoevalcap would silently misalign).
"""

import os
import subprocess
import tempfile

from . import java

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\u2028\u2029"})


def ptb_command(path):
    """The tokenizer command line for a file of one text per line."""
    return java.java_command(
        "-cp",
        java.corenlp_jar(),
        "edu.stanford.nlp.process.PTBTokenizer",
        "-preserveLines",
        "-lowerCase",
        path,
        heap="1G",
    )


def ptb_tokenize(texts):
    """PTB-tokenize each text (one JVM); returns space-joined lower-case tokens per text.

    texts: list of str. Returns a list of str of the same length, e.g.
    'The Café costs £20 (cheap).' -> 'the café costs # 20 -lrb- cheap -rrb-'.
    """
    texts = [t.translate(_LINE_BREAKS) for t in texts]
    if not texts:
        return []
    fd, path = tempfile.mkstemp(prefix="lora-nlg-ptb-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(texts))
        out = subprocess.run(ptb_command(path), capture_output=True, check=False)
    finally:
        os.unlink(path)
    if out.returncode != 0:
        raise RuntimeError(
            "PTBTokenizer failed (exit %d): %s" % (out.returncode, out.stderr.decode("utf-8", "replace")[-2000:])
        )
    lines = out.stdout.decode("utf-8").split("\n")
    # The output may end with a newline that the input lacked.
    while len(lines) > len(texts) and lines[-1] == "":
        lines.pop()
    if len(lines) != len(texts):
        raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for {len(texts)} texts")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS) for line in lines]
