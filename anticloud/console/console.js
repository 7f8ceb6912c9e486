// The console: a client of the appliance's own API, on the page's own origin, with a session cookie.
//
// Invariants:
// * The token is read from the password field once, sent in the body of POST /console/session and
//   dropped: it is never in storage, a cookie this script sets, the URL or the DOM afterwards.
// * Text from the appliance or a model reaches the page only through textContent or createTextNode
//   (markdown.js builds nodes); nothing is ever parsed as HTML, and no style is set from script.
// * The conversation is held in this page's memory only. Locking, signing out, an ended session and
//   New conversation clear it; Export is the one way to keep it.

import { renderMarkdown } from "./markdown.js";

const RECEIPT_TRIES = 25; // the end is appended after the stream's last line: a moment, or a few
const $ = (id) => document.getElementById(id);

const state = {
  person: null,
  idleTimeout: 900,
  idleTimer: 0,
  models: [],
  turns: [],
  generating: null, // {controller, turn} while an answer streams
};

class SignedOut extends Error {}

class Refused extends Error {}

// --- the appliance ---------------------------------------------------------------------------

async function api(path, { json, method, signal } = {}) {
  const init = { method: method || (json === undefined ? "GET" : "POST"), credentials: "same-origin",
                 cache: "no-store", headers: { Accept: "application/json" }, signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path, init);
  touched();
  if (response.status === 401 && state.person !== null) {
    signedOut("Your session has ended. Sign in again to continue.");
    throw new SignedOut();
  }
  return response;
}

/** The one line that says why ``response`` was refused: its ``error``, and when to retry a 503. */
async function refusal(response) {
  let message = `the appliance answered ${response.status}`;
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") {
      message = body.error;
    }
  } catch {
    // not JSON: the status says enough
  }
  if (response.status === 503) {
    const after = response.headers.get("Retry-After");
    return `The appliance is busy or cannot answer now (${message}).` +
      (after ? ` Try again in ${after} s.` : " Try again shortly.");
  }
  return message.charAt(0).toUpperCase() + message.slice(1);
}

// --- session ---------------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const input = $("token");
  const token = input.value.trim();
  input.value = ""; // the field does not keep it either
  $("signin-error").textContent = "";
  if (!token) {
    $("signin-error").textContent = "Type your access token first.";
    input.focus();
    return;
  }
  $("signin-button").disabled = true;
  try {
    const response = await fetch("/console/session", {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ token }),
    });
    if (!response.ok) {
      $("signin-error").textContent = `Not signed in: ${await refusal(response)}`;
      input.focus();
      return;
    }
    const who = await response.json();
    startSession(who.person, who.idle_timeout);
  } catch (error) {
    $("signin-error").textContent = `The appliance did not answer: ${error.message}`;
  } finally {
    $("signin-button").disabled = false;
  }
}

function startSession(person, idleTimeout) {
  state.person = String(person);
  state.idleTimeout = Number(idleTimeout) || 900;
  $("person").textContent = state.person;
  $("signin-reason").textContent = "";
  $("who").hidden = false;
  $("session-controls").hidden = false;
  $("signin").hidden = true;
  showView("chat");
  touched();
  loadModels();
  $("prompt").focus();
}

/** Back to sign-in with a one-line ``reason``: whatever the page held is gone. */
function signedOut(reason) {
  if (state.generating) {
    state.generating.controller.abort();
  }
  clearTimeout(state.idleTimer);
  state.person = null;
  state.models = [];
  clearConversation();
  $("prompt").value = "";
  $("model").replaceChildren();
  $("model-about").textContent = "";
  $("status-list").replaceChildren();
  $("status-loaded").replaceChildren();
  for (const id of ["chat-error", "status-error", "signin-error"]) {
    $(id).textContent = "";
  }
  $("person").textContent = "";
  $("who").hidden = true;
  $("session-controls").hidden = true;
  $("chat").hidden = true;
  $("status").hidden = true;
  $("signin").hidden = false;
  $("signin-reason").textContent = reason;
  $("token").focus();
}

