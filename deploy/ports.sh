# Sourced by deploy/local/stack.sh and deploy/compose/run.sh: the local stacks' host ports from
# their one definition, deploy/ports.env (Python reads the same file:
# tools/localstack/src/tickpipe_localstack/ports.py), and the KEY=value reader of env files
# that both scripts use for that file and for their .env files.

PORTS_FILE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)/ports.env

# FILE KEY -> the value of the last KEY=value line (an `export ` before it and quotes around
# the value allowed). Prints nothing when the file is missing or does not set KEY.
env_file_value() {
  local file=$1 key=$2 line value='' re
  re="^[[:space:]]*(export[[:space:]]+)?${key}[[:space:]]*=[[:space:]]*(.*)\$"
  [[ -r $file ]] || return 0
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ $re ]]; then
      value=${BASH_REMATCH[2]}
      value=${value%"${value##*[![:space:]]}"}
      if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
        value=${BASH_REMATCH[1]}
      fi
    fi
  done <"$file"
  printf '%s' "$value"
}

# [ENV_FILE...]: set every TICKPIPE_..._PORT that deploy/ports.env names to the port in effect:
# the environment's value, else the first ENV_FILE that sets it, else the file's default. Only
# the shell variable is set (exported ones stay exported). A value that is not a port number
# ends the script (exit 2), saying which variable and where its default lives.
load_ports() {
  local line name value file
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*(TICKPIPE_[A-Z_]+_PORT)= ]] || continue
    name=${BASH_REMATCH[1]}
    value=${!name:-}
    for file in "$@"; do
      [[ -n $value ]] && break
      value=$(env_file_value "$file" "$name")
    done
    [[ -n $value ]] || value=$(env_file_value "$PORTS_FILE" "$name")
    if ! [[ $value =~ ^[0-9]+$ ]] || ((10#$value < 1 || 10#$value > 65535)); then
      printf '%s: %s must be a port number, not %s (its default is in %s)\n' \
        "${0##*/}" "$name" "'$value'" "$PORTS_FILE" >&2
      exit 2
    fi
    printf -v "$name" '%s' "$((10#$value))"
  done <"$PORTS_FILE"
}
