"""Errors that a user causes and can fix; each message names the file (and line) or the flag.

Programs report them as one line, ``prog: error: message``, and a non-zero exit status
(``lora_nlg.cli.run_program``); a traceback is for bugs (``--debug`` or ``LORA_NLG_DEBUG=1`` shows
one for these too).
"""


class InputError(ValueError):
    """A bad input: a file, a flag value or a combination of them."""


class FormatError(InputError):
    """A file whose content is not what its format says: ``file:line: field: what was expected``."""