async function endSession(reason, message) {
  try {
    await api("/console/session/end", { json: { reason } });
  } catch (error) {
    if (error instanceof SignedOut) {
      return; // over already
    }
    // the page forgets the session either way; the cookie is HttpOnly and ends with the server's clock
  }
  signedOut(message);
}

/** A request was made: the server's idle clock restarted, so the page's does too. */
function touched() {
  clearTimeout(state.idleTimer);
  if (state.person !== null) {
    state.idleTimer = setTimeout(idleCheck, (state.idleTimeout + 2) * 1000);
  }
}

async function idleCheck() {
  if (state.person === null) {
    return;
  }
  if (state.generating) {
    touched();
    return;
  }
  let response;
  try {
    response = await fetch("/console/session", { credentials: "same-origin", cache: "no-store" });
  } catch {
    touched(); // the appliance did not answer: ask again later
    return;
  }
  const who = response.ok ? await response.json().catch(() => ({ person: null })) : { person: state.person };
  if (who.person === null) {
    signedOut(`Signed out after ${duration(state.idleTimeout)} without activity.`);
  } else {
    touched();
  }
}

function duration(seconds) {
  return seconds % 60 === 0 ? `${seconds / 60} minute${seconds === 60 ? "" : "s"}` : `${seconds} seconds`;
}

// --- models ----------------------------------------------------------------------------------

async function loadModels() {
  try {
    const response = await api("/console/models");
    if (!response.ok) {
      throw new Refused(await refusal(response));
    }
    state.models = (await response.json()).models || [];
  } catch (error) {
    if (!(error instanceof SignedOut)) {
      $("chat-error").textContent = `The models could not be listed: ${error.message}`;
    }
    return;
  }
  const select = $("model");
  const before = select.value;
  select.replaceChildren(...state.models.map((model) => {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = `${model.name} (${model.kind})`;
    return option;
  }));
  const preferred = state.models.find((m) => m.name === before) || state.models.find((m) => m.kind === "chat");
  if (preferred) {
    select.value = preferred.name;
  }
  describeModel();
}

function currentModel() {
  return state.models.find((m) => m.name === $("model").value) || null;
}

function describeModel() {
  const model = currentModel();
  $("send").disabled = model === null || state.generating !== null;
  if (model === null) {
    $("model-about").textContent = "No model is installed: ask your operator to import one.";
    return;
  }
  const signers = (model.signers || []).map((s) => `${s.name} (${s.key_id})`).join(", ") || "nobody";
  const how = model.kind === "chat"
    ? "A chat model: it sees the conversation so far."
    : "A completion model: it continues your text, and does not see earlier turns.";
  $("model-about").textContent = `${how} Signed by ${signers}. Manifest ${model.manifest}.`;
}

// --- conversation ----------------------------------------------------------------------------

