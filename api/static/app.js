// ramdex web UI: plain JavaScript, no build step (no framework: the page is a handful of panels
// over a JSON API, and DOM calls keep it dependency-free and readable). Talks to the API with
// the key kept in localStorage; images are fetched with the key and shown through blob URLs
// (an <img src> cannot send an Authorization header).
// Files: app.js (HTTP, key, search, results, asset view, tags, review queue), upload.js
// (uploads of files and folders), panels.js (jobs, concepts, start-up).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  key: localStorage.getItem("ramdex.key") || "",
  chips: [], // {name, mode: all|any|none}
  similar: null, // {kind: "asset", id, name} or {kind: "image", file, name}
  cursor: null,
  lastQuery: null,
  loading: false,
  searchSeq: 0, // a newer search makes older replies stale
  selected: new Set(), // asset ids picked on the results grid
  anchor: null, // the last card clicked: shift-click selects the range from it
  detailId: null, // the asset the detail dialog shows
  detailAsset: null,
  names: new Map(), // asset id -> file name
};

const CHIP_MODES = ["all", "any", "none"];
const MODE_TEXT = { all: "all", any: "any", none: "not" };
const MODE_HELP = { all: "required", any: "one of these", none: "excluded" };

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function humanBytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["bytes", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} bytes`;
}

function setStatus(el, text, kind) {
  el.textContent = text;
  el.className = kind || "muted";
  // Errors are announced at once; other news politely.
  el.setAttribute("role", kind === "error" ? "alert" : "status");
}

// ---------- HTTP ----------
function headers(extra = {}) {
  return state.key ? { Authorization: `Bearer ${state.key}`, ...extra } : extra;
}

// The API's problem document in one line (detail, else title), else the status text.
function problemMessage(body, fallback) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.errors) && body.errors.length) return body.errors.map((e) => e.message || e.msg).join("; ");
  return (body && body.title) || fallback;
}

async function problemText(response) {
  try { return problemMessage(await response.json(), response.statusText); } catch { return response.statusText; }
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error(`${response.status}: ${problemMessage(body, response.statusText)}`);
  return body;
}

// Limits parallel image downloads so a page of results does not flood the server. The image
// shows what was asked last (a large preview replaces its thumbnail when it arrives).
const imageQueue = { running: 0, waiting: [] };
function loadImage(img, path, large = false) {
  if (large) img.dataset.large = path;
  else { img.dataset.src = path; delete img.dataset.large; delete img.dataset.loadedLarge; }
  const wanted = () => (large ? img.dataset.large === path : img.dataset.src === path && !img.dataset.loadedLarge);
  const run = async () => {
    imageQueue.running += 1;
    try {
      const response = await fetch(path, { headers: headers() });
      if (response.ok && wanted()) {
        const url = URL.createObjectURL(await response.blob());
        if (!wanted()) { URL.revokeObjectURL(url); return; }
        img.onload = () => URL.revokeObjectURL(url);
        img.src = url;
        if (large) img.dataset.loadedLarge = path;
      } else if (!response.ok && !large) {
        img.alt = `no image (${response.status})`;
      }
    } catch { /* offline: the image stays empty */ } finally {
      imageQueue.running -= 1;
      const next = imageQueue.waiting.shift();
      if (next) next();
    }
  };
  // The large preview goes first: a person is looking at it.
  if (imageQueue.running < 6) run(); else if (large) imageQueue.waiting.unshift(run); else imageQueue.waiting.push(run);
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
  return job.total ? Math.round((100 * (job.done + (job.failed || 0))) / job.total) : job.status === "done" ? 100 : 0;
}

// ---------- the model ----------
// Readiness needs no key, so the page names the model (and warns about the demo model) before
// a key is entered. A 503 (not ready) still carries the model. The name is the model's human
// name (api/model_info.py), the digest only says which weights.
function showText(el, text) {
  // Text in `backticks` becomes <code>, as in the server's messages; never HTML.
  el.replaceChildren();
  text.split("`").forEach((part, i) => {
    if (i % 2) el.append(Object.assign(document.createElement("code"), { textContent: part }));
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
function showKeyHint(show) {
  $("key-hint").hidden = !show;
  $("key-help").setAttribute("aria-expanded", String(show));
}

