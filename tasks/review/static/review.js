// synthloop review client. All text from the server is rendered with textContent (never innerHTML).
// The queue arrives a page at a time (/api/items with a cursor), never whole: 10,000 items cost one page of JSON.
"use strict";

const config = JSON.parse(document.getElementById("config").textContent);
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const PAGE = config.page_size;
const COLS = 8;  // grid columns (review.css)
const state = {
  view: [], index: 0, matching: 0, idx: 0, progress: {}, undo: [], reviewer: "",
  blind: Boolean(config.blind), grid: false, selected: new Set(),
  zoom: 1, panX: 0, panY: 0, contrast: 1, brightness: 1,
};
const keyToClass = new Map(config.classes.map((c, i) => [config.keys[i], c]).filter(([k]) => k));
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

function filterArgs(extra) {
  const args = { status: $("filter-status").value, cls: $("filter-class").value, limit: PAGE, ...extra };
  if (args.status === "owed") args.reader = state.reviewer;
  return new URLSearchParams(Object.entries(args).filter(([, v]) => v !== "" && v !== undefined));
}

async function fetchItems(extra) {
  const res = await fetch("/api/items?" + filterArgs(extra));
  return res.json();
}

// Load the page after/before a queue position (or the first page); `pick` chooses the item to show: a file name,
// an index, or a function of the page length.
async function loadPage(cursor, pick) {
  const data = await fetchItems(cursor || {});
  state.view = data.items;
  state.index = data.index;
  state.matching = data.matching;
  state.progress = data.progress;
  state.selected.clear();
  const at = typeof pick === "string" ? state.view.findIndex((it) => it.file_name === pick)
    : typeof pick === "function" ? pick(state.view.length) : pick;
  state.idx = Math.max(0, Math.min(at === undefined || at < 0 ? 0 : at, state.view.length - 1));
  render();
}

function current() { return state.view[state.idx]; }
function imageUrl(it) { return "/image/" + it.file_name.split("/").map(encodeURIComponent).join("/"); }
// An overlap item someone else decided still owes this person an independent read (second read, adjudication).
function owesMyRead(it) {
  return (it.needs === "second-read" || it.needs === "adjudication") && !(it.readers || []).includes(state.reviewer);
}
// Blind: nothing that could anchor the person shows until they decided — intended class, prediction, and for an
// overlap item the first reader's label and name.
function hidden(it) { return state.blind && (it.status === "waiting" || owesMyRead(it)); }

function render() {
  const p = state.progress;
  $("progress").textContent = `${p.decided}/${p.total} done · ${p.corrected} corrected · ${p.rejected} rejected`;
  $("reviewer-name").textContent = state.reviewer ? `reviewing as ${state.reviewer}` : "enter your name to start";
  $("position").textContent = state.view.length
    ? `item ${state.index + state.idx + 1} of ${state.matching} shown` : "no items";
  $("blind-flag").textContent = state.blind ? "blind" : "";
  $("view-flag").textContent = state.grid ? `grid · ${state.selected.size} selected` : "";
  $("blind-toggle").checked = state.blind;
  $("single").hidden = state.grid;
  $("grid").hidden = !state.grid;
  if (state.grid) renderGrid(); else renderSingle();
}

function renderSingle() {
  const it = current();
  const fields = ["file-name", "intended", "predicted", "confidence", "status", "final-label", "decided-by"];
  fields.forEach((f) => { $(f).textContent = ""; $(f).className = ""; });
  if (!it) { $("image").removeAttribute("src"); return; }
  const src = imageUrl(it);
  if ($("image").getAttribute("src") !== src) { $("image").src = src; state.panX = 0; state.panY = 0; }
  applyView();
  // Blind: the folder of a generated image names its intended class, so only the file's own name shows.
  $("file-name").textContent = hidden(it) ? it.file_name.split("/").pop() : it.file_name;
  if (hidden(it)) {
    ["intended", "predicted", "confidence"].forEach((f) => { $(f).textContent = "hidden (blind)"; $(f).className = "hidden"; });
  } else {
    $("intended").textContent = it.intended_label;
    $("predicted").textContent = it.pred_label;
    $("confidence").textContent = Number(it.confidence).toFixed(3);
  }
  if (hidden(it) && it.status !== "waiting") {  // another reader's decision: hidden until this person decides
    $("status").textContent = `needs your ${it.needs}`;
    $("status").className = "status-waiting";
    ["final-label", "decided-by"].forEach((f) => { $(f).textContent = "hidden (blind)"; $(f).className = "hidden"; });
    return;
  }
  $("status").textContent = it.status;
  $("status").className = "status-" + it.status;
  $("final-label").textContent = it.status === "waiting" ? "" : (it.final_label || "(rejected)");
  $("decided-by").textContent = it.reviewer;
}

