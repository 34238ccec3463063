// synthloop review client. All text from the server is rendered with textContent (never innerHTML).
"use strict";

const config = JSON.parse(document.getElementById("config").textContent);
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const state = { items: [], progress: {}, view: [], idx: 0, undo: [], reviewer: "" };
const $ = (id) => document.getElementById(id);

function say(text) { $("message").textContent = text || ""; }

async function post(path, body) {
  const res = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(body),
  });
  let data = {};
  try { data = await res.json(); } catch (e) { data = { error: res.statusText }; }
  return { status: res.status, data };
}

async function load() {
  const res = await fetch("/api/items");
  const data = await res.json();
  state.items = data.items;
  state.progress = data.progress;
  applyFilter();
}

function current() { return state.view[state.idx]; }

function applyFilter(keepFile) {
  const cls = $("filter-class").value;
  const st = $("filter-status").value;
  state.view = state.items.filter((it) =>
    (!cls || it.intended_label === cls) &&
    (!st || (st === "decided" ? it.status !== "waiting" : it.status === st)));
  const keep = state.view.findIndex((it) => it.file_name === keepFile);
  state.idx = keep >= 0 ? keep : Math.min(state.idx, Math.max(state.view.length - 1, 0));
  render();
}

function render() {
  const p = state.progress;
  $("progress").textContent = `${p.decided}/${p.total} done · ${p.corrected} corrected · ${p.rejected} rejected`;
  $("reviewer-name").textContent = state.reviewer ? `reviewing as ${state.reviewer}` : "enter your name to start";
  $("position").textContent = state.view.length ? `item ${state.idx + 1} of ${state.view.length} shown` : "no items";
  const it = current();
  const fields = ["file-name", "intended", "predicted", "confidence", "status", "final-label", "decided-by"];
  if (!it) { fields.forEach((f) => { $(f).textContent = ""; }); $("image").removeAttribute("src"); return; }
  $("image").src = "/image/" + it.file_name.split("/").map(encodeURIComponent).join("/");
  $("file-name").textContent = it.file_name;
  $("intended").textContent = it.intended_label;
  $("predicted").textContent = it.pred_label;
  $("confidence").textContent = Number(it.confidence).toFixed(3);
  $("status").textContent = it.status;
  $("status").className = "status-" + it.status;
  $("final-label").textContent = it.status === "waiting" ? "" : (it.final_label || "(rejected)");
  $("decided-by").textContent = it.reviewer;
}

function replaceItem(item) {
  const i = state.items.findIndex((x) => x.file_name === item.file_name);
  if (i >= 0) state.items[i] = item;
}

function nextWaiting() {
  for (let k = 1; k <= state.view.length; k++) {
    const j = (state.idx + k) % state.view.length;
    if (state.view[j].status === "waiting") return j;
  }
  return Math.min(state.idx + 1, state.view.length - 1);
}

async function decide(label) {
  const it = current();
  if (!it) return;
  if (!state.reviewer) { say("enter your reviewer name first"); $("reviewer-input").focus(); return; }
  const { status, data } = await post("/api/decide",
    { file_name: it.file_name, sha256: it.sha256, label, version: it.version, reviewer: state.reviewer });
  if (status === 200) {
    replaceItem(data.item);
    state.progress = data.progress;
    state.undo.push(it.file_name);
    say(`${it.file_name}: ${data.item.status}${data.item.final_label ? " → " + data.item.final_label : ""}`);
    const target = nextWaiting();
    applyFilter(state.view[target] && state.view[target].file_name);
  } else if (status === 409) {
    replaceItem(data.item);
    say(data.item.sha256 !== it.sha256
      ? `${it.file_name} is a different image now (regenerated); reloaded, decide again`
      : `${it.file_name} was changed by ${data.item.reviewer || "someone"} meanwhile; reloaded, decide again`);
    applyFilter(it.file_name);
  } else {
    say(`not saved (${status}): ${data.error || ""}`);
  }
}

async function undo() {
  const fileName = state.undo.pop();
  if (!fileName) { say("nothing to undo"); return; }
  const it = state.items.find((x) => x.file_name === fileName);
  const { status, data } = await post("/api/undo",
    { file_name: fileName, version: it.version, reviewer: state.reviewer });
  if (status === 200) {
    replaceItem(data.item);
    state.progress = data.progress;
    say(`undone: ${fileName} is ${data.item.status} again`);
  } else {
    if (data.item) replaceItem(data.item);
    say(`undo not saved (${status}): ${data.error || ""}`);
  }
  applyFilter(fileName);
}

async function bulkAccept() {
  document.activeElement.blur();
  if (!state.reviewer) { say("enter your reviewer name first"); return; }
  const t = Number($("bulk-threshold").value);
  const n = state.items.filter((it) => it.status === "waiting" && it.confidence >= t).length;
  if (!window.confirm(`Accept the prediction for all ${n} remaining items with confidence ≥ ${t}?`)) return;
  const { status, data } = await post("/api/accept-confident", { threshold: t, reviewer: state.reviewer });
  say(status === 200 ? `accepted ${data.accepted} items` : `not saved (${status}): ${data.error || ""}`);
  await load();
}

function move(step) {
  if (!state.view.length) return;
  state.idx = Math.max(0, Math.min(state.view.length - 1, state.idx + step));
  render();
}

function onKey(ev) {
  const tag = ev.target.tagName;
  // Typing a name or a threshold, or pressing Enter on a button, is not a decision.
  if (["INPUT", "SELECT", "TEXTAREA", "BUTTON"].includes(tag) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const n = Number(ev.key);
  if (Number.isInteger(n) && n >= 1 && n <= config.classes.length) decide(config.classes[n - 1]);
  else if (ev.key === "Enter") { const it = current(); if (it) decide(it.pred_label); }
  else if (ev.key === "x" || ev.key === "X") decide("reject");
  else if (ev.key === "u" || ev.key === "U" || ev.key === "Backspace") undo();
  else if (ev.key === "ArrowRight") move(1);
  else if (ev.key === "ArrowLeft") move(-1);
  else return;
  ev.preventDefault();
}

function setup() {
  const keys = $("keys");
  const add = (k, what) => { const li = document.createElement("li"); li.textContent = `${k}: ${what}`; keys.appendChild(li); };
  config.classes.forEach((c, i) => {
    add(String(i + 1), c);
    const opt = document.createElement("option");
    opt.value = c; opt.textContent = c;
    $("filter-class").appendChild(opt);
  });
  add("Enter", "accept prediction"); add("X", "reject"); add("U / Backspace", "undo"); add("← →", "previous / next");
  state.reviewer = localStorage.getItem("synthloop-reviewer") || "";
  if (state.reviewer) $("reviewer-input").value = state.reviewer;
  $("reviewer-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.reviewer = $("reviewer-input").value.trim();
    localStorage.setItem("synthloop-reviewer", state.reviewer);
    document.activeElement.blur();  // hand the keyboard back to the hotkeys
    render();
  });
  $("filter-class").addEventListener("change", () => applyFilter());
  $("filter-status").addEventListener("change", () => applyFilter());
  $("bulk-accept").addEventListener("click", bulkAccept);
  document.addEventListener("keydown", onKey);
  load();
}

setup();