async function checkKey() {
  const status = $("key-status");
  try {
    const me = await api("/me");
    setStatus(status, `${me.name}: ${me.scopes.join(", ")}`, "ok");
    showKeyHint(false);
    return true;
  } catch (error) {
    setStatus(status, state.key ? `key refused (${error.message})` : "enter an API key",
      state.key ? "error" : "muted");
    showKeyHint(true);
    clearResults(); // what an earlier key showed is not this key's to see
    return false;
  }
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.key = $("api-key").value.trim();
  localStorage.setItem("ramdex.key", state.key);
  if (await checkKey()) { refreshConcepts(); refreshJobs(); runSearch(); }
});
$("key-help").addEventListener("click", () => showKeyHint($("key-hint").hidden));

// ---------- tag chips ----------
function addChip(name, mode = "all") {
  const chip = state.chips.find((c) => c.name.toLowerCase() === name.toLowerCase());
  if (chip) chip.mode = mode; else state.chips.push({ name, mode });
  renderChips();
}

function renderChips() {
  const box = $("tag-chips");
  box.replaceChildren();
  state.chips.forEach((chip, i) => {
    const next = CHIP_MODES[(CHIP_MODES.indexOf(chip.mode) + 1) % CHIP_MODES.length];
    const item = el("span", { className: `chip ${chip.mode}`, role: "listitem" });
    item.dataset.name = chip.name;
    item.dataset.mode = chip.mode;
    const mode = el("button", { type: "button", className: "mode", textContent: MODE_TEXT[chip.mode] });
    // The name starts with the visible word (what speech users say to press it).
    mode.setAttribute("aria-label",
      `${MODE_TEXT[chip.mode]} (${MODE_HELP[chip.mode]}): ${chip.name}. Change to ${MODE_TEXT[next]} (${MODE_HELP[next]})`);
    mode.title = `${MODE_HELP[chip.mode]}; click: ${MODE_TEXT[next]}`;
    mode.addEventListener("click", () => { chip.mode = next; renderChips(); runSearch(); });
    const name = el("span", { className: "name", textContent: chip.name });
    const remove = el("button", { type: "button", className: "remove", textContent: "×" });
    remove.setAttribute("aria-label", `remove ${chip.name}`);
    remove.addEventListener("click", () => {
      state.chips.splice(i, 1); renderChips(); runSearch(); $("search-input").focus();
    });
    item.append(mode, name, remove);
    box.append(item);
  });
}

// ---------- tag autocomplete (English and Chinese) ----------
let suggestTimer = null;
let suggestions = [];
let active = -1;

function setActive(i) {
  active = i;
  const items = [...$("suggestions").children];
  items.forEach((li, j) => { li.classList.toggle("active", j === i); li.setAttribute("aria-selected", String(j === i)); });
  $("search-input").setAttribute("aria-activedescendant", i >= 0 ? `suggestion-${i}` : "");
}

function showSuggestions(items, typed = "") {
  suggestions = items;
  const list = $("suggestions");
  list.replaceChildren();
  for (const [i, tag] of items.entries()) {
    const li = el("li", { id: `suggestion-${i}`, role: "option" });
    li.dataset.index = String(i);
    li.append(tag.name);
    if (tag.name_zh) li.append(" · ", el("span", { lang: "zh", textContent: tag.name_zh }));
    if (tag.origin === "concept") li.classList.add("concept");
    li.addEventListener("mousedown", (e) => { e.preventDefault(); pickSuggestion(i); });
    li.addEventListener("mouseenter", () => setActive(i));
    list.append(li);
  }
  list.hidden = items.length === 0;
  $("search-input").setAttribute("aria-expanded", String(items.length > 0));
  // A suggestion that is exactly what was typed (either language) is highlighted: Enter picks it.
  const t = typed.toLowerCase();
  setActive(items.findIndex((tag) => tag.name.toLowerCase() === t || (tag.name_zh || "") === typed));
}

function pickSuggestion(i) {
  const tag = suggestions[i];
  if (!tag) return;
  addChip(tag.name, "all");
  $("search-input").value = "";
  showSuggestions([]);
  runSearch();
}

async function fetchSuggestions(prefix) {
  const page = await api(`/tags?prefix=${encodeURIComponent(prefix)}&limit=8`);
  return page.items;
}