function clearConversation() {
  state.turns = [];
  $("conversation").replaceChildren();
  $("empty").hidden = false;
  $("chat-error").textContent = "";
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function addTurn(turn) {
  const item = element("li", `turn ${turn.role}`);
  const speaker = turn.role === "user" ? "You" : turn.model;
  item.append(element("p", "speaker", speaker));
  turn.body = element("div", "answer");
  turn.status = element("p", "state");
  turn.status.hidden = true;
  item.append(turn.body, turn.status);
  if (turn.role === "user") {
    turn.body.classList.add("said");
    renderText(turn);
  } else {
    turn.body.setAttribute("aria-live", "polite");
    turn.body.setAttribute("aria-busy", "true");
    turn.body.setAttribute("aria-label", `Answer from ${turn.model}`);
    const actions = element("div", "turn-actions");
    const copy = element("button", "copy", "Copy answer");
    copy.type = "button";
    copy.addEventListener("click", () => copyAnswer(turn, copy));
    actions.append(copy);
    turn.receiptNode = element("section", "receipt");
    turn.receiptNode.setAttribute("aria-label", "Receipt");
    item.append(actions, turn.receiptNode);
    item.classList.add("streaming");
  }
  turn.node = item;
  state.turns.push(turn);
  $("conversation").append(item);
  $("empty").hidden = true;
  return turn;
}

function renderText(turn) {
  turn.renderPending = false;
  if (turn.role === "user") { // what the person typed, as typed
    turn.body.textContent = turn.content;
  } else {
    turn.body.replaceChildren(renderMarkdown(turn.content));
  }
}

function scheduleRender(turn) {
  if (!turn.renderPending) {
    turn.renderPending = true;
    setTimeout(() => renderText(turn), 40);
  }
  turn.node.scrollIntoView({ block: "end" });
}

function setTurnState(turn, text, kind) {
  turn.status.textContent = text;
  turn.status.className = `state ${kind || ""}`;
  turn.status.hidden = !text;
}

function setGenerating(on) {
  $("stop").disabled = !on;
  $("model").disabled = on;
  $("length").disabled = on;
  describeModel();
  if (!on && document.activeElement === $("stop")) {
    $("prompt").focus();
  }
}

/** What a chat model is sent: the turns so far that were answered (a stopped answer as far as it went). */
function history() {
  return state.turns
    .filter((t) => t.kept && t.content)
    .map((t) => ({ role: t.role, content: t.content }));
}

async function send(event) {
  if (event) {
    event.preventDefault();
  }
  const text = $("prompt").value;
  const model = currentModel();
  if (state.generating || !text.trim() || model === null) {
    return;
  }
  $("chat-error").textContent = "";
  $("prompt").value = "";
  const asked = addTurn({ role: "user", content: text, model: model.name });
  const answer = addTurn({ role: "assistant", content: "", model: model.name, kind: model.kind });
  const controller = new AbortController();
  state.generating = { controller, turn: answer };
  setGenerating(true);
  $("progress").textContent = `${model.name} is answering.`;
  const options = { num_predict: Number($("length").value) };
  const [path, body] = model.kind === "chat"
    ? ["/api/chat", { model: model.name, messages: [...history(), { role: "user", content: text }], stream: true,
                      options }]
    : ["/api/generate", { model: model.name, prompt: text, stream: true, options }];
  let outcome = "done";
  try {
    const response = await api(path, { json: body, signal: controller.signal });
    if (!response.ok) {
      throw new Refused(await refusal(response));
    }
    answer.inference = response.headers.get("x-anticloud-inference");
    await readStream(response, model.kind, answer);
    setTurnState(answer, answer.done ? "" : "The answer ended early.", answer.done ? "" : "error");
  } catch (error) {
    if (error instanceof SignedOut) {
      return;
    }
    if (error.name === "AbortError") {
      outcome = "stopped";
      setTurnState(answer, "Stopped: the rest of this answer was not generated.", "stopped");
    } else {
      outcome = "failed";
      if (!answer.inference) { // nothing was recorded: the question goes back, as it was
        asked.node.remove();
        answer.node.remove();
        state.turns = state.turns.filter((t) => t !== asked && t !== answer);
        $("empty").hidden = state.turns.length > 0;
        if (!$("prompt").value) {
          $("prompt").value = text;
        }
      } else {
        answer.node.classList.add("failed");
        setTurnState(answer, `Failed: ${error.message}`, "error");
      }
      $("chat-error").textContent = error.message;
    }
  } finally {
    if (state.generating && state.generating.turn === answer) {
      state.generating = null;
    }
    renderText(answer);
    answer.node.classList.remove("streaming");
    answer.body.setAttribute("aria-busy", "false");
    answer.outcome = outcome;
    asked.kept = answer.kept = outcome !== "failed";
    setGenerating(false);
  }
  $("progress").textContent = outcome === "stopped" ? "Answer stopped." : "Answer complete.";
  if (answer.inference && state.person !== null) {
    await showReceipt(answer);
  }
}

async function readStream(response, kind, turn) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) {
      break;
    }
    buffer += value;
    let newline = buffer.indexOf("\n");
    while (newline !== -1) {
      takeLine(buffer.slice(0, newline), kind, turn);
      buffer = buffer.slice(newline + 1);
      newline = buffer.indexOf("\n");
    }
  }
  takeLine(buffer, kind, turn);
}

