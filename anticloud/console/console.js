// The console's page: start-up, and the chat (the models, a streamed answer, stop, export, print).
// A client of the appliance's own API, on the page's own origin, with a session cookie (session.js).
//
// Invariants:
// * Text from the appliance or a model reaches the page only through textContent or createTextNode
//   (markdown.js builds nodes); nothing is ever parsed as HTML, and no style is set from script.
// * The conversation is held in this page's memory only. Locking, signing out, an ended session and
//   New conversation clear it; Export is the one way to keep it.

import { $, element } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { showReceipt } from "./receipts.js";
import { api, refusal, Refused, SignedOut, signedInAs, startSessions } from "./session.js";
import { clearStatus, loadStatus } from "./status.js";

const state = {
  models: [],
  turns: [],
  generating: null, // {controller, turn} while an answer streams
};

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
  if (answer.inference && signedInAs() !== null) {
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

// --- export and print ------------------------------------------------------------------------

function exportConversation() {
  const conversation = {
    format: "anticloud-console-conversation/1",
    exported: new Date().toISOString(),
    appliance: window.location.origin,
    person: signedInAs(),
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

// --- views and wiring ----------------------------------------------------------------------------------

function showView(name) {
  $("chat").hidden = name !== "chat";
  $("status").hidden = name !== "status";
  $("show-chat").setAttribute("aria-pressed", String(name === "chat"));
  $("show-status").setAttribute("aria-pressed", String(name === "status"));
}

function sessionStarted() {
  showView("chat");
  loadModels();
  $("prompt").focus();
}

/** The session is over: what it showed goes, and an answer still streaming stops. */
function sessionEnded() {
  if (state.generating) {
    state.generating.controller.abort();
  }
  state.models = [];
  clearConversation();
  $("prompt").value = "";
  $("model").replaceChildren();
  $("model-about").textContent = "";
  clearStatus();
  $("chat").hidden = true;
  $("status").hidden = true;
}

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

function start() {
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", onPromptKeys);
  document.addEventListener("keydown", onKeys);
  $("stop").addEventListener("click", stop);
  $("new-conversation").addEventListener("click", newConversation);
  $("export").addEventListener("click", exportConversation);
  $("print").addEventListener("click", () => window.print());
  $("model").addEventListener("change", describeModel);
  $("show-chat").addEventListener("click", () => { showView("chat"); $("prompt").focus(); });
  $("show-status").addEventListener("click", () => { showView("status"); loadStatus(); });
  $("refresh-status").addEventListener("click", loadStatus);
  startSessions({ started: sessionStarted, ended: sessionEnded, busy: () => state.generating !== null });
}

start();
