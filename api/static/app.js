// ramdex web UI: plain JavaScript, no build step. Talks to the JSON API with the key kept in
// localStorage; images are fetched with the key and shown through blob URLs (an <img src> cannot
// send an Authorization header).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  key: localStorage.getItem("ramdex.key") || "",
  chips: [],
  cursor: null,
  lastQuery: null,
  selected: new Set(), // asset ids picked on the results grid
  anchor: null, // the last card clicked: shift-click selects the range from it
  detailId: null, // the asset the detail dialog shows
};

// ---------- HTTP ----------
function headers(extra = {}) {
  return state.key ? { Authorization: `Bearer ${state.key}`, ...extra } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const message = body && (body.detail || body.title) ? body.detail || body.title : response.statusText;
    throw new Error(`${response.status}: ${message}`);
  }
  return body;
}

// Limits parallel image downloads so a page of results does not flood the server.
const imageQueue = { running: 0, waiting: [] };
function loadImage(img, path) {
  const run = async () => {
    imageQueue.running += 1;
    try {
      const response = await fetch(path, { headers: headers() });
      if (response.ok) {
        img.src = URL.createObjectURL(await response.blob());
        img.onload = () => URL.revokeObjectURL(img.src);
      } else {
        img.alt = `no image (${response.status})`;
      }
    } finally {
      imageQueue.running -= 1;
      const next = imageQueue.waiting.shift();
      if (next) next();
    }
  };
  if (imageQueue.running < 6) run(); else imageQueue.waiting.push(run);
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

// Polls a job until it ends; calls onProgress(job) on every poll.
async function followJob(jobId, onProgress) {
  for (;;) {
    const job = await api(`/jobs/${jobId}`);
    onProgress(job);
    if (["done", "failed", "cancelled"].includes(job.status)) return job;
    await sleep(400);
  }
}

function percent(job) {
  return job.total ? Math.round((100 * job.done) / job.total) : job.status === "done" ? 100 : 0;
}

// ---------- the model ----------
// Readiness needs no key, so the page names the model (and warns about the demo model) before
// a key is entered. A 503 (not ready) still carries the model.
function showText(el, text) {
  // Text in `backticks` becomes <code>, as in the server's messages; never HTML.
  el.replaceChildren();
  text.split("`").forEach((part, i) => {
    if (i % 2) { const code = document.createElement("code"); code.textContent = part; el.append(code); }
    else el.append(part);
  });
}

async function showModel() {
  try {
    const response = await fetch("/readyz");
    const model = (await response.json()).model;
    if (!model) return;
    $("model-name").textContent = `model: ${model.name}${model.digest ? ` (${model.digest})` : ""}`;
    const banner = $("model-banner");
    banner.hidden = !model.notice;
    if (model.notice) showText(banner, model.notice.replace(/^demo model/, "Demo model"));
  } catch { /* the server is unreachable: the key check says so */ }
}

// ---------- API key ----------
async function checkKey() {
  const status = $("key-status");
  try {
    const me = await api("/me");
    status.textContent = `${me.name}: ${me.scopes.join(", ")}`;
    status.className = "ok";
    $("key-hint").hidden = true;
    return true;
  } catch (error) {
    status.textContent = state.key ? `key refused (${error.message})` : "enter an API key";
    status.className = "error";
    $("key-hint").hidden = false;
    return false;
  }
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.key = $("api-key").value.trim();
  localStorage.setItem("ramdex.key", state.key);
  if (await checkKey()) { refreshConcepts(); runSearch(); }
});

// ---------- tag autocomplete and chips ----------
let suggestTimer = null;
let suggestions = [];
let active = -1;