$("search-input").addEventListener("input", () => {
  clearTimeout(suggestTimer);
  const prefix = $("search-input").value.trim();
  if (!prefix) { showSuggestions([]); return; }
  suggestTimer = setTimeout(async () => {
    try {
      const items = await fetchSuggestions(prefix);
      if ($("search-input").value.trim() === prefix) showSuggestions(items, prefix);
    } catch { showSuggestions([]); }
  }, 120);
});

$("search-input").addEventListener("keydown", (event) => {
  const items = $("suggestions").children;
  if ((event.key === "ArrowDown" || event.key === "ArrowUp") && items.length) {
    event.preventDefault();
    setActive((active + (event.key === "ArrowDown" ? 1 : items.length - 1 + (active < 0 ? 1 : 0))) % items.length);
  } else if (event.key === "Enter" && active >= 0 && items.length) {
    event.preventDefault(); // picks the highlighted tag; no search for the typed prefix
    pickSuggestion(active);
  } else if (event.key === "Escape" && items.length) {
    event.preventDefault();
    showSuggestions([]);
  } else if (event.key === "Backspace" && !$("search-input").value && state.chips.length) {
    state.chips.pop(); renderChips(); runSearch();
  }
});
$("search-input").addEventListener("blur", () => setTimeout(() => showSuggestions([]), 100));

