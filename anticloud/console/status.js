// The status view: the air gap and its evidence, the engine and its network namespace, the ledger's
// head and last verification, and the models loaded right now.

import { $, element, fact } from "./dom.js";
import { api, refusal, Refused, SignedOut } from "./session.js";

function text(value) {
  if (value === null || value === undefined) {
    return "—";
  }
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

/** What the air-gap check saw, in a line: the interfaces and routes that reach a network, or none. */
function evidence(seen) {
  if (!seen || typeof seen !== "object") {
    return text(seen);
  }
  const reach = [...(seen.interfaces || []).map((i) => `interface ${i.name} up` +
                   ((i.addresses || []).length ? ` (${i.addresses.join(", ")})` : "")),
                 ...(seen.routes || []).map((r) => `route ${r}`)];
  return reach.length ? reach.join("; ") : "no interface up but loopback, and no route out";
}

export async function loadStatus() {
  $("status-error").textContent = "";
  let status;
  try {
    const response = await api("/console/status");
    if (!response.ok) {
      throw new Refused(await refusal(response));
    }
    status = await response.json();
  } catch (error) {
    if (!(error instanceof SignedOut)) {
      $("status-error").textContent = `The status could not be read: ${error.message}`;
    }
    return;
  }
  const list = $("status-list");
  list.replaceChildren();
  const airgap = status.airgap || {};
  fact(list, "Air gap", airgap.state, "airgap");
  fact(list, "Evidence", evidence(airgap.evidence), "evidence");
  fact(list, "Engine", text(status.engine), "engine");
  fact(list, "Network namespace", status.namespace === true ? "the engine's own (isolated from the host's)"
    : status.namespace === false ? "the host's" : text(status.namespace), "namespace");
  const ledger = status.ledger || {};
  fact(list, "Ledger head", `#${ledger.seq} at ${text(ledger.ts)}`, "ledger-seq");
  fact(list, "Head hash", ledger.hash, "ledger-hash");
  const verified = ledger.verified || {};
  const verdict = fact(list, "Verification", verified.verdict === undefined ? "not verified yet"
    : `${verified.verdict}: ${text(verified.records)} records, at ${text(verified.at)}`, "verified");
  verdict.classList.add(verified.verdict === "intact" ? "good" : "bad");
  const loaded = status.loaded || [];
  $("status-loaded").replaceChildren(...(loaded.length ? loaded.map((m) => element("li", "",
    `${m.name || m.model}${m.size ? `, ${Math.round(m.size / 1e6)} MB` : ""}`))
    : [element("li", "quiet", "None loaded right now.")]));
  $("status-time").textContent = `As of ${new Date().toLocaleTimeString()}`;
}

/** Forget what the view showed: the session it was read in is over. */
export function clearStatus() {
  $("status-list").replaceChildren();
  $("status-loaded").replaceChildren();
  $("status-error").textContent = "";
}
