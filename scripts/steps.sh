# Logged steps for scripts/run.sh and scripts/demo.sh (sourced, not run). Before sourcing set
#   PROG  the script's name, for messages
#   OUT   its output folder: every step's command and duration go to OUT/run.log, its output to
#         OUT/logs/<step>.log (and to the terminal)
# step NAME COMMAND... runs COMMAND; if it fails, the script stops with the step's name, its exit
# status and where its output is.

quote() { local out="" a; for a in "$@"; do out+="$(printf '%q' "$a") "; done; echo "${out% }"; }

log() { echo "[$PROG $(date +%H:%M:%S)] $*" | tee -a "$OUT/run.log" >&2; }

step() {
  local name="$1"; shift
  local start=$SECONDS rc=0
  mkdir -p "$OUT/logs"
  log "step $name: $(quote "$@")"
  "$@" 2>&1 | tee "$OUT/logs/$name.log" || rc=$?
  if ((rc != 0)); then
    log "FAILED step $name (exit $rc) after $((SECONDS - start)) s; its output: $OUT/logs/$name.log"
    echo "$PROG: step '$name' failed (exit $rc): $(quote "$@")" >&2
    exit "$rc"
  fi
  log "step $name done in $((SECONDS - start)) s"
}

# fail NAME MESSAGE: stop with the step's name when a step's result is unusable.
fail() {
  log "FAILED step $1: $2"
  echo "$PROG: step '$1' failed: $2" >&2
  exit 1
}