function renderChips() {
  const box = $("tag-chips");
  box.replaceChildren();
  state.chips.forEach((chip, i) => {
    const el = document.createElement("span");
    el.className = `chip ${chip.mode}`;
    el.title = "click: require / exclude";
    el.textContent = `${chip.mode === "none" ? "not " : ""}${chip.name}`;
    el.addEventListener("click", () => {
      chip.mode = chip.mode === "all" ? "none" : "all";
      renderChips();
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `remove ${chip.name}`);
    remove.addEventListener("click", (e) => { e.stopPropagation(); state.chips.splice(i, 1); renderChips(); });
    el.append(remove);
    box.append(el);
  });
}

function showSuggestions(items) {
  suggestions = items;
  active = -1;
  const list = $("suggestions");
  list.replaceChildren();
  for (const [i, tag] of items.entries()) {
    const li = document.createElement("li");
    li.role = "option";
    li.dataset.index = String(i);
    li.textContent = tag.name_zh ? `${tag.name} · ${tag.name_zh}` : tag.name;
    if (tag.origin === "concept") li.classList.add("concept");
    li.addEventListener("mousedown", (e) => { e.preventDefault(); pickSuggestion(i); });
    list.append(li);
  }
  list.hidden = items.length === 0;
}

function pickSuggestion(i) {
  const tag = suggestions[i];
  if (!tag) return;
  if (!state.chips.some((c) => c.name === tag.name)) state.chips.push({ name: tag.name, mode: "all" });
  $("search-input").value = "";
  showSuggestions([]);
  renderChips();
}

$("search-input").addEventListener("input", () => {
  clearTimeout(suggestTimer);
  const prefix = $("search-input").value.trim();
  if (!prefix) { showSuggestions([]); return; }
  suggestTimer = setTimeout(async () => {
    try {
      const page = await api(`/tags?prefix=${encodeURIComponent(prefix)}&limit=8`);
      if ($("search-input").value.trim() === prefix) showSuggestions(page.items);
    } catch { showSuggestions([]); }
  }, 120);
});

$("search-input").addEventListener("keydown", (event) => {
  const items = $("suggestions").children;
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    if (!items.length) return;
    event.preventDefault();
    active = (active + (event.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
    [...items].forEach((li, i) => li.classList.toggle("active", i === active));
  } else if (event.key === "Enter" && active >= 0) {
    event.preventDefault();
    pickSuggestion(active);
  } else if (event.key === "Escape") {
    showSuggestions([]);
  }
});
$("search-input").addEventListener("blur", () => setTimeout(() => showSuggestions([]), 100));

// ---------- search ----------
function currentQuery() {
  const text = $("search-input").value.trim();
  return {
    text: text || null,
    all: state.chips.filter((c) => c.mode === "all").map((c) => c.name),
    none: state.chips.filter((c) => c.mode === "none").map((c) => c.name),
    min_score: Number($("min-score").value) || null,
    sort: $("sort").value,
    limit: 40,
  };
}

function reasonText(reasons) {
  return reasons.map((r) => `${r.name} ${r.score.toFixed(2)}`).join(", ");
}

function renderHits(hits, append) {
  const grid = $("results");
  if (!append) { grid.replaceChildren(); clearSelection(); }
  for (const hit of hits) {
    const id = hit.asset.id;
    // A card is a group: the open button (image and caption) and a selection checkbox beside it
    // (a checkbox may not sit inside a button).
    const card = document.createElement("div");
    card.className = "hit";
    card.dataset.assetId = String(id);
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    const img = document.createElement("img");
    img.alt = `asset ${id}`;
    img.loading = "lazy";
    loadImage(img, hit.asset.thumbnail_url);
    const caption = document.createElement("span");
    caption.className = "caption";
    const score = document.createElement("strong");
    score.className = "score";
    // No ranking signal (filters only): show when the asset arrived instead of a score.
    score.textContent = hit.score === null ? hit.asset.created_at.slice(0, 10) : hit.score.toFixed(3);
    const why = document.createElement("span");
    why.className = "why";
    why.textContent = reasonText(hit.reasons);
    caption.append(score, why);
    open.append(img, caption);
    const box = document.createElement("input");
    box.type = "checkbox";
    box.className = "select";
    box.setAttribute("aria-label", `select asset ${id}`);
    box.addEventListener("click", (e) => toggleSelected(id, box.checked, e.shiftKey));
    // Shift-, Ctrl- or Cmd-click on a card selects instead of opening.
    open.addEventListener("click", (e) => {
      if (e.shiftKey || e.ctrlKey || e.metaKey) toggleSelected(id, !state.selected.has(id), e.shiftKey);
      else openDetail(id);
    });
    card.append(open, box);
    grid.append(card);
  }
  renderSelection();
}

// ---------- multi-select and bulk changes ----------
function shownIds() {
  return [...$("results").querySelectorAll(".hit")].map((card) => Number(card.dataset.assetId));
}

function toggleSelected(id, on, range) {
  const ids = shownIds();
  const targets = range && state.anchor !== null && ids.includes(state.anchor)
    ? ids.slice(Math.min(ids.indexOf(state.anchor), ids.indexOf(id)),
                Math.max(ids.indexOf(state.anchor), ids.indexOf(id)) + 1)
    : [id];
  for (const t of targets) { if (on) state.selected.add(t); else state.selected.delete(t); }
  state.anchor = id;
  renderSelection();
}

function clearSelection() {
  state.selected.clear();
  state.anchor = null;
  renderSelection();
}

function renderSelection() {
  for (const card of $("results").querySelectorAll(".hit")) {
    const on = state.selected.has(Number(card.dataset.assetId));
    card.classList.toggle("selected", on);
    card.querySelector(".select").checked = on;
  }
  const n = state.selected.size;
  $("selection-bar").hidden = n === 0;
  $("selection-count").textContent = `${n} selected`;
}

// POST /labels for many assets; resolves to the reply or throws with the API's detail.
function changeLabels(assetIds, tag, action) {
  return api("/labels", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ asset_ids: assetIds, tag, action }),
  });
}

