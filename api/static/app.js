// ramdex web UI: plain JavaScript, no build step. Talks to the JSON API with the key kept in
// localStorage; images are fetched with the key and shown through blob URLs (an <img src> cannot
// send an Authorization header).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: localStorage.getItem("ramdex.key") || "", chips: [], cursor: null, lastQuery: null };

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
  if (!append) grid.replaceChildren();
  for (const hit of hits) {
    const card = document.createElement("button");
    card.type = "button";
    card.className = "hit";
    card.dataset.assetId = String(hit.asset.id);
    const img = document.createElement("img");
    img.alt = `asset ${hit.asset.id}`;
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
    card.append(img, caption);
    card.addEventListener("click", () => openDetail(hit.asset.id));
    grid.append(card);
  }
}

async function runSearch(append = false) {
  const status = $("search-status");
  const query = append ? { ...state.lastQuery, cursor: state.cursor } : currentQuery();
  state.lastQuery = { ...query, cursor: null };
  status.textContent = "searching…";
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
    status.textContent = `${shown} shown · ${Math.round(performance.now() - t0)} ms${pending}`;
  } catch (error) {
    status.textContent = error.message;
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
    dialog.showModal();
  } catch (error) {
    $("search-status").textContent = error.message;
  }
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

// ---------- start ----------
$("api-key").value = state.key;
showModel();
checkKey().then((ok) => { if (ok) { refreshConcepts(); runSearch(); } });
