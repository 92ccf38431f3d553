"""GenerationEval's tokenization for METEOR and TER: `' '.join(nltk.word_tokenize(text))`.

`nltk.word_tokenize` = Punkt sentence splitting, then nltk's improved Treebank tokenizer
(`NLTKWordTokenizer`) on each sentence. Punkt can only end a sentence at a `.`, `?` or `!`
followed by whitespace and more text, or directly by one of its "non-word" characters (quotes,
brackets, ...: `F.C.'s`, `Librarians.".`). The Treebank rules are local except those anchored
at the ends of the string (a final period is split off: `1950.` -> `1950 .`; a `"` opening
the string becomes ``). So a sentence boundary changes the tokens only where:
- a `.` is attached to the preceding character and followed by whitespace and more text
  (`born in 1950. He` gives `1950 .` if Punkt ends a sentence there, `1950.` if it does not,
  as after `Mr.` or `U.S.`), or
- a `.`, `?` or `!` is followed directly by a non-word character.
A boundary after `?`/`!` + whitespace, or after a `.` that stands alone or ends `...`, gives the
same tokens either way.

Hence: a text without such a candidate boundary is tokenized exactly without the Punkt model
(the whole text at once; tested against splitting at every candidate). Pre-tokenized text
(microsoft/LoRA's `paper` protocol isolates every non-word character) never has one. Other text
needs nltk's English Punkt model (`punkt.py`); without it `PunktNotFoundError` is raised, never
an approximation. Tokens depend on the nltk version (its Treebank and Punkt rules change).
"""

from nltk.tokenize.destructive import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktLanguageVars

from . import punkt

_TREEBANK = NLTKWordTokenizer()
_CANDIDATE_BOUNDARY = PunktLanguageVars().period_context_re()  # Punkt's own candidate finder


def needs_sentence_splitter(text):
    """True when Punkt's sentence boundaries can change the tokens of `text` (module docstring)."""
    for m in _CANDIDATE_BOUNDARY.finditer(text):
        p = m.start()
        if m.group("next_tok") is None:  # end char directly followed by a non-word character
            return True
        if text[p] == "." and p > 0 and not text[p - 1].isspace() and text[p - 1] != ".":
            return True
    return False


def word_tokenize(text, cache_dir=None):
    """`nltk.word_tokenize(text)` (English) as a list of tokens; see the module docstring."""
    if not needs_sentence_splitter(text):
        return _TREEBANK.tokenize(text)
    sentences = punkt.sentence_tokenizer(cache_dir).tokenize(text)
    return [token for sentence in sentences for token in _TREEBANK.tokenize(sentence)]


def generationeval_tokenize(text, cache_dir=None):
    """GenerationEval's METEOR/TER input: tokens joined by single spaces."""
    return " ".join(word_tokenize(text, cache_dir))