function setStatus(el, text, kind) {
  el.textContent = text;
  el.className = kind || "muted";
  // Errors are announced at once; other news politely.
  el.setAttribute("role", kind === "error" ? "alert" : "status");
}

async function bulkChange(action) {
  const status = $("bulk-status");
  const tag = $("bulk-tag").value.trim();
  if (!tag) { setStatus(status, "type a tag first", "error"); $("bulk-tag").focus(); return; }
  const ids = [...state.selected];
  // The API changes at most 1000 assets at once (all or nothing); say so before asking.
  if (ids.length > 1000) { setStatus(status, `${ids.length} selected: at most 1000 at once`, "error"); return; }
  setStatus(status, `${action} “${tag}” on ${ids.length} assets…`);
  try {
    const reply = await changeLabels(ids, tag, action);
    setStatus(status, `${action} “${tag}”: ${reply.changed} changed, ${reply.unchanged} already so`, "ok");
  } catch (error) {
    setStatus(status, error.message, "error");
  }
}

$("bulk-form").addEventListener("submit", (event) => { event.preventDefault(); bulkChange("add"); });
for (const button of $("bulk-form").querySelectorAll("button[type=button][data-action]")) {
  button.addEventListener("click", () => bulkChange(button.dataset.action));
}
$("select-all").addEventListener("click", () => { shownIds().forEach((i) => state.selected.add(i)); renderSelection(); });
$("select-none").addEventListener("click", clearSelection);

async function runSearch(append = false) {
  const status = $("search-status");
  const query = append ? { ...state.lastQuery, cursor: state.cursor } : currentQuery();
  state.lastQuery = { ...query, cursor: null };
  setStatus(status, "searching…");
  try {
    const t0 = performance.now();
    const page = await api("/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(query),
    });
    renderHits(page.hits, append);
    state.cursor = page.next_cursor;
    $("more").hidden = !page.next_cursor;
    const shown = $("results").children.length;
    const pending = page.pending_reindex ? ` · ${page.pending_reindex} assets awaiting re-index` : "";
    setStatus(status, `${shown} shown · ${Math.round(performance.now() - t0)} ms${pending}`);
  } catch (error) {
    setStatus(status, error.message, "error");
  }
}

$("search-form").addEventListener("submit", (event) => { event.preventDefault(); runSearch(false); });
$("more").addEventListener("click", () => runSearch(true));

// ---------- asset detail ----------
function modelLabel(asset) {
  if (!asset.model) return "—";
  const digest = (asset.model_id || "").split("@")[1];
  return digest ? `${asset.model} (${digest})` : asset.model;
}

