"""The README a package's recipient reads: how to check it, step by step, and what it proves."""

from __future__ import annotations

from typing import Any

MAX_RUNS_SHOWN = 20


def readme(manifest: dict[str, Any], top: str) -> str:
    """The recipient's README for ``manifest`` (before its ``files`` member is added), in directory ``top``."""
    seg, cp, scope = manifest["segment"], manifest["checkpoint"], manifest["in_scope"]
    runs = scope["runs"]
    shown = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:MAX_RUNS_SHOWN])
    if len(runs) > MAX_RUNS_SHOWN:
        shown += f", ... ({len(runs)} runs in all: see in_scope in manifest.json)"
    asked = _asked(manifest["filter"])
    others = seg["records"] - scope["count"]
    text_records = manifest["content"]["records_with_text"]
    content = manifest["content"]
    lines = [
        "EVIDENCE PACKAGE FROM AN ANTICLOUD APPLIANCE'S LEDGER",
        "",
        f"Ledger        {manifest['ledger_id']}",
        f"Appliance key {manifest['key_id']}",
        f"Asked for     {asked}",
        f"Records       seq {seg['first_seq']}..{seg['last_seq']} ({seg['records']} records), of which"
        f" {scope['count']} in scope: {shown}",
        f"Signed by     a checkpoint of seq {cp['seq']}, made {cp['ts']} ({cp['source']}, record {cp['record_seq']})",
        f"Made          {manifest['created']}",
        "",
        "FILES",
        "  segment.jsonl     the records, one per line, exactly as the ledger holds them",
        "  genesis.jsonl     record 0 of the ledger: it names the appliance's public key and the ledger's id",
        "  checkpoint.json   the appliance's Ed25519 signature over one record of the segment",
        "  manifest.json     what was asked, which records are in scope, the SHA3-256 of every other file",
        *(["  content.jsonl     what was asked and answered in the records in scope, each field with the key",
            "                    and ciphertext that prove it (or the erasure that erased it)"]
          if content["included"] else []),
        "  verify_ledger.py  a verifier that needs nothing but Python 3.11 or later",
        "  README.txt        this file",
        "",
        "HOW TO CHECK IT",
        "",
        "1. Unpack it, or not: the verifier reads the archive in place.",
        f"     tar -xf {top}.tar",
        "",
        "2. Compare the appliance's key with the operator, over a channel other than the one that",
        "   brought you this package (a phone call to a number you already had, a letter, in person).",
        "   Its fingerprint, which the operator sees in `anticloud verify ledger` and was shown at",
        "   `anticloud init`, must be:",
        f"     {manifest['key_id']}",
        "   Anyone can make a ledger and sign it with a key of their own: only this comparison ties",
        "   the package to the appliance. If the operator gives you appliance.pub, pass it as",
        "   --pubkey appliance.pub and the verifier compares it for you.",
        "",
        "3. Run the verifier (the copy here, or one you hold already, which is better):",
        f"     python3 {top}/verify_ledger.py --package {top}.tar",
        f"     python3 {top}/verify_ledger.py --package {top}        (the unpacked directory)",
        "   Checking the signature needs the `cryptography` package (pip install cryptography).",
        "   Exit codes: 0 INTACT, everything below holds; 1 BROKEN, the first bad item is named;",
        "   5 SIGNATURES NOT CHECKED (no cryptography package): the chain holds but who signed it is",
        "   unknown; 2 the package cannot be read.",
        "",
        "WHAT AN INTACT VERDICT PROVES",
        "- Every line of segment.jsonl is a well-formed record whose SHA3-256 is right, each naming the",
        "  hash of the one before it, starting at the seq the manifest states, with no gap or repeat.",
        "- The checkpoint verifies with the key in genesis.jsonl, names the same ledger, and signs the",
        "  hash of a record in the segment: so that record and every one before it in the segment are",
        "  exactly what the appliance had written when it signed. A change to any of them, even with",
        "  every later hash recomputed, no longer matches the signature.",
        "- Every file has the SHA3-256 the manifest lists.",
        "",
        "WHAT IT DOES NOT PROVE",
        "- What came before the first record: it names its predecessor's hash, which is not here.",
        "- Records after the checkpoint's seq, if any: nothing signs them (the verifier counts them).",
        "- The manifest itself is not signed: its hashes find damage in transit, not forgery, and which",
        "  records it calls in scope is the appliance's statement of your question, not a proof that no",
        "  other record answers it.",
        "- Seals (ledger.seal records), which need their whole epoch: verify those on a full copy.",
        "",
        "WHY OTHER RECORDS ARE HERE",
        "The ledger links each record to the next by its hash and has no other proof structure yet. A",
        "record can be tied to the signed checkpoint only through every record between them, so the",
        "segment holds the whole span from the first record in scope to the one the checkpoint signs.",
        (f"{others} of its records are not in scope and are included for that reason alone."
         if others else "Every record of the segment is in scope."),
        "",
        "WHAT THE RECORDS HOLD",
        "An inference.begin names the model and its manifest, who asked (actor or client), the",
        "parameters and prompt_sha3_256: the SHA3-256 of the prompt (its UTF-8 bytes for a completion,",
        "the canonical JSON of the messages for a chat), or input_sha3_256 for embeddings. Its",
        "inference.end holds output_sha3_256, counts, durations and why it ended. Texts are kept only",
        "where the operator set inference.record_content = \"plaintext\".",
        (f"In this package {text_records} record(s) hold prompt, input or output text." if text_records
         else "No record in this package holds prompt, input or output text: only their hashes."),
        *_sealed(content),
        "To check that a text you hold is the one asked, compute its hash and compare:",
        "  python3 -c 'import hashlib,sys; print(\"sha3-256:\" + hashlib.sha3_256(open(sys.argv[1], \"rb\")"
        ".read()).hexdigest())' prompt.txt",
        "",
        "The appliance recorded making this package in its ledger (a ledger.export record naming the",
        "SHA3-256 of manifest.json), after the records it holds.",
        "",
    ]
    return "\n".join(lines)


def _sealed(content: dict[str, Any]) -> list[str]:
    if not content["included"]:
        return ["Where the operator sealed content (record_content = \"sealed\"), a record holds only a",
                "reference to it, and this package does not include it."]
    return [f"Sealed content: the operator chose to disclose it. content.jsonl holds {content['disclosed']} field(s)",
            f"in the clear and names {content['erased']} as erased. The verifier checks each against its record:",
            "the ciphertext's SHA3-256 and the data key's commitment, which the record states; that the",
            "ciphertext opens under that key to exactly the value (this needs the cryptography package);",
            "that an erased field's erasure is a record of the segment; and that no field is missing.",
            "Each data key opens that one inference only."]


def _asked(query: dict[str, Any]) -> str:
    parts = [f"since {query['since']}" if query.get("since") else "",
             f"until {query['until']}" if query.get("until") else "",
             f"person {', '.join(query['persons'])}" if query.get("persons") else ""]
    return "; ".join(p for p in parts if p) or "every record"
