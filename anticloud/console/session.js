// The session: sign-in, lock, sign-out and the idle timeout, and every request made within it.
//
// Invariants:
// * The token is read from the password field once, sent in the body of POST /console/session and
//   dropped: it is never in storage, a cookie this script sets, the URL or the DOM afterwards.
// * The session cookie is HttpOnly: the page cannot read it and only forgets whom it is signed in as.
// * Beside the cookie, every request carries the session's key (X-Anticloud-Session), which the
//   page holds in memory only: browsers share cookies across the loopback's ports, and this key is
//   what another server there cannot be sent. A reload forgets it, and asks for the token again.
//   Whatever the page held goes with the session, through the ``ended`` hook.

import { $ } from "./dom.js";

const session = {
  person: null,
  key: null,
  idleTimeout: 900,
  idleTimer: 0,
};

// What the rest of the page does when a session starts or ends, and whether it is busy (an answer
// streaming keeps the session alive); set by ``startSessions``.
const hooks = {
  started() {},
  ended() {},
  busy: () => false,
};

/** A request was not made, or not answered, because the session is over: the page already says so. */
export class SignedOut extends Error {}

/** The appliance refused a request; the message is the one line that says why. */
export class Refused extends Error {}

/** Who is signed in, or null. */
export function signedInAs() {
  return session.person;
}

// --- the appliance ---------------------------------------------------------------------------

/** The headers of a request within the session: its key beside the cookie. */
function sessionHeaders(extra = {}) {
  return session.key ? { ...extra, "X-Anticloud-Session": session.key } : { ...extra };
}

/** A request to the appliance, within the session: it restarts the idle clock, and a 401 ends it. */
export async function api(path, { json, method, signal } = {}) {
  const init = { method: method || (json === undefined ? "GET" : "POST"), credentials: "same-origin",
                 cache: "no-store", headers: sessionHeaders({ Accept: "application/json" }), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path, init);
  touched();
  if (response.status === 401 && session.person !== null) {
    signedOut("Your session has ended. Sign in again to continue.");
    throw new SignedOut();
  }
  return response;
}

/** The one line that says why ``response`` was refused: its ``error``, and when to retry a 503. */
export async function refusal(response) {
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

// --- signing in and out ----------------------------------------------------------------------

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
    session.key = String(who.key);
    startSession(who.person, who.idle_timeout);
  } catch (error) {
    $("signin-error").textContent = `The appliance did not answer: ${error.message}`;
  } finally {
    $("signin-button").disabled = false;
  }
}

function startSession(person, idleTimeout) {
  session.person = String(person);
  session.idleTimeout = Number(idleTimeout) || 900;
  $("person").textContent = session.person;
  $("signin-reason").textContent = "";
  $("who").hidden = false;
  $("session-controls").hidden = false;
  $("signin").hidden = true;
  touched();
  hooks.started();
}

/** Back to sign-in with a one-line ``reason``: whatever the page held is gone. */
function signedOut(reason) {
  hooks.ended();
  clearTimeout(session.idleTimer);
  session.person = null;
  session.key = null;
  $("signin-error").textContent = "";
  $("person").textContent = "";
  $("who").hidden = true;
  $("session-controls").hidden = true;
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

// --- the idle timeout ------------------------------------------------------------------------

/** A request was made: the server's idle clock restarted, so the page's does too. */
function touched() {
  clearTimeout(session.idleTimer);
  if (session.person !== null) {
    session.idleTimer = setTimeout(idleCheck, (session.idleTimeout + 2) * 1000);
  }
}

async function idleCheck() {
  if (session.person === null) {
    return;
  }
  if (hooks.busy()) {
    touched();
    return;
  }
  let response;
  try {
    response = await fetch("/console/session", { credentials: "same-origin", cache: "no-store",
                                                 headers: sessionHeaders() });
  } catch {
    touched(); // the appliance did not answer: ask again later
    return;
  }
  const who = response.ok ? await response.json().catch(() => ({ person: null })) : { person: session.person };
  if (who.person === null) {
    signedOut(`Signed out after ${duration(session.idleTimeout)} without activity.`);
  } else {
    touched();
  }
}

function duration(seconds) {
  return seconds % 60 === 0 ? `${seconds / 60} minute${seconds === 60 ? "" : "s"}` : `${seconds} seconds`;
}

// --- start-up --------------------------------------------------------------------------------

/**
 * Wire sign-in, lock and sign-out, and resume the session this browser already has, if any.
 * ``started()`` and ``ended()`` are called as a session starts and ends; ``busy()`` says whether
 * the page is doing something that keeps the session alive.
 */
export async function startSessions({ started, ended, busy }) {
  Object.assign(hooks, { started, ended, busy });
  $("signin-form").addEventListener("submit", signIn);
  $("lock").addEventListener("click", () => endSession("locked", "Locked. Sign in to continue."));
  $("sign-out").addEventListener("click", () => endSession("signed out", "Signed out."));
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
