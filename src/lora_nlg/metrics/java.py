"""Java for the official jars: where it is, which version, and the jars PyPI `pycocoevalcap` ships.

METEOR 1.5 and the Stanford PTB tokenizer (CoreNLP 3.4.1) are Java programs; the official
scorers run them from the jars inside `pycocoevalcap`. Every JVM here is started with UTF-8 as
its default charset and an en-US locale, so results do not depend on the caller's locale
(Java 17 takes its default charset from the locale; METEOR prints numbers with the locale's
decimal separator).
"""

import functools
import os
import shutil
import subprocess


class JavaNotFoundError(RuntimeError):
    """Raised when a metric needs Java and no `java` executable can be run."""


# Flags for every JVM: locale-independent text and numbers (see module docstring).
JVM_FLAGS = (
    "-Dfile.encoding=UTF-8",
    "-Dsun.stdout.encoding=UTF-8",
    "-Dsun.stderr.encoding=UTF-8",
    "-Duser.language=en",
    "-Duser.country=US",
)


# Short JVMs (PTB tokenizer, METEOR with a cut-down paraphrase table): the C1 compiler only and
# the serial collector. C2 compilation costs more CPU than it saves in a run of seconds: METEOR
# on the E2E test set takes ~5 s of CPU instead of ~12 s. Java arithmetic is deterministic
# across compiler tiers; the output is byte-identical (tested, also against -Xint).
SHORT_RUN_FLAGS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


def pycocoevalcap_dir():
    """Folder of the installed `pycocoevalcap` package (a namespace package: no __file__)."""
    import pycocoevalcap

    return list(pycocoevalcap.__path__)[0]


def meteor_jar():
    """METEOR 1.5 jar; its `data/paraphrase-en.gz` lies beside it (found relative to the jar)."""
    return os.path.join(pycocoevalcap_dir(), "meteor", "meteor-1.5.jar")


def corenlp_jar():
    """Stanford CoreNLP 3.4.1 jar with `edu.stanford.nlp.process.PTBTokenizer`."""
    return os.path.join(pycocoevalcap_dir(), "tokenizer", "stanford-corenlp-3.4.1.jar")


def java_executable():
    """Path of `java` ($JAVA_HOME/bin/java first, then PATH); raises JavaNotFoundError."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return os.path.join(home, "bin", "java")
    found = shutil.which("java")
    if found is None:
        raise JavaNotFoundError(
            "Java was not found (no `java` on PATH, no $JAVA_HOME/bin/java). METEOR 1.5 and the PTB "
            "tokenizer (needed for METEOR, ROUGE_L and CIDEr as the official scorers compute them) "
            "run on Java >= 8: install a JDK or JRE, e.g. `apt-get install default-jre-headless`."
        )
    return found


@functools.lru_cache(maxsize=1)
def java_version():
    """First line of `java -version` (e.g. 'openjdk version "17.0.15" 2025-04-15')."""
    out = subprocess.run([java_executable(), "-version"], capture_output=True, text=True, check=True)
    lines = (out.stderr or out.stdout).strip().splitlines()
    return lines[0] if lines else "unknown"


def java_available():
    """True when `java -version` runs."""
    try:
        java_version()
    except (JavaNotFoundError, OSError, subprocess.CalledProcessError):
        return False
    return True


def java_command(*args, heap="2G", short_run=True):
    """`java -Xmx<heap> <JVM_FLAGS> [SHORT_RUN_FLAGS] args...` as a list for subprocess."""
    return [java_executable(), f"-Xmx{heap}", *JVM_FLAGS, *(SHORT_RUN_FLAGS if short_run else ()), *args]
