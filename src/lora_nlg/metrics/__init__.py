"""Evaluation metrics that equal the official scorers (see docs in eval/README.md).

Each metric is a pure function over lists of strings (one hypothesis per segment, a list of
references per segment):

- `bleu.bleu(hyps, refs, variant)`: mteval-v13a (E2E), multi-bleu-detok (GenerationEval),
  multi-bleu[-lc] (WebNLG 2017 challenge);
- `nist.nist(hyps, refs, variant)`: mteval-v13a-sig NIST (E2E) and the scorer's `-p` variant;
- `meteor.meteor(hyps, refs)` / `meteor_subsets`: METEOR 1.5 jar (Java);
- `ptb.ptb_tokenize(texts)`: the E2E scorer's PTB tokenization (Java);
- `rouge.rouge_l(tok_hyps, tok_refs)`, `cider.cider_d(tok_hyps, tok_refs)`: pycocoevalcap's
  ROUGE_L and CIDEr-D on PTB tokens;
- `ter.corpus_ter(hyps, refs)`: GenerationEval's pyter3 TER (exact, faster);
- `word_tokenize.generationeval_tokenize(text)`: nltk.word_tokenize as GenerationEval uses it.

`evaluate.main(argv)` is the command line (`eval/eval.sh`). The package is `lora_nlg.metrics`
(never a top-level `eval`, which would shadow the builtin).
"""