// ---------- search ----------
function dayAfter(date) {
  const d = new Date(`${date}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + 1);
  return d.toISOString();
}

function currentQuery() {
  const text = $("search-input").value.trim();
  const type = $("type-filter").value;
  const from = $("date-from").value;
  const to = $("date-to").value;
  const query = {
    text: text || null,
    all: state.chips.filter((c) => c.mode === "all").map((c) => c.name),
    any: state.chips.filter((c) => c.mode === "any").map((c) => c.name),
    none: state.chips.filter((c) => c.mode === "none").map((c) => c.name),
    min_score: Number($("min-score").value) || null,
    mime: type ? [type] : [],
    created_after: from ? `${from}T00:00:00Z` : null,
    created_before: to ? dayAfter(to) : null,
    sort: $("sort").value,
    limit: Number($("results").dataset.pageSize) || 40, // data-page-size: tests page small
  };
  if (state.similar && state.similar.kind === "asset") { query.similar_to = state.similar.id; query.text = null; }
  return query;
}

function reasonText(reasons) {
  return reasons.map((r) => `${r.name} ${r.score.toFixed(2)}`).join(", ");
}

function clearResults() {
  $("results").replaceChildren();
  $("select-results").hidden = true;
  $("facets").replaceChildren();
  $("facets").hidden = true;
  $("more").hidden = true;
  state.cursor = null;
  state.lastQuery = null;
  setStatus($("search-status"), "");
  clearSelection();
}

// Asset id -> the timestamp (s) of its best-matching frame in the last results (videos).
const moments = new Map();

function formatTime(seconds) {
  const m = Math.floor(seconds / 60), sec = seconds - m * 60;
  return `${m}:${sec.toFixed(1).padStart(4, "0")}`;
}

// A video plays from its best moment, streamed: a <video> element cannot send the key header,
// so the server signs a short-lived link to the original (POST /assets/{id}/link) that the
// browser reads with Range requests; the media fragment (#t=12.5) seeks to the moment.
async function showVideo(img, asset) {
  let video = $("detail-video");
  if (!video) {
    video = el("video", { id: "detail-video", controls: true, preload: "metadata" });
    video.style.maxWidth = "100%";
    img.after(video);
  }
  video.removeAttribute("src");
  video.hidden = !asset.mime || !asset.mime.startsWith("video/");
  img.hidden = !video.hidden;
  if (video.hidden) return;
  const shown = asset.id;
  let link;
  try {
    link = await api(`/assets/${asset.id}/link`, { method: "POST" });
  } catch {
    img.hidden = false; video.hidden = true; return;
  }
  if (state.detailAsset && state.detailAsset.id !== shown) return; // another asset opened meanwhile
  const start = moments.get(asset.id);
  video.src = start ? `${link.url}#t=${start}` : link.url;
}

function renderHits(hits, append) {
  const grid = $("results");
  if (!append) { grid.replaceChildren(); clearSelection(); }
  for (const hit of hits) {
    const id = hit.asset.id;
    if (grid.querySelector(`.hit[data-asset-id="${id}"]`)) continue;
    // A card is a group: the open button (image and caption), a selection checkbox and a
    // similar button beside it (controls may not sit inside a button).
    const card = el("div", { className: "hit" });
    card.dataset.assetId = String(id);
    const open = el("button", { type: "button", className: "open" });
    const img = el("img", { alt: `asset ${id}`, loading: "lazy" });
    loadImage(img, hit.asset.thumbnail_url);
    const caption = el("span", { className: "caption" });
    const name = el("span", { className: "name", textContent: state.names.get(id) || `asset ${id}` });
    const score = el("strong", { className: "score" });
    // No ranking signal (filters only): show when the asset arrived instead of a score.
    score.textContent = hit.score === null ? hit.asset.created_at.slice(0, 10) : hit.score.toFixed(3);
    const concept = hit.reasons.find((r) => r.kind === "concept");
    const line = el("span", { className: "line" }, score);
    if (concept && concept.above_threshold) {
      card.classList.add("above");
      line.append(el("span", { className: "above-badge", textContent: "above threshold" }));
    }
    // Videos and animations: the best-matching moment, where the asset view starts playing.
    const moment = hit.frames && hit.frames.length ? hit.frames[0].timestamp_s : null;
    if (moment !== null) moments.set(id, moment); else moments.delete(id);
    const whyText = reasonText(hit.reasons) + (moment !== null ? ` · at ${formatTime(moment)}` : "");
    const why = el("span", { className: "why", textContent: whyText });
    why.title = why.textContent;
    caption.append(name, line, why);
    open.append(img, caption);
    const box = el("input", { type: "checkbox", className: "select" });
    box.setAttribute("aria-label", `select asset ${id}`);
    box.addEventListener("click", (e) => toggleSelected(id, box.checked, e.shiftKey));
    const similar = el("button", { type: "button", className: "similar small secondary", textContent: "Similar" });
    similar.setAttribute("aria-label", `similar to asset ${id}`);
    similar.addEventListener("click", () => searchSimilarAsset(id));
    // Shift-, Ctrl- or Cmd-click on a card selects instead of opening.
    open.addEventListener("click", (e) => {
      if (e.shiftKey || e.ctrlKey || e.metaKey) toggleSelected(id, !state.selected.has(id), e.shiftKey);
      else openDetail(id);
    });
    card.append(open, box, similar);
    grid.append(card);
  }
  renderSelection();
  fillNames(hits.map((h) => h.asset.id));
}

// File names for the cards (GET /search/names), after the grid is drawn.
async function fillNames(ids) {
  const wanted = ids.filter((id) => !state.names.has(id));
  for (let i = 0; i < wanted.length; i += 200) {
    try {
      const page = await api(`/search/names?${wanted.slice(i, i + 200).map((id) => `ids=${id}`).join("&")}`);
      for (const item of page.items) if (item.name) state.names.set(item.id, item.name);
    } catch { return; /* names are a convenience; the card still says "asset N" */ }
  }
  for (const id of ids) {
    const card = $("results").querySelector(`.hit[data-asset-id="${id}"]`);
    const name = state.names.get(id);
    if (!card || !name) continue;
    card.querySelector(".name").textContent = name;
    card.querySelector(".name").title = name;
    card.querySelector("img").alt = name;
    card.querySelector(".select").setAttribute("aria-label", `select ${name}`);
    card.querySelector(".similar").setAttribute("aria-label", `similar to ${name}`);
  }
}

function searchSimilarAsset(id) {
  state.similar = { kind: "asset", id, name: state.names.get(id) || `asset ${id}` };
  if (!state.names.has(id)) { // clicked before the cards got their names: ask for this one
    api(`/search/names?ids=${id}`).then((page) => {
      const name = page.items.length && page.items[0].name;
      if (!name) return;
      state.names.set(id, name);
      if (state.similar && state.similar.id === id) { state.similar.name = name; renderQueryChip(); }
    }).catch(() => { /* "asset N" stays */ });
  }
  $("search-input").value = "";
  if ($("detail").open) $("detail").close();
  renderQueryChip();
  runSearch();
}

function searchSimilarImage(file) {
  if (!file || !(file.type || "").startsWith("image/")) {
    setStatus($("search-status"), `${file ? file.name || "that" : "that"} is not an image`, "error");
    return;
  }
  state.similar = { kind: "image", file, name: file.name || "pasted image" };
  $("search-input").value = "";
  renderQueryChip();
  runSearch();
}

// What the search is similar to, with a button to stop.
function renderQueryChip() {
  const box = $("query-chip");
  box.replaceChildren();
  box.hidden = !state.similar;
  if (!state.similar) return;
  const clear = el("button", { type: "button", className: "remove small secondary", textContent: "×" });
  clear.setAttribute("aria-label", "stop searching similar images");
  clear.addEventListener("click", () => { state.similar = null; renderQueryChip(); runSearch(); });
  box.append(el("span", { textContent: `Similar to ${state.similar.name}` }), clear);
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

const BULK_LIMIT = 1000; // the API changes at most 1000 assets at once (all or nothing)

async function bulkChange(action) {
  const status = $("bulk-status");
  const tag = $("bulk-tag").value.trim();
  if (!tag) { setStatus(status, "type a tag first", "error"); $("bulk-tag").focus(); return; }
  const ids = [...state.selected];
  if (ids.length > BULK_LIMIT) { setStatus(status, `${ids.length} selected: at most ${BULK_LIMIT} at once`, "error"); return; }
  setStatus(status, `${action} “${tag}” on ${ids.length} assets…`);
  try {
    const reply = await changeLabels(ids, tag, action);
    setStatus(status, `${action} “${tag}”: ${reply.changed} changed, ${reply.unchanged} already so`, "ok");
  } catch (error) {
    setStatus(status, error.message, "error");
  }
}

// Every result of the search, not only those shown (up to the bulk limit), by paging it.
async function selectAllResults() {
  const status = $("bulk-status");
  if (!state.lastQuery || state.lastQuery.image) { setStatus(status, "select all shown instead (image search)", "error"); return; }
  setStatus(status, "collecting the results…");
  try {
    let cursor = null;
    do {
      const page = await api("/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ...state.lastQuery.body, limit: 200, cursor }),
      });
      page.hits.forEach((h) => state.selected.add(h.asset.id));
      cursor = page.next_cursor;
    } while (cursor && state.selected.size < BULK_LIMIT);
    renderSelection();
    setStatus(status, cursor ? `${state.selected.size} selected (the first ${BULK_LIMIT}: the most one change takes)` : `all ${state.selected.size} results selected`, "ok");
  } catch (error) {
    setStatus(status, error.message, "error");
  }
}

$("bulk-form").addEventListener("submit", (event) => { event.preventDefault(); bulkChange("add"); });
for (const button of $("bulk-form").querySelectorAll("button[type=button][data-action]")) {
  button.addEventListener("click", () => bulkChange(button.dataset.action));
}
$("select-all").addEventListener("click", () => { shownIds().forEach((i) => state.selected.add(i)); renderSelection(); });
$("select-results").addEventListener("click", selectAllResults);
$("select-none").addEventListener("click", clearSelection);

// One page of the search (the first, or the next one with append).
async function fetchPage(query, cursor) {
  if (query.image) {
    const form = new FormData();
    form.append("file", query.image, query.image.name || "query.png");
    form.append("limit", String(query.body.limit));
    if (cursor) form.append("cursor", cursor);
    return api("/search/image", { method: "POST", body: form });
  }
  return api("/search", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...query.body, cursor }),
  });
}