function takeLine(raw, kind, turn) {
  if (!raw.trim()) {
    return;
  }
  const line = JSON.parse(raw);
  if (line.error) {
    throw new Refused(String(line.error));
  }
  const piece = kind === "chat" ? (line.message && line.message.content) || "" : line.response || "";
  if (piece) {
    turn.content += piece;
    scheduleRender(turn);
  }
  if (line.done) {
    turn.done = line;
  }
}

function stop() {
  if (state.generating) {
    state.generating.controller.abort();
  }
}

function newConversation() {
  stop();
  clearConversation();
  $("prompt").focus();
  $("progress").textContent = "New conversation.";
}

async function copyAnswer(turn, button) {
  try {
    await navigator.clipboard.writeText(turn.content);
    button.textContent = "Copied";
    $("progress").textContent = "Answer copied.";
    setTimeout(() => { button.textContent = "Copy answer"; }, 2000);
  } catch (error) {
    $("chat-error").textContent = `The answer could not be copied: ${error.message}`;
  }
}

// --- receipts --------------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function showReceipt(turn) {
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

function fact(list, label, value, field) {
  const dd = element("dd", "", value === undefined || value === null ? "—" : String(value));
  if (field) {
    dd.dataset.field = field;
  }
  list.append(element("dt", "", label), dd);
  return dd;
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
    const link = element("a", "", "download the proof of the begin record");
    link.href = r.proof.url;
    link.download = `inference-${r.inference}-begin.tlog-proof`;
    proof.append(link);
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

// --- export and print ------------------------------------------------------------------------

function exportConversation() {
  const conversation = {
    format: "anticloud-console-conversation/1",
    exported: new Date().toISOString(),
    appliance: window.location.origin,
    person: state.person,
    turns: state.turns.map((t) => ({
      role: t.role, model: t.model, content: t.content,
      ...(t.role === "assistant" ? { outcome: t.outcome || "streaming", inference: t.inference || null,
                                     receipt: t.receipt || null } : {}),
    })),
  };
  const blob = new Blob([JSON.stringify(conversation, null, 2) + "\n"], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const link = element("a");
  link.href = url;
  link.download = `conversation-${conversation.exported.replace(/[:.]/g, "-")}.json`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  $("progress").textContent = "Conversation exported.";
}

// --- status ----------------------------------------------------------------------------------

function showView(name) {
  $("chat").hidden = name !== "chat";
  $("status").hidden = name !== "status";
  $("show-chat").setAttribute("aria-pressed", String(name === "chat"));
  $("show-status").setAttribute("aria-pressed", String(name === "status"));
}

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

async function loadStatus() {
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

// --- wiring ----------------------------------------------------------------------------------

function onKeys(event) {
  if (event.key === "Escape" && state.generating) {
    event.preventDefault();
    stop();
  }
}

function onPromptKeys(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey &&
      !event.metaKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
}

async function start() {
  $("signin-form").addEventListener("submit", signIn);
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", onPromptKeys);
  document.addEventListener("keydown", onKeys);
  $("stop").addEventListener("click", stop);
  $("new-conversation").addEventListener("click", newConversation);
  $("export").addEventListener("click", exportConversation);
  $("print").addEventListener("click", () => window.print());
  $("model").addEventListener("change", describeModel);
  $("lock").addEventListener("click", () => endSession("locked", "Locked. Sign in to continue."));
  $("sign-out").addEventListener("click", () => endSession("signed out", "Signed out."));
  $("show-chat").addEventListener("click", () => { showView("chat"); $("prompt").focus(); });
  $("show-status").addEventListener("click", () => { showView("status"); loadStatus(); });
  $("refresh-status").addEventListener("click", loadStatus);
  try {
    const response = await fetch("/console/session", { credentials: "same-origin", cache: "no-store",
                                                       headers: { Accept: "application/json" } });
    const who = response.ok ? await response.json() : { person: null };
    if (who.person) {
      startSession(who.person, who.idle_timeout);
      return;
    }
  } catch (error) {
    $("signin-error").textContent = `The appliance did not answer: ${error.message}`;
  }
  $("signin").hidden = false;
  $("token").focus();
}

start();
