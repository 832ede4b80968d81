// ramdex web UI: uploads. Many files and whole folders (chosen or dropped); each file gets its
// own outcome (done, duplicate of asset N, failed: the server's reason, skipped) and one bad
// file never stops the others. Overall progress counts each file half when sent, whole when
// its job ends. Needs app.js (api, headers, followJob, setStatus, el).
"use strict";

const UPLOADS_AT_ONCE = 3;
const upload = { items: [], running: false };

// Every file under a dropped folder (DataTransfer entries), with its path in the folder.
async function entryFiles(entry, prefix = "") {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    return [{ file, path: prefix + file.name }];
  }
  if (!entry.isDirectory) return [];
  const reader = entry.createReader();
  const children = [];
  for (;;) { // readEntries answers in batches until it answers none
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!batch.length) break;
    children.push(...batch);
  }
  const nested = await Promise.all(children.map((c) => entryFiles(c, `${prefix}${entry.name}/`)));
  return nested.flat();
}

function queueFiles(found) {
  // Hidden files (.DS_Store, ._x.jpg) are a folder's clutter, not assets.
  const files = found.filter(({ file }) => !file.name.startsWith("."));
  const list = $("upload-list");
  if (!upload.running) { upload.items = []; list.replaceChildren(); }
  for (const { file, path } of files) {
    const outcome = el("span", { className: "outcome", textContent: "waiting" });
    const li = el("li", { className: "waiting" }, el("span", { className: "file", textContent: path, title: path }), outcome);
    list.append(li);
    upload.items.push({ file, path, li, outcome, state: "waiting", progress: 0 });
  }
  setStatus($("upload-status"), `${upload.items.length} files ready`);
  return files.length;
}

function setOutcome(item, state, text, assetId = null) {
  item.state = state;
  item.li.className = state;
  item.outcome.replaceChildren(text);
  if (assetId !== null) {
    const open = el("button", { type: "button", className: "link", textContent: `asset ${assetId}` });
    open.addEventListener("click", () => openDetail(assetId));
    item.outcome.append(" ", open);
  }
}

function sendFile(item) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/assets");
    if (state.key) xhr.setRequestHeader("Authorization", `Bearer ${state.key}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) { item.progress = 0.5 * (e.loaded / e.total); showUploadProgress(); } };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      resolve({ status: xhr.status, body });
    };
    xhr.onerror = () => resolve({ status: 0, body: null });
    const form = new FormData();
    form.append("file", item.file, item.file.name);
    xhr.send(form);
  });
}

async function uploadItem(item) {
  const type = item.file.type;
  if (type && !type.startsWith("image/")) {
    item.progress = 1;
    setOutcome(item, "skipped", `skipped: not an image (${type})`);
    return;
  }
  setOutcome(item, "working", "uploading");
  const { status, body } = await sendFile(item);
  item.progress = 0.5;
  if (status === 200 && body && body.duplicates.length) {
    item.progress = 1;
    setOutcome(item, "duplicate", "duplicate of", body.duplicates[0]);
    return;
  }
  if (status !== 202 || !body) {
    item.progress = 1;
    const reason = status === 0 ? "network error" : problemMessage(body, `HTTP ${status}`);
    setOutcome(item, "failed", `failed: ${reason}`);
    return;
  }
  const assetId = body.asset_ids[0];
  setOutcome(item, "working", "indexing");
  refreshJobs();
  try {
    const job = await followJob(body.job.id, (j) => { item.progress = 0.5 + 0.5 * (percent(j) / 100); showUploadProgress(); });
    item.progress = 1;
    if (job.status === "done" && !job.failed) { setOutcome(item, "done", "done:", assetId); return; }
    let reason = job.error || job.status;
    try { const asset = await api(`/assets/${assetId}`); reason = asset.error || reason; } catch { /* keep the job's */ }
    setOutcome(item, "failed", `failed: ${reason}`);
  } catch (error) {
    item.progress = 1;
    setOutcome(item, "failed", `failed: ${error.message}`);
  }
}

function counts() {
  const n = { done: 0, duplicate: 0, failed: 0, skipped: 0 };
  for (const item of upload.items) if (item.state in n) n[item.state] += 1;
  return n;
}

function showUploadProgress() {
  const items = upload.items;
  const bar = $("upload-progress");
  bar.value = items.length ? (100 * items.reduce((s, i) => s + i.progress, 0)) / items.length : 0;
  const n = counts();
  const finished = n.done + n.duplicate + n.failed + n.skipped;
  if (finished < items.length) setStatus($("upload-status"), `${finished} of ${items.length} files finished (${n.done} indexed, ${n.duplicate} duplicates, ${n.failed} failed)`);
}

async function startUpload() {
  const status = $("upload-status");
  const todo = upload.items.filter((i) => i.state === "waiting");
  if (!todo.length) { setStatus(status, "choose or drop files first", "error"); return; }
  if (upload.running) return;
  upload.running = true;
  $("upload-button").disabled = true;
  showUploadProgress();
  const workers = Array.from({ length: UPLOADS_AT_ONCE }, async () => {
    for (let item = todo.shift(); item; item = todo.shift()) await uploadItem(item);
  });
  await Promise.all(workers);
  upload.running = false;
  $("upload-button").disabled = false;
  const n = counts();
  $("upload-progress").value = 100;
  const parts = [`indexed ${n.done}`];
  if (n.duplicate) parts.push(`${n.duplicate} duplicate${n.duplicate > 1 ? "s" : ""}`);
  if (n.failed) parts.push(`${n.failed} failed`);
  if (n.skipped) parts.push(`${n.skipped} skipped`);
  // Red only when nothing went in; each failed file says why in the list.
  setStatus(status, `${parts.join(" · ")} (${upload.items.length} files)`, n.failed && !n.done ? "error" : "ok");
  $("upload-input").value = "";
  $("folder-input").value = "";
  refreshJobs();
  if (n.done) runSearch(false);
}

for (const id of ["upload-input", "folder-input"]) {
  $(id).addEventListener("change", () => {
    queueFiles([...$(id).files].map((file) => ({ file, path: file.webkitRelativePath || file.name })));
  });
}
$("upload-form").addEventListener("submit", (event) => { event.preventDefault(); startUpload(); });

const dropzone = $("dropzone");
dropzone.addEventListener("dragover", (e) => { e.preventDefault(); dropzone.classList.add("drop"); });
dropzone.addEventListener("dragleave", () => dropzone.classList.remove("drop"));
dropzone.addEventListener("drop", async (e) => {
  e.preventDefault();
  e.stopPropagation();
  dropzone.classList.remove("drop");
  // Entries must be taken synchronously: the DataTransfer empties after this handler returns.
  const entries = [...e.dataTransfer.items].map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  const plain = [...e.dataTransfer.files];
  let found;
  if (entries.some(Boolean)) found = (await Promise.all(entries.filter(Boolean).map((en) => entryFiles(en)))).flat();
  else found = plain.map((file) => ({ file, path: file.name }));
  if (queueFiles(found)) startUpload();
});