async function runSearch(append = false) {
  if (append && (state.loading || !state.cursor || !state.lastQuery)) return;
  const status = $("search-status");
  const seq = append ? state.searchSeq : ++state.searchSeq;
  const query = append ? state.lastQuery
    : { body: currentQuery(), image: state.similar && state.similar.kind === "image" ? state.similar.file : null };
  if (!append) state.lastQuery = query;
  state.loading = true;
  setStatus(status, append ? "loading more…" : "searching…");
  const t0 = performance.now();
  const summary = append || query.image ? null : fetchSummary(query.body);
  try {
    const page = await fetchPage(query, append ? state.cursor : null);
    if (seq !== state.searchSeq) return; // a newer search is on its way
    const ms = Math.round(performance.now() - t0);
    renderHits(page.hits, append);
    $("select-results").hidden = !page.hits.length && !append;
    state.cursor = page.next_cursor;
    $("more").hidden = !page.next_cursor;
    if (!append) state.page = { ms, threshold: page.concept_threshold, pending: page.pending_reindex, total: null };
    showSearchStatus();
    if (summary) {
      const s = await summary;
      if (seq === state.searchSeq && s) { state.page.total = s; showSearchStatus(); renderFacets(s.facets); }
    }
  } catch (error) {
    if (seq !== state.searchSeq) return;
    if (!append) { $("results").replaceChildren(); $("facets").hidden = true; $("more").hidden = true; }
    setStatus(status, error.message, "error");
  } finally {
    if (seq === state.searchSeq) state.loading = false;
  }
  fillViewport();
}