async function openDetail(id) {
  const dialog = $("detail");
  try {
    const asset = await api(`/assets/${id}`);
    state.detailId = id;
    const source = asset.sources.length ? asset.sources[0].uri : "";
    $("detail-title").textContent = source.replace(/^upload:/, "").split("/").pop() || `asset ${id}`;
    const meta = $("detail-meta");
    meta.replaceChildren();
    const rows = [
      ["id", asset.id], ["status", asset.status + (asset.error ? ` (${asset.error})` : "")],
      ["type", asset.mime || "?"], ["size", `${asset.width || "?"}×${asset.height || "?"}, ${asset.bytes} bytes`],
      ["model", modelLabel(asset)], ["sources", asset.sources.map((s) => s.uri).join("\n")],
    ];
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = String(v);
      meta.append(dt, dd);
    }
    const body = $("detail-tags").tBodies[0];
    body.replaceChildren();
    for (const tag of asset.tags) {
      const tr = document.createElement("tr");
      if (tag.above_threshold) tr.className = "above";
      for (const v of [tag.name, tag.name_zh || "", tag.score.toFixed(3)]) {
        const td = document.createElement("td"); td.textContent = v; tr.append(td);
      }
      body.append(tr);
    }
    const img = $("detail-image");
    img.removeAttribute("src");
    loadImage(img, asset.thumbnail_url);
    setStatus($("label-status"), "");
    $("label-add").value = "";
    $("label-history").open = false;
    // The tag panel's own errors show in the panel; the dialog opens regardless.
    try { await refreshLabels(id); } catch (error) { setStatus($("label-status"), error.message, "error"); }
    if (!dialog.open) dialog.showModal();
  } catch (error) {
    setStatus($("search-status"), error.message, "error");
  }
}

// ---------- asset tags: provenance, review, manual tags, history ----------
function badge(text, cls) {
  const el = document.createElement("span");
  el.className = `badge ${cls}`;
  el.textContent = text;
  return el;
}

function actionButton(label, tag, action, cls = "") {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `small ${cls}`;
  button.textContent = label;
  button.dataset.action = action;
  button.setAttribute("aria-label", `${label} ${tag.name}`);
  button.addEventListener("click", () => detailChange(tag.name, action));
  return button;
}

function renderLabelTags(tags) {
  const body = $("label-tags").tBodies[0];
  body.replaceChildren();
  if (!tags.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 5; td.className = "muted"; td.textContent = "no tags";
    tr.append(td); body.append(tr);
  }
  for (const tag of tags) {
    const tr = document.createElement("tr");
    tr.dataset.key = tag.key;
    tr.className = tag.matches ? "matches" : "not-matching";
    const name = document.createElement("td");
    name.className = "name";
    name.textContent = tag.name;
    if (tag.chinese) name.append(" ", Object.assign(document.createElement("span"), { className: "muted", textContent: tag.chinese }));
    if (tag.tag_id === null) name.append(" ", badge("keyword", "keyword"));
    const sources = document.createElement("td");
    sources.className = "sources";
    for (const s of tag.sources) sources.append(badge(s, s));
    const score = document.createElement("td");
    score.className = "score";
    if (tag.score !== null && tag.threshold !== null) {
      score.textContent = `${tag.score.toFixed(2)} ${tag.score > tag.threshold ? ">" : "≤"} ${tag.threshold.toFixed(2)}`;
      score.title = `model score ${tag.score.toFixed(3)}, threshold ${tag.threshold.toFixed(3)}`;
    } else if (tag.threshold !== null) {
      score.textContent = `— / ${tag.threshold.toFixed(2)}`;
      score.title = "no stored score (below the storage floor)";
    } else {
      score.textContent = "—";
    }
    const review = document.createElement("td");
    review.className = "review";
    if (tag.tag_id !== null) review.append(badge(tag.review || "unreviewed", tag.review || "unreviewed"));
    const actions = document.createElement("td");
    actions.className = "actions";
    if (tag.tag_id !== null) {
      // Review decisions exist for vocabulary tags only (the API answers 404 for a keyword).
      if (tag.review !== "accepted") actions.append(actionButton("Accept", tag, "accept", "good"));
      if (tag.review !== "rejected") actions.append(actionButton("Reject", tag, "reject", "bad"));
      if (tag.review) actions.append(actionButton("Unreview", tag, "unreview", "secondary"));
    }
    // Remove takes a person's tag and the file's keyword off the asset.
    if (tag.manual || tag.embedded) actions.append(actionButton("Remove", tag, "remove", "secondary"));
    tr.append(name, sources, score, review, actions);
    body.append(tr);
  }
}

function stateText(s) {
  if (!s) return "none";
  const parts = [];
  if (s.manual) parts.push("manual");
  if (s.embedded) parts.push("embedded");
  if (s.review) parts.push(s.review);
  return parts.join(", ") || "none";
}

