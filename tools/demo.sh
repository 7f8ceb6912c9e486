#!/usr/bin/env bash
# `make run`: a walk-through of the audit ledger, in short headed steps.
# The full inference job replaces this once the engine lands; the ledger steps stay.
set -euo pipefail
cd "$(dirname "$0")/.."
export ANTICLOUD_HOME="${ANTICLOUD_HOME:-$PWD/.anticloud}"
AUDIT="$ANTICLOUD_HOME/auditor"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. The appliance home ($ANTICLOUD_HOME)"
if [ -f "$ANTICLOUD_HOME/ledger.jsonl" ]; then
  echo "already initialised; reusing it"
else
  anticloud init
fi

step "2. The appliance signs checkpoints; an auditor takes away the key and the latest"
anticloud ledger checkpoint
anticloud ledger checkpoint
mkdir -p "$AUDIT"
cp "$ANTICLOUD_HOME/appliance.pub" "$AUDIT/appliance.pub"
anticloud ledger checkpoint --out "$AUDIT/checkpoint.json"

step "3. The last records, as people read them"
anticloud ledger tail -n 3

step "4. The auditor verifies the ledger against what they hold"
anticloud verify ledger --pubkey "$AUDIT/appliance.pub" --checkpoint "$AUDIT/checkpoint.json"

step "5. The same verdict from the standard-library tool (nothing else installed)"
python3 -I -S tools/verify_ledger.py "$ANTICLOUD_HOME/ledger.jsonl" --pubkey "$AUDIT/appliance.pub"

copy=$(mktemp --suffix=.jsonl)
trap 'rm -f "$copy"' EXIT
step "6. Someone backdates an old record by a year (in a copy)"
python3 - "$ANTICLOUD_HOME/ledger.jsonl" "$copy" <<'PY'
import sys
lines = open(sys.argv[1], "rb").read().splitlines(keepends=True)
at = lines[1].rindex(b'"ts":"') + 9  # the last digit of the year
lines[1] = lines[1][:at] + bytes([lines[1][at] - 1]) + lines[1][at + 1:]
open(sys.argv[2], "wb").write(b"".join(lines))
PY
anticloud verify ledger "$copy" || echo "(exit code $?)"

step "7. Someone rolls the ledger back to an older copy"
head -n 2 "$ANTICLOUD_HOME/ledger.jsonl" > "$copy"
echo "the chain alone finds nothing wrong:"
anticloud verify ledger "$copy" | head -n 3
echo "the auditor's checkpoint does:"
anticloud verify ledger "$copy" --checkpoint "$AUDIT/checkpoint.json" || echo "(exit code $?)"

step "Done. Run 'make test' for the whole suite."