// The total and the facets of a search; null when they cannot be had (the grid still shows).
async function fetchSummary(body) {
  try {
    return await api("/search/facets?top=12", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch { return null; }
}

function showSearchStatus() {
  const p = state.page;
  const shown = $("results").querySelectorAll(".hit").length;
  const parts = [];
  if (p.total) parts.push(`${p.total.total.toLocaleString("en")}${p.total.exact ? "" : "+"} result${p.total.total === 1 && p.total.exact ? "" : "s"}`);
  parts.push(`${shown} shown`, `${p.ms} ms`);
  if (p.threshold !== null && p.threshold !== undefined) {
    const above = $("results").querySelectorAll(".hit.above").length;
    parts.push(`concept threshold ${p.threshold.toFixed(2)} (calibrated): ${above} shown above it`);
  }
  if (p.pending) parts.push(`${p.pending} assets awaiting re-index`);
  if (!shown) parts.unshift("no results");
  setStatus($("search-status"), parts.join(" · "));
}

function renderFacets(facets) {
  const box = $("facets");
  box.replaceChildren();
  const inQuery = new Set(state.chips.map((c) => c.name.toLowerCase()));
  const shown = facets.filter((f) => !inQuery.has(f.name.toLowerCase()));
  box.hidden = !shown.length;
  if (!shown.length) return;
  box.append(el("span", { className: "muted", textContent: "Refine:" }));
  for (const f of shown) {
    const b = el("button", { type: "button", className: "facet" }, f.name);
    if (f.name_zh) b.append(" ", el("span", { lang: "zh", className: "zh", textContent: f.name_zh }));
    b.append(" ", el("span", { className: "count", textContent: String(f.count) }),
      el("span", { className: "visually-hidden", textContent: " results: add as a filter" }));
    b.dataset.name = f.name;
    b.title = `${f.count} of the results have this tag: add it as a filter`;
    b.addEventListener("click", () => { addChip(f.name, "all"); runSearch(); });
    box.append(b);
  }
}

// Infinite scroll: the next page loads when the end of the grid comes into view (the More
// button does the same for keyboard users).
const endObserver = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) runSearch(true);
}, { rootMargin: "400px" });
endObserver.observe($("results-end"));
function fillViewport() {
  const end = $("results-end").getBoundingClientRect();
  if (state.cursor && end.top < window.innerHeight + 400) runSearch(true);
}

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  // Typed exactly a tag's name (English or Chinese)? It becomes a chip, as picking it would.
  const text = $("search-input").value.trim();
  if (text && !state.similar) {
    try {
      const exact = (await fetchSuggestions(text)).find((t) => t.name.toLowerCase() === text.toLowerCase() || t.name_zh === text);
      if (exact) { addChip(exact.name, "all"); $("search-input").value = ""; showSuggestions([]); }
    } catch { /* the search reports the error */ }
  }
  if (text && state.similar) { state.similar = null; renderQueryChip(); }
  showSuggestions([]);
  runSearch(false);
});
$("more").addEventListener("click", () => runSearch(true));
for (const id of ["type-filter", "date-from", "date-to", "sort"]) $(id).addEventListener("change", () => runSearch());

// Similar by image: the button, a drop on the search box, a paste anywhere.
$("image-button").addEventListener("click", () => $("image-input").click());
$("image-input").addEventListener("change", () => { searchSimilarImage($("image-input").files[0]); $("image-input").value = ""; });
const searchBox = $("search-box");
searchBox.addEventListener("dragover", (e) => { e.preventDefault(); searchBox.classList.add("drop"); });
searchBox.addEventListener("dragleave", () => searchBox.classList.remove("drop"));
searchBox.addEventListener("drop", (e) => {
  e.preventDefault(); e.stopPropagation();
  searchBox.classList.remove("drop");
  searchSimilarImage(e.dataTransfer.files[0]);
});
document.addEventListener("paste", (e) => {
  const file = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
  if (!file) return; // text pastes go where they were meant to
  e.preventDefault();
  showView("search");
  searchSimilarImage(file);
});
// A file dropped outside a drop target must not replace the page.
document.addEventListener("dragover", (e) => e.preventDefault());
document.addEventListener("drop", (e) => e.preventDefault());

