// The labelling page. It talks only to the JSON API of mmft/label/server.py.
//
// Everything the server sends (prompts, captions, names) is model output or user input, so
// it is inserted with textContent, never innerHTML: markup in a caption shows as text.
"use strict";

const TOKEN_KEY = "mmft-label-token";
const KEYS = { "1": "A", "2": "B", "3": "tie", "4": "both_bad" };

const state = {
  token: null,
  pairId: null, // the pair on screen, null when none
  busy: false, // one request at a time, so a double key press cannot label the next pair
  imageUrl: null, // blob: URL of the image on screen, revoked when replaced
};

const $ = (id) => document.getElementById(id);

class AuthError extends Error {}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// Calls the API with the token; returns {status, data}. 409 is an answer, not a failure.
async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + state.token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (response.status === 401) {
    showLogin("That token was not accepted. Check it and try again.");
    throw new AuthError("unauthorized");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null; // an error page without JSON; the status says enough
  }
  if (!response.ok && response.status !== 409) {
    throw new Error((data && data.detail) || response.status + " " + response.statusText);
  }
  return { status: response.status, data };
}

function show(section) {
  for (const id of ["login", "task", "finished"]) $(id).hidden = id !== section;
  $("logout").hidden = section === "login";
}

function showLogin(message) {
  state.token = null;
  state.pairId = null;
  localStorage.removeItem(TOKEN_KEY);
  $("login-error").textContent = message || "";
  $("who").textContent = "";
  $("progress").textContent = "";
  show("login");
  $("token-input").focus();
}

function setBusy(busy) {
  state.busy = busy;
  for (const button of document.querySelectorAll("main button, #finished button")) button.disabled = busy;
}

// Shows the pair's image; on failure shows none and says so, and the pair can be skipped.
async function showImage(url) {
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = null;
  $("image").removeAttribute("src");
  const response = await fetch(url, { headers: { Authorization: "Bearer " + state.token } });
  if (!response.ok) {
    setStatus("The image failed to load (" + response.status + "); skip this pair with s.", true);
    return;
  }
  state.imageUrl = URL.createObjectURL(await response.blob());
  $("image").src = state.imageUrl;
}

// Fetches and shows the next pair (or the "finished" view).
async function loadNext() {
  // Until the next pair is fully shown, no label may go to the pair that was on screen.
  state.pairId = null;
  const { data } = await api("GET", "/api/next");
  $("progress").textContent = data.progress.done + " / " + data.progress.total + " labelled";
  $("who").textContent = "as " + data.labeler;
  if (data.done) {
    $("task").dataset.pairId = "";
    show("finished");
    return;
  }
  $("prompt").textContent = data.prompt;
  $("caption-a").textContent = data.caption_a;
  $("caption-b").textContent = data.caption_b;
  await showImage(data.image_url);
  state.pairId = data.pair_id;
  // Marks which pair is on screen once it is fully shown (the browser tests wait on it).
  $("task").dataset.pairId = data.pair_id;
  show("task");
}

// Runs one user action with the page locked, then shows what comes next.
async function run(action) {
  if (state.busy || !state.token) return;
  setBusy(true);
  try {
    await action();
    await loadNext();
  } catch (err) {
    if (!(err instanceof AuthError)) setStatus("Error: " + err.message + " (nothing was lost; try again)", true);
  } finally {
    setBusy(false);
  }
}

// With no pair on screen (the last load failed), any action retries the load instead.
const reload = () => run(async () => {});

function choose(choice) {
  const pairId = state.pairId;
  if (pairId === null) return reload();
  run(async () => {
    await api("POST", "/api/label", { pair_id: pairId, choice });
    setStatus("Saved " + choice + " for " + pairId + ".");
  });
}

function skip() {
  const pairId = state.pairId;
  if (pairId === null) return reload();
  run(async () => {
    await api("POST", "/api/skip", { pair_id: pairId });
    setStatus("Skipped " + pairId + "; it comes back at the end.");
  });
}

function undo() {
  run(async () => {
    const { status, data } = await api("POST", "/api/undo", {});
    setStatus(status === 409 ? "Nothing to undo." : "Undid " + data.choice + " for " + data.pair_id + ".");
  });
}

function start(token) {
  state.token = token;
  localStorage.setItem(TOKEN_KEY, token);
  $("login-error").textContent = "";
  reload();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button.choice")) {
    button.addEventListener("click", () => choose(button.dataset.choice));
  }
  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  $("undo-finished").addEventListener("click", undo);
  $("logout").addEventListener("click", () => showLogin(""));
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    $("token-input").value = "";
    if (token) start(token);
  });

  document.addEventListener("keydown", (event) => {
    // Typing in the token box, or shortcuts of the browser, are not labels.
    if (event.target instanceof HTMLInputElement || event.ctrlKey || event.metaKey || event.altKey) return;
    // A held key repeats; it must not label the pairs that follow.
    if (event.repeat) return;
    const key = event.key.toLowerCase();
    if (key in KEYS && !$("task").hidden) choose(KEYS[key]);
    else if (key === "s" && !$("task").hidden) skip();
    else if (key === "u") undo();
    else return;
    event.preventDefault();
  });

  // ?token=... logs in once; the token then lives in localStorage, not in the address bar
  // (where history and screenshots would keep it).
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  const token = fromUrl || localStorage.getItem(TOKEN_KEY);
  if (token) start(token);
  else showLogin("");
});