function renderGrid() {
  const grid = $("grid");
  grid.replaceChildren();
  state.view.forEach((it, i) => {
    const fig = document.createElement("figure");
    fig.dataset.index = String(i);
    fig.className = (i === state.idx ? "focus " : "") + (state.selected.has(it.file_name) ? "selected" : "");
    const img = document.createElement("img");
    img.src = imageUrl(it);
    img.alt = hidden(it) ? it.file_name.split("/").pop() : it.file_name;
    const cap = document.createElement("figcaption");
    cap.className = "status-" + (hidden(it) ? "waiting" : it.status);
    const label = hidden(it) ? "?" : `${it.intended_label} → ${it.pred_label}`;
    cap.textContent = it.status === "waiting" || hidden(it) ? label : `${label} · ${it.final_label || "rejected"}`;
    fig.append(img, cap);
    fig.addEventListener("click", () => { state.idx = i; toggleSelected(it); });
    grid.appendChild(fig);
  });
}

function applyView() {
  const img = $("image");
  img.style.transform = `translate(${state.panX}px, ${state.panY}px) scale(${state.zoom})`;
  img.style.filter = `brightness(${state.brightness}) contrast(${state.contrast})`;
  $("zoom").value = state.zoom; $("contrast").value = state.contrast; $("brightness").value = state.brightness;
}

function setView(changes) {
  Object.assign(state, changes);
  state.zoom = Math.max(1, Math.min(8, state.zoom));
  state.contrast = Math.max(0.2, Math.min(5, state.contrast));
  state.brightness = Math.max(0.2, Math.min(3, state.brightness));
  if (state.zoom === 1) { state.panX = 0; state.panY = 0; }
  applyView();
}

function replaceItem(item) {
  const i = state.view.findIndex((x) => x.file_name === item.file_name);
  if (i >= 0) state.view[i] = item;
}

// After a decision: the next waiting item (in this page, else the server's next one after it, wrapping around).
// Owed first (in-budget decisions, and overlap items this person has not read yet), then any undecided item.
function isNext(it) { return it.needs === "decision" || owesMyRead(it); }
async function nextWaiting() {
  for (let j = state.idx + 1; j < state.view.length; j++) {
    if (isNext(state.view[j])) { state.idx = j; render(); return; }
  }
  const st = $("filter-status").value;
  if (st !== "" && st !== "waiting" && st !== "owed") { await move(1); return; }
  const from = current() ? current().position : -1;
  const owed = { status: "owed", reader: state.reviewer, limit: 1 };
  let next = (await fetchItems({ ...owed, after: from })).items[0] || (await fetchItems(owed)).items[0];
  if (!next && st !== "owed") {
    next = (await fetchItems({ status: "waiting", after: from, limit: 1 })).items[0]
      || (await fetchItems({ status: "waiting", limit: 1 })).items[0];
  }
  if (!next) { await loadPage({ after: state.view.length ? state.view[0].position - 1 : -1 }, state.idx); return; }
  const here = state.view.findIndex((it) => it.file_name === next.file_name);
  if (here >= 0 && st === "") { state.idx = here; render(); return; }
  await loadPage({ after: next.position - 1 }, next.file_name);
}

function needReviewer() {
  if (state.reviewer) return false;
  say("enter your reviewer name first");
  $("reviewer-input").focus();
  return true;
}

async function decide(label) {
  const it = current();
  if (!it || needReviewer()) return;
  const { status, data } = await post("/api/decide", {
    file_name: it.file_name, sha256: it.sha256, label, version: it.version, reviewer: state.reviewer,
    blind: hidden(it),
  });
  if (status === 200) {
    replaceItem(data.item);
    state.progress = data.progress;
    state.undo.push([data.item]);
    say(`${it.file_name}: ${data.item.status}${data.item.final_label ? " → " + data.item.final_label : ""}`);
    await nextWaiting();
  } else if (status === 409) {
    replaceItem(data.item);
    say(data.item.sha256 !== it.sha256
      ? `${it.file_name} is a different image now (regenerated); reloaded, decide again`
      : `${it.file_name} was changed by ${data.item.reviewer || "someone"} meanwhile; reloaded, decide again`);
    render();
  } else {
    say(`not saved (${status}): ${data.error || ""}`);
  }
}