// ---------- asset detail ----------
function modelLabel(asset) {
  if (!asset.model) return "—";
  const digest = (asset.model_id || "").split("@")[1];
  return digest ? `${asset.model} (${digest})` : asset.model;
}

function fileNameOf(asset) {
  const source = asset.sources.length ? asset.sources[0].uri : "";
  return source.split("?")[0].replace(/^upload:/, "").split(/[\\/]/).pop() || `asset ${asset.id}`;
}

// Browsers show these types themselves; others (TIFF, RAW) keep the thumbnail as the preview.
const VIEWABLE = ["image/jpeg", "image/png", "image/webp", "image/gif", "image/avif", "image/bmp", "image/svg+xml"];

// Shows asset `id` in the dialog; `stepping` (arrows, after a delete) only when it is open
// already: a dialog closed meanwhile stays closed.
async function openDetail(id, stepping = false) {
  const dialog = $("detail");
  if (stepping && !dialog.open) return;
  try {
    const asset = await api(`/assets/${id}`);
    state.detailId = id;
    state.detailAsset = asset;
    $("detail-title").textContent = fileNameOf(asset);
    const meta = $("detail-meta");
    meta.replaceChildren();
    const rows = [
      ["file", fileNameOf(asset)],
      ["id", asset.id], ["status", asset.status + (asset.error ? ` (${asset.error})` : "")],
      ["type", asset.mime || "?"],
      ["size", `${asset.width || "?"}×${asset.height || "?"} px, ${humanBytes(asset.bytes)}`],
      ["model", modelLabel(asset)], ["added", new Date(asset.created_at).toLocaleString()],
      ["sources", asset.sources.map((s) => s.uri).join("\n")],
    ];
    for (const [k, v] of rows) meta.append(el("dt", { textContent: k }), el("dd", { textContent: String(v) }));
    const body = $("detail-tags").tBodies[0];
    body.replaceChildren();
    for (const tag of asset.tags) {
      const tr = el("tr", { className: tag.above_threshold ? "above" : "" });
      tr.append(el("td", { textContent: tag.name }), el("td", { lang: "zh", textContent: tag.name_zh || "" }),
        el("td", { textContent: tag.score.toFixed(3) }));
      body.append(tr);
    }
    const img = $("detail-image");
    img.removeAttribute("src");
    img.alt = `preview of ${fileNameOf(asset)}`;
    loadImage(img, asset.thumbnail_url);
    // The large preview: the original itself when the browser can show it and it is not huge.
    if (VIEWABLE.includes(asset.mime) && (asset.bytes || 0) <= 30 * 1024 * 1024) loadImage(img, asset.original_url, true);
    showVideo(img, asset).catch(() => { /* the thumbnail stays */ });
    setStatus($("detail-status"), "");
    setStatus($("label-status"), "");
    $("label-add").value = "";
    $("label-history").open = false;
    showPosition();
    // The tag panel's own errors show in the panel; the dialog opens regardless.
    try { await refreshLabels(id); } catch (error) { setStatus($("label-status"), error.message, "error"); }
    if (!dialog.open && !stepping) dialog.showModal();
  } catch (error) {
    setStatus(dialog.open ? $("detail-status") : $("search-status"), error.message, "error");
  }
}

function detailNeighbour(step) {
  const ids = $("review").hidden ? shownIds() : state.queue.items.map((x) => x.asset_id);
  const i = ids.indexOf(state.detailId);
  return i < 0 ? null : ids[i + step] ?? null;
}

function showPosition() {
  const ids = $("review").hidden ? shownIds() : state.queue.items.map((x) => x.asset_id);
  const i = ids.indexOf(state.detailId);
  $("detail-position").textContent = i >= 0 ? `${i + 1} of ${ids.length} shown` : "";
  $("detail-prev").disabled = detailNeighbour(-1) === null;
  $("detail-next").disabled = detailNeighbour(1) === null;
}

