// An answer's receipt: fetched from the appliance once the ledger has recorded the answer's end
// (a 202 until then, asked again shortly), rendered as facts, the ledger records themselves, and a
// link to the proof of the begin record once a signed checkpoint holds it.

import { element, fact } from "./dom.js";
import { api, refusal, SignedOut } from "./session.js";

const RECEIPT_TRIES = 25; // the end is appended after the stream's last line: a moment, or a few

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** Fetch the receipt of ``turn`` (its ``inference``) into ``turn.receipt`` and show it in ``turn.receiptNode``. */
export async function showReceipt(turn) {
  const node = turn.receiptNode;
  node.replaceChildren(element("p", "quiet", "Receipt: waiting for the ledger…"));
  let problem = "the ledger has not recorded the end of this answer yet";
  try {
    for (let attempt = 0; attempt < RECEIPT_TRIES; attempt += 1) {
      const response = await api(`/console/receipt/${encodeURIComponent(turn.inference)}`);
      if (response.status === 202) { // its end is not recorded yet: ask again shortly
        await sleep(Math.min(100 * (attempt + 1), 1000));
        continue;
      }
      if (response.ok) {
        turn.receipt = await response.json();
        renderReceipt(turn);
        return;
      }
      problem = await refusal(response);
      break;
    }
  } catch (error) {
    if (error instanceof SignedOut) {
      return;
    }
    problem = error.message;
  }
  const retry = element("button", "", "Try again");
  retry.type = "button";
  retry.addEventListener("click", () => showReceipt(turn));
  node.replaceChildren(element("p", "error", `Receipt not available: ${problem}`), retry);
}

function renderReceipt(turn) {
  const r = turn.receipt;
  const begin = r.begin || {};
  const end = r.end || {};
  const list = element("dl", "facts");
  fact(list, "Inference", r.inference, "inference");
  const seqs = fact(list, "Ledger records", "");
  const beginSeq = element("span", "", String(begin.seq));
  beginSeq.dataset.field = "begin-seq";
  const endSeq = element("span", "", String(end.seq));
  endSeq.dataset.field = "end-seq";
  seqs.append("#", beginSeq, " (begin), #", endSeq, " (end)");
  fact(list, "Model", r.model, "model");
  fact(list, "Manifest", r.manifest, "manifest");
  fact(list, "Person", r.person, "person");
  fact(list, "Time", begin.ts, "time");
  const endData = ((r.records || [])[1] || {}).data || {};
  const counted = end.prompt_tokens !== null && end.prompt_tokens !== undefined;
  fact(list, "Tokens", counted ? `${end.prompt_tokens} in, ${end.completion_tokens} out`
    : `not counted (the generation did not finish)${endData.output_chars === undefined ? ""
      : `; ${endData.output_chars} characters out`}`, "tokens");
  const gap = begin.airgap === end.airgap || end.airgap === undefined
    ? String(begin.airgap) : `${begin.airgap} at the start, ${end.airgap} at the end`;
  fact(list, "Air gap", gap, "airgap");
  fact(list, "Ended", end.done_reason, "done-reason");
  fact(list, "Content kept", r.content, "content");
  const proof = fact(list, "Proof", r.proof ? `signed in checkpoint #${r.proof.checkpoint_seq}; `
    : "not yet in a signed checkpoint", "proof");
  if (r.proof && r.proof.url) { // a C2SP tlog-proof, checked offline with the appliance's verifier key
    const button = element("button", "link", "download the proof of the begin record");
    button.type = "button";
    button.addEventListener("click", () => downloadProof(r.proof.url, `inference-${r.inference}-begin.tlog-proof`));
    proof.append(button);
  }

  const records = element("pre", "records");
  records.id = `records-${r.inference}`;
  records.textContent = (r.records || []).map((rec) => JSON.stringify(rec, null, 2)).join("\n\n");
  records.hidden = true;
  records.setAttribute("aria-label", "The receipt's ledger records");
  const toggle = element("button", "show-records", "Show the ledger records");
  toggle.type = "button";
  toggle.setAttribute("aria-expanded", "false");
  toggle.setAttribute("aria-controls", records.id);
  toggle.addEventListener("click", () => {
    records.hidden = !records.hidden;
    toggle.setAttribute("aria-expanded", String(!records.hidden));
    toggle.textContent = records.hidden ? "Show the ledger records" : "Hide the ledger records";
  });
  turn.receiptNode.replaceChildren(element("h3", "", "Receipt"), list, toggle, records);
}

/** Fetch the proof within the session (its key is a header, so no plain link can carry it) and save it. */
async function downloadProof(url, name) {
  const response = await api(url);
  if (!response.ok) {
    return;
  }
  const link = element("a", "", name);
  link.href = URL.createObjectURL(await response.blob());
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}