function renderHistory(changes) {
  const list = $("history-list");
  list.replaceChildren();
  $("history-count").textContent = `(${changes.length})`;
  for (const c of changes) {
    const li = document.createElement("li");
    const when = document.createElement("time");
    when.dateTime = c.at;
    when.textContent = new Date(c.at).toLocaleString();
    when.title = c.at;
    const what = document.createElement("strong");
    what.textContent = `${c.action} ${c.key}`;
    li.append(when, " · ", c.actor, " · ", what, `: ${stateText(c.before)} → ${stateText(c.after)}`);
    list.append(li);
  }
}

async function refreshLabels(id) {
  const [view, history] = await Promise.all([
    api(`/labels/assets/${id}`),
    api(`/labels/assets/${id}/history?limit=100`),
  ]);
  if (state.detailId !== id) return; // another asset was opened meanwhile
  renderLabelTags(view.tags);
  renderHistory(history.changes);
}

async function detailChange(tagName, action) {
  const id = state.detailId;
  const status = $("label-status");
  setStatus(status, `${action} “${tagName}”…`);
  try {
    const reply = await changeLabels([id], tagName, action);
    await refreshLabels(id);
    setStatus(status, reply.changed ? `${action} “${tagName}”: done` : `“${tagName}” was already so`, "ok");
    return true;
  } catch (error) {
    setStatus(status, error.message, "error");
    return false;
  }
}

$("label-add-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("label-add");
  const name = input.value.trim();
  if (!name) return;
  if (await detailChange(name, "add")) input.value = "";
});

// Tag suggestions for the tag inputs (one shared <datalist>), from GET /tags?prefix=.
let optionsTimer = null;
function suggestTags(input) {
  clearTimeout(optionsTimer);
  const prefix = input.value.trim();
  if (!prefix) return;
  optionsTimer = setTimeout(async () => {
    try {
      const page = await api(`/tags?prefix=${encodeURIComponent(prefix)}&limit=8`);
      $("tag-options").replaceChildren(...page.items.map((t) =>
        Object.assign(document.createElement("option"), { value: t.name, label: t.name_zh || "" })));
    } catch { /* suggestions are a convenience; the change itself reports errors */ }
  }, 150);
}
for (const id of ["label-add", "bulk-tag", "queue-tag"]) {
  $(id).addEventListener("input", () => suggestTags($(id)));
}