async function stepDetail(step) {
  const next = detailNeighbour(step);
  if (next === null) return;
  await openDetail(next, true);
  const card = $("results").querySelector(`.hit[data-asset-id="${next}"]`);
  if (card) card.scrollIntoView({ block: "nearest" });
  // Near the end of the loaded results: load the next page, so → keeps going.
  if (step > 0 && detailNeighbour(2) === null) runSearch(true);
}

$("detail-prev").addEventListener("click", () => stepDetail(-1));
$("detail-next").addEventListener("click", () => stepDetail(1));
document.addEventListener("keydown", (event) => {
  if (!$("detail").open || $("confirm").open) return;
  const t = event.target;
  if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement) return;
  if (event.key === "ArrowRight") { event.preventDefault(); stepDetail(1); }
  else if (event.key === "ArrowLeft") { event.preventDefault(); stepDetail(-1); }
});
// Back on the grid, focus returns to the card the dialog showed last.
$("detail").addEventListener("close", () => {
  if (!$("review").hidden) return;
  const card = $("results").querySelector(`.hit[data-asset-id="${state.detailId}"] .open`);
  if (card) card.focus();
});
$("detail-similar").addEventListener("click", () => searchSimilarAsset(state.detailId));

$("detail-download").addEventListener("click", async () => {
  const asset = state.detailAsset;
  const status = $("detail-status");
  try {
    const response = await fetch(asset.original_url, { headers: headers() });
    if (!response.ok) throw new Error(`${response.status}: ${await problemText(response)}`);
    const url = URL.createObjectURL(await response.blob());
    const a = el("a", { href: url, download: fileNameOf(asset) });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    setStatus(status, `downloading ${fileNameOf(asset)}`, "ok");
  } catch (error) {
    setStatus(status, error.message, "error");
  }
});

// A yes/no question in a modal dialog; resolves true for the confirming button.
function confirmAction(text, okLabel = "Delete") {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus(); // the safe choice has focus
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

$("detail-delete").addEventListener("click", async () => {
  const asset = state.detailAsset;
  const name = fileNameOf(asset);
  if (!(await confirmAction(`Delete ${name} (asset ${asset.id})? Its file, tags and index entries go; this cannot be undone.`))) return;
  const next = detailNeighbour(1) ?? detailNeighbour(-1);
  try {
    await api(`/assets/${asset.id}`, { method: "DELETE" });
    const card = $("results").querySelector(`.hit[data-asset-id="${asset.id}"]`);
    if (card) card.remove();
    state.selected.delete(asset.id);
    renderSelection();
    if (state.page && state.page.total) state.page.total.total -= 1;
    if (state.page) showSearchStatus();
    setStatus($("search-status"), `${name} deleted · ${$("search-status").textContent}`, "ok");
    if (next !== null) { await openDetail(next, true); setStatus($("detail-status"), `${name} deleted`, "ok"); }
    else $("detail").close();
  } catch (error) {
    setStatus($("detail-status"), error.message, "error");
  }
});

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
  // Grouped by where the tag comes from: what a person said first, then the file, then the
  // model; tags that do not match a search (rejected, below threshold) last.
  const groups = new Map(TAG_GROUPS.map(([key]) => [key, []]));
  for (const tag of tags) groups.get(tagGroup(tag)).push(tag);
  for (const [key, label] of TAG_GROUPS) {
    const members = groups.get(key);
    if (!members.length) continue;
    const head = document.createElement("tr");
    head.className = `group ${key}`;
    const th = document.createElement("th");
    th.colSpan = 5; th.scope = "colgroup"; th.textContent = `${label} (${members.length})`;
    head.append(th); body.append(head);
    for (const tag of members) body.append(labelRow(tag));
  }
}

const TAG_GROUPS = [
  ["manual", "Manual"], ["embedded", "Embedded keywords"], ["concept", "Concepts"],
  ["model", "Model"], ["unmatched", "Not matching"],
];

function tagGroup(tag) {
  if (!tag.matches) return "unmatched";
  return ["manual", "embedded", "concept", "model"].find((s) => tag.sources.includes(s)) || "model";
}

function labelRow(tag) {
  {
    const tr = document.createElement("tr");
    tr.dataset.key = tag.key;
    tr.className = tag.matches ? "matches" : "not-matching";
    const name = document.createElement("td");
    name.className = "name";
    name.textContent = tag.name;
    if (tag.chinese) name.append(" ", Object.assign(document.createElement("span"), { className: "muted", lang: "zh", textContent: tag.chinese }));
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
    return tr;
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

