# shellcheck shell=bash
# Functions shared by launch/tpu_vm.sh and launch/gpu_cluster.sh, which source
# this file from their own directory (so a copy of launch/ works from any
# directory).  Not a script of its own: it only defines names.
#
# The sourcing script defines usage() (printed by die_usage) and may set
# DRY_RUN=1 (run_cmd) before calling these.  Written for bash 3.2 as well
# (macOS): no associative arrays, `wait -n` or `mapfile`, and empty arrays are
# expanded as ${a[@]+"${a[@]}"} because `set -u` rejects "${a[@]}" there.

PROG=${0##*/}
# shellcheck disable=SC2034  # read by the scripts
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=0        # --dry-run: run_cmd prints commands instead of running them
EXTRA_ARGS=()    # arguments for main: --extra (split_words) and those after --

# A usage error: the message, then the usage, on stderr; exit status 2.
die_usage() {
  printf '%s: %s\n\n' "$PROG" "$1" >&2
  usage >&2
  exit 2
}

# Any other error: the message on stderr; exit status 1.
die() {
  printf '%s: %s\n' "$PROG" "$1" >&2
  exit 1
}

# For "--flag value": $1 is the flag, and a value must follow it.
need_value() {
  [ "$#" -ge 2 ] || die_usage "$1 needs a value"
}

# Quote one word so that a POSIX shell reads it back unchanged.  Single quotes
# (not printf %q) because the result is also parsed by other shells (the TPU
# workers' login shell) and by tests, and $'...' is not understood everywhere.
shq() {
  # ' becomes '\'' ; kept in variables because quote handling inside ${//}
  # differs between bash versions.
  local q="'" r="'\\''"
  case $1 in
    '' | *[!A-Za-z0-9_@%+=:,./-]*) printf "'%s'" "${1//$q/$r}" ;;
    *) printf '%s' "$1" ;;
  esac
}

# All arguments quoted and joined by spaces: a command line a shell reads back
# as exactly these words.
shjoin() {
  local out='' w
  for w in "$@"; do
    out+="${out:+ }$(shq "$w")"
  done
  printf '%s' "$out"
}

# Split $1 into words the way a shell splits a command line, without expanding
# or running anything (no eval), and append them to EXTRA_ARGS.
# shellcheck disable=SC1003  # '\' is a backslash, not an escaped quote
split_words() {
  local s=$1 n=${#1} i=0 c q='' word='' inword=0
  while [ "$i" -lt "$n" ]; do
    c=${s:i:1}
    if [ "$q" = "'" ]; then
      if [ "$c" = "'" ]; then q=''; else word+=$c; fi
    elif [ "$q" = '"' ]; then
      if [ "$c" = '"' ]; then
        q=''
      elif [ "$c" = '\' ] && [ $((i + 1)) -lt "$n" ] && [[ ${s:i+1:1} == [\"\\\$\`] ]]; then
        i=$((i + 1))
        word+=${s:i:1}
      else
        word+=$c
      fi
    else
      case $c in
        ' ' | $'\t' | $'\n')
          if [ "$inword" = 1 ]; then EXTRA_ARGS+=("$word"); fi
          word='' inword=0 ;;
        "'" | '"') q=$c inword=1 ;;
        '\')
          inword=1
          if [ $((i + 1)) -lt "$n" ]; then i=$((i + 1)); word+=${s:i:1}; fi ;;
        *) word+=$c inword=1 ;;
      esac
    fi
    i=$((i + 1))
  done
  [ -z "$q" ] || die_usage "unbalanced $q quote in --extra: $s"
  if [ "$inword" = 1 ]; then EXTRA_ARGS+=("$word"); fi
}

# Set MAIN to the training command run with the interpreter $1: main with
# --config=$CONFIG, --workdir=$WORKDIR and EXTRA_ARGS.
main_command() {
  # shellcheck disable=SC2034  # read by the scripts
  MAIN=("$1" -m pix2seq_d_jax.main "--config=$CONFIG" "--workdir=$WORKDIR"
    ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
}

# Run a command, or with --dry-run print it as one '+ '-prefixed line that a
# shell reads back as the same words.  Real runs echo it to stderr too.
run_cmd() {
  local line
  line="+ $(shjoin "$@")"
  if [ "$DRY_RUN" = 1 ]; then
    printf '%s\n' "$line"
    return 0
  fi
  printf '%s\n' "$line" >&2
  "$@"
}