// ---------- upload ----------
function uploadOne(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/assets");
    if (state.key) xhr.setRequestHeader("Authorization", `Bearer ${state.key}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status === 202 || xhr.status === 200) resolve(body);
      else reject(new Error(`${file.name}: ${xhr.status} ${body ? body.detail || body.title : ""}`));
    };
    xhr.onerror = () => reject(new Error(`${file.name}: network error`));
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const files = [...$("upload-input").files];
  const bar = $("upload-progress");
  const status = $("upload-status");
  if (!files.length) { status.textContent = "choose files first"; return; }
  bar.value = 0;
  const accepted = [];
  try {
    for (const [i, file] of files.entries()) {
      status.textContent = `uploading ${file.name} (${i + 1}/${files.length})`;
      accepted.push(await uploadOne(file, (f) => { bar.value = (50 * (i + f)) / files.length; }));
    }
    let finished = 0;
    const failed = [];
    for (const item of accepted) {
      status.textContent = `indexing ${finished + 1}/${accepted.length}`;
      const job = await followJob(item.job.id, () => {});
      finished += 1;
      if (job.status !== "done") failed.push(job.error || job.status);
      bar.value = 50 + (50 * finished) / accepted.length;
    }
    status.textContent = failed.length
      ? `indexed ${finished - failed.length}, failed ${failed.length}: ${failed.join("; ")}`
      : `indexed ${finished}`;
    runSearch(false);
  } catch (error) {
    status.textContent = error.message;
  }
});

// ---------- concepts ----------
async function refreshConcepts() {
  try {
    const page = await api("/concepts");
    const list = $("concepts-list");
    list.replaceChildren();
    for (const concept of page.items) {
      const li = document.createElement("li");
      li.textContent = `${concept.name} (${concept.descriptions.length} descriptions)`;
      li.addEventListener("click", () => {
        if (!state.chips.some((c) => c.name === concept.name)) state.chips.push({ name: concept.name, mode: "all" });
        renderChips();
      });
      list.append(li);
    }
  } catch { /* no key yet */ }
}

$("concept-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("concept-status");
  const bar = $("concept-progress");
  const descriptions = $("concept-descriptions").value.split("\n").map((s) => s.trim()).filter(Boolean);
  bar.value = 0;
  try {
    const created = await api("/concepts", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        name: $("concept-name").value.trim(),
        descriptions: descriptions.length ? descriptions : null,
        generate: $("concept-generate").checked,
      }),
    });
    status.textContent = `scoring existing assets for “${created.concept.name}”…`;
    const job = await followJob(created.job.id, (j) => {
      bar.value = percent(j);
      status.textContent = `backfill ${j.done}/${j.total || "?"}`;
    });
    status.textContent = job.status === "done"
      ? `“${created.concept.name}” is now a tag (${job.done} assets scored)`
      : `backfill ${job.status}: ${job.error || ""}`;
    refreshConcepts();
  } catch (error) {
    status.textContent = error.message;
  }
});

// ---------- views ----------
function showView(name) {
  const review = name === "review";
  document.querySelector("main").hidden = review;
  $("review").hidden = !review;
  $("view-search").setAttribute("aria-pressed", String(!review));
  $("view-review").setAttribute("aria-pressed", String(review));
  if (review && !state.queue.items.length) $("queue-tag").focus();
}
$("view-search").addEventListener("click", () => showView("search"));
$("view-review").addEventListener("click", () => showView("review"));

// ---------- review queue ----------
// The assets whose score for a tag lies nearest its threshold come first: each decision there
// teaches the most. Keys: j/k move, a accept, r reject, u unreview (undo).
state.queue = { tag: null, threshold: null, items: [], cursor: null, current: -1 };

function queueCards() { return [...$("queue").querySelectorAll(".queue-item")]; }

function focusQueue(i) {
  const cards = queueCards();
  if (!cards.length) return;
  state.queue.current = Math.max(0, Math.min(i, cards.length - 1));
  cards.forEach((c, j) => c.classList.toggle("current", j === state.queue.current));
  const card = cards[state.queue.current];
  card.focus();
  card.scrollIntoView({ block: "nearest" });
}

function renderQueueItems(items) {
  const grid = $("queue");
  const start = state.queue.items.length;
  for (const [n, item] of items.entries()) {
    const i = start + n;
    state.queue.items.push({ ...item, decision: null });
    const card = document.createElement("div");
    card.className = "queue-item";
    card.role = "listitem";
    card.tabIndex = -1;
    card.dataset.assetId = String(item.asset_id);
    card.setAttribute("aria-label", `asset ${item.asset_id}, score ${item.score.toFixed(3)}`);
    const img = document.createElement("img");
    img.alt = `asset ${item.asset_id}`;
    loadImage(img, `/assets/${item.asset_id}/thumbnail`);
    img.addEventListener("click", () => openDetail(item.asset_id));
    const caption = document.createElement("span");
    caption.className = "caption";
    const side = item.score > state.queue.threshold ? "above" : "below";
    caption.textContent = `score ${item.score.toFixed(3)} · ${item.distance.toFixed(3)} ${side} ${state.queue.threshold.toFixed(2)}`;
    const decision = document.createElement("span");
    decision.className = "decision";
    decision.setAttribute("aria-live", "polite");
    const buttons = document.createElement("div");
    buttons.className = "buttons";
    for (const [label, action, cls] of [["Accept", "accept", "good"], ["Reject", "reject", "bad"]]) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = `small ${cls}`;
      b.dataset.action = action;
      b.textContent = label;
      b.setAttribute("aria-label", `${label} ${state.queue.tag} on asset ${item.asset_id}`);
      b.addEventListener("click", () => { focusQueue(i); decideQueue(i, action); });
      buttons.append(b);
    }
    card.append(img, caption, decision, buttons);
    card.addEventListener("click", (e) => { if (e.target === card) focusQueue(i); });
    grid.append(card);
  }
}

async function loadQueue(more = false) {
  const status = $("queue-status");
  const tag = more ? state.queue.tag : $("queue-tag").value.trim();
  if (!tag) { setStatus(status, "type a tag first", "error"); return; }
  const cursor = more ? `&cursor=${encodeURIComponent(state.queue.cursor)}` : "";
  setStatus(status, "loading…");
  try {
    // Page size: data-page-size on #queue (24 by default).
    const limit = Number($("queue").dataset.pageSize) || 24;
    const page = await api(`/labels/queue?tag=${encodeURIComponent(tag)}&limit=${limit}${cursor}`);
    if (!more) {
      $("queue").replaceChildren();
      state.queue = { tag: page.tag, threshold: page.threshold, items: [], cursor: null, current: -1 };
    }
    const first = state.queue.items.length;
    renderQueueItems(page.items);
    state.queue.cursor = page.next_cursor;
    $("queue-more").hidden = !page.next_cursor;
    const left = state.queue.items.filter((x) => !x.decision).length;
    setStatus(status, left || page.next_cursor
      ? `“${page.tag}” (threshold ${page.threshold.toFixed(2)}): ${left} to review here${page.next_cursor ? ", more after these" : ""}`
      : `nothing ${state.queue.items.length ? "more " : ""}to review for “${page.tag}”`, "muted");
    if (page.items.length) focusQueue(first);
  } catch (error) {
    setStatus(status, error.message, "error");
  }
}

async function decideQueue(i, action) {
  const item = state.queue.items[i];
  const card = queueCards()[i];
  if (!item || !card) return;
  const status = $("queue-status");
  try {
    await changeLabels([item.asset_id], state.queue.tag, action);
    markDecision(i, action === "unreview" ? null : action === "accept" ? "accepted" : "rejected");
    const left = state.queue.items.filter((x) => !x.decision).length;
    setStatus(status, `asset ${item.asset_id}: ${item.decision || "unreviewed"} · ${left} left on this page`, "ok");
    if (action !== "unreview") {
      // On to the next undecided asset (after this one, else before it); past the page's end
      // the next page is fetched.
      const items = state.queue.items;
      const after = items.findIndex((x, j) => j > i && !x.decision);
      const before = items.findIndex((x) => !x.decision);
      const loaded = items.length;
      if (after >= 0) focusQueue(after);
      else {
        if (state.queue.cursor) await loadQueue(true);
        if (state.queue.items.length === loaded && before >= 0) focusQueue(before);
      }
    }
  } catch (error) {
    setStatus(status, `asset ${item.asset_id}: ${error.message}`, "error");
  }
}

function markDecision(i, decision) {
  const item = state.queue.items[i];
  const card = queueCards()[i];
  item.decision = decision;
  card.classList.remove("accepted", "rejected");
  if (decision) card.classList.add(decision);
  card.querySelector(".decision").textContent = decision || "";
}

// A decision made in the detail dialog (opened from the queue with o or a click) shows on
// the queue's card when the dialog closes; the keys go on from that card.
$("detail").addEventListener("close", async () => {
  if ($("review").hidden || !state.queue.tag) return;
  const i = state.queue.items.findIndex((x) => x.asset_id === state.detailId);
  if (i < 0) return;
  focusQueue(i);
  try {
    const view = await api(`/labels/assets/${state.detailId}`);
    const tag = view.tags.find((t) => t.name === state.queue.tag);
    markDecision(i, tag && tag.review ? tag.review : null);
  } catch (error) {
    setStatus($("queue-status"), error.message, "error");
  }
});

$("queue-form").addEventListener("submit", (event) => { event.preventDefault(); loadQueue(false); });
$("queue-more").addEventListener("click", () => loadQueue(true));

document.addEventListener("keydown", (event) => {
  if ($("review").hidden || $("detail").open) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const t = event.target;
  if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement) return;
  const i = state.queue.current;
  const keys = {
    // j past the last card fetches the next page when there is one.
    j: () => (i + 1 >= state.queue.items.length && state.queue.cursor ? loadQueue(true) : focusQueue(i + 1)),
    k: () => focusQueue(i - 1),
    a: () => decideQueue(i, "accept"),
    r: () => decideQueue(i, "reject"),
    u: () => decideQueue(i, "unreview"),
    o: () => openDetail(state.queue.items[i].asset_id),
  };
  const run = keys[event.key];
  if (!run || i < 0) return;
  event.preventDefault();
  run();
});

// ---------- start ----------
$("api-key").value = state.key;
showModel();
checkKey().then((ok) => { if (ok) { refreshConcepts(); runSearch(); } });