// Grid: decide every selected thumbnail (or the focused one); `label` null = accept each one's prediction.
async function decideSelection(label) {
  if (needReviewer()) return;
  const picked = state.view.filter((it) => state.selected.has(it.file_name));
  const items = picked.length ? picked : [current()].filter(Boolean);
  if (!items.length) return;
  const blind = items.some(hidden);
  const decisions = items.map((it) => ({
    file_name: it.file_name, sha256: it.sha256, version: it.version, label: label === null ? it.pred_label : label,
  }));
  const { status, data } = await post("/api/decide-batch", { decisions, reviewer: state.reviewer, blind });
  if (status !== 200) { say(`not saved (${status}): ${data.error || ""}`); return; }
  data.results.forEach((r) => { if (r.item) replaceItem(r.item); });
  state.progress = data.progress;
  const saved = data.results.filter((r) => r.status === 200).map((r) => r.item);
  const refused = data.results.filter((r) => r.status !== 200);
  if (saved.length) state.undo.push(saved);
  state.selected.clear();
  say(`saved ${saved.length}` + (refused.length
    ? `; ${refused.length} not saved (changed meanwhile or invalid): ${refused.map((r) => r.file_name).join(", ")}`
    : ""));
  render();
}

// Undo the last decision, or the last grid batch, with the item versions the saves returned.
async function undo() {
  const batch = state.undo.pop();
  if (!batch) { say("nothing to undo"); return; }
  const entries = batch.map((it) => ({ file_name: it.file_name, version: it.version }));
  const { status, data } = await post("/api/undo-batch", { items: entries, reviewer: state.reviewer });
  if (status !== 200) { say(`undo not saved (${status}): ${data.error || ""}`); return; }
  data.results.forEach((r) => { if (r.item) replaceItem(r.item); });
  state.progress = data.progress;
  const done = data.results.filter((r) => r.status === 200);
  say(batch.length === 1 && done.length === 1 ? `undone: ${batch[0].file_name} is ${done[0].item.status} again`
    : `undone ${done.length} of ${batch.length}` + (done.length < batch.length ? " (the rest changed meanwhile)" : ""));
  const first = state.view.findIndex((x) => x.file_name === batch[0].file_name);
  if (first >= 0) { state.idx = first; render(); } else { await loadPage({ after: batch[0].position - 1 }, batch[0].file_name); }
}

async function bulkAccept() {
  document.activeElement.blur();
  if (needReviewer()) return;
  const t = Number($("bulk-threshold").value);
  const n = (await fetchItems({ status: "waiting", cls: "", min_confidence: t, limit: 0 })).matching;
  if (!window.confirm(`Accept the prediction for all ${n} remaining items with confidence ≥ ${t}?`)) return;
  const { status, data } = await post("/api/accept-confident", { threshold: t, reviewer: state.reviewer });
  say(status === 200 ? `accepted ${data.accepted} items` : `not saved (${status}): ${data.error || ""}`);
  await loadPage({ after: state.view.length ? state.view[0].position - 1 : -1 }, state.idx);
}

// Move the cursor by `step` items, fetching the next/previous page at a page edge.
async function move(step) {
  if (!state.view.length) return;
  const target = state.idx + step;
  if (target >= 0 && target < state.view.length) { state.idx = target; render(); return; }
  if (target >= state.view.length && state.index + state.view.length < state.matching) {
    const over = target - state.view.length;  // the same offset on the next page
    await loadPage({ after: state.view[state.view.length - 1].position }, over);
  } else if (target < 0 && state.index > 0) {
    await loadPage({ before: state.view[0].position }, (n) => n + target);
  } else {
    state.idx = Math.max(0, Math.min(state.view.length - 1, target));
    render();
  }
}

function toggleSelected(it) {
  if (!it) return;
  if (state.selected.has(it.file_name)) state.selected.delete(it.file_name); else state.selected.add(it.file_name);
  render();
}

function toggleBlind() { state.blind = !state.blind; render(); say(state.blind ? "blind mode on" : "blind mode off"); }
function toggleGrid() { state.grid = !state.grid; state.selected.clear(); render(); }

function openPalette() {
  $("palette-box").hidden = false;
  $("palette").value = "";
  $("palette").focus();
}

function paletteKey(ev) {
  if (ev.key === "Escape") { ev.preventDefault(); $("palette-box").hidden = true; $("palette").blur(); return; }
  if (ev.key !== "Enter") return;
  ev.preventDefault();
  const text = $("palette").value.trim().toLowerCase();
  const exact = config.classes.find((c) => c.toLowerCase() === text);
  const starts = config.classes.filter((c) => c.toLowerCase().startsWith(text));
  const label = exact || (starts.length === 1 ? starts[0] : null);
  if (!label) { say(`no single class matches ${JSON.stringify(text)} (${starts.length} start with it)`); return; }
  $("palette-box").hidden = true;
  $("palette").blur();
  if (state.grid) decideSelection(label); else decide(label);
}

// Enter: accept the prediction, unless it is hidden (blind): the person then names the class.
function acceptPrediction() {
  const targets = state.grid && state.selected.size ? state.view.filter((x) => state.selected.has(x.file_name))
    : [current()].filter(Boolean);
  if (targets.some(hidden)) say("blind mode: choose the class with its key (the prediction is hidden)");
  else if (state.grid) decideSelection(null);
  else if (targets.length) decide(targets[0].pred_label);
}

function onKey(ev) {
  const tag = ev.target.tagName;
  // Typing a name or a threshold, or pressing Enter on a button, is not a decision.
  if (["INPUT", "SELECT", "TEXTAREA", "BUTTON"].includes(tag) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const key = ev.key;
  const label = keyToClass.get(key);
  const act = state.grid ? decideSelection : decide;
  if (label !== undefined) act(label);
  else if (key === "Enter") acceptPrediction();
  else if (key === "x" || key === "X") act("reject");
  else if (key === "u" || key === "U" || key === "Backspace") undo();
  else if (key === "b" || key === "B") toggleBlind();
  else if (key === "g" || key === "G") toggleGrid();
  else if (key === "/") openPalette();
  else if (key === "ArrowRight") move(1);
  else if (key === "ArrowLeft") move(-1);
  else if (key === "ArrowDown" && state.grid) move(COLS);
  else if (key === "ArrowUp" && state.grid) move(-COLS);
  else if (key === "PageDown") move(PAGE);
  else if (key === "PageUp") move(-PAGE);
  else if (key === " " && state.grid) toggleSelected(current());
  else if (key === "*" && state.grid) {
    const all = state.view.every((it) => state.selected.has(it.file_name));
    state.view.forEach((it) => (all ? state.selected.delete(it.file_name) : state.selected.add(it.file_name)));
    render();
  }
  else if (key === "Escape" && state.grid) { state.selected.clear(); render(); }
  else if (key === "+" || key === "=") setView({ zoom: state.zoom * 1.25 });
  else if (key === "-") setView({ zoom: state.zoom / 1.25 });
  else if (key === "]") setView({ contrast: state.contrast + 0.2 });
  else if (key === "[") setView({ contrast: state.contrast - 0.2 });
  else if (key === ".") setView({ brightness: state.brightness + 0.1 });
  else if (key === ",") setView({ brightness: state.brightness - 0.1 });
  else if (key === "0") setView({ zoom: 1, contrast: 1, brightness: 1 });
  else return;
  ev.preventDefault();
}

function setupViewer() {
  const stage = $("stage");
  stage.addEventListener("wheel", (ev) => { ev.preventDefault(); setView({ zoom: state.zoom * (ev.deltaY < 0 ? 1.15 : 1 / 1.15) }); },
    { passive: false });
  let drag = null;
  stage.addEventListener("pointerdown", (ev) => { drag = { x: ev.clientX - state.panX, y: ev.clientY - state.panY }; });
  window.addEventListener("pointerup", () => { drag = null; });
  stage.addEventListener("pointermove", (ev) => {
    if (drag && state.zoom > 1) setView({ panX: ev.clientX - drag.x, panY: ev.clientY - drag.y });
  });
  const slider = (id, key) => $(id).addEventListener("input", () => { setView({ [key]: Number($(id).value) }); $(id).blur(); });
  slider("zoom", "zoom"); slider("contrast", "contrast"); slider("brightness", "brightness");
}

function setup() {
  const keys = $("keys");
  const add = (k, what) => { const li = document.createElement("li"); li.textContent = `${k}: ${what}`; keys.appendChild(li); };
  config.classes.forEach((c, i) => {
    if (config.keys[i]) add(config.keys[i], c);
    const opt = document.createElement("option");
    opt.value = c; opt.textContent = c;
    $("filter-class").appendChild(opt);
    const choice = document.createElement("option");
    choice.value = c;
    $("palette-classes").appendChild(choice);
  });
  add("/", `class palette (all ${config.classes.length} classes)`);
  add("Enter", "accept prediction"); add("X", "reject"); add("U / Backspace", "undo"); add("← →", "previous / next");
  add("B", "blind on/off"); add("G", "grid on/off; Space select, * all, ↑↓ rows, Esc clear");
  add("+ − 0", "zoom in / out / reset"); add("[ ]", "window (contrast)"); add(", .", "level (brightness)");
  state.reviewer = localStorage.getItem("synthloop-reviewer") || "";
  if (state.reviewer) $("reviewer-input").value = state.reviewer;
  $("reviewer-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.reviewer = $("reviewer-input").value.trim();
    localStorage.setItem("synthloop-reviewer", state.reviewer);
    document.activeElement.blur();  // hand the keyboard back to the hotkeys
    render();
  });
  $("filter-class").addEventListener("change", () => { loadPage(); $("filter-class").blur(); });
  $("filter-status").addEventListener("change", () => { loadPage(); $("filter-status").blur(); });
  $("blind-toggle").addEventListener("change", () => { toggleBlind(); $("blind-toggle").blur(); });
  $("bulk-accept").addEventListener("click", bulkAccept);
  $("palette").addEventListener("keydown", paletteKey);
  document.addEventListener("keydown", onKey);
  setupViewer();
  loadPage();
}

setup();
