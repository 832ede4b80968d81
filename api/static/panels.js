// ramdex web UI: the jobs panel (live progress while anything runs), the concepts panel
// (create with descriptions, backfill progress, delete) and the page's start. Needs app.js.
"use strict";

// ---------- jobs ----------
const ACTIVE = ["pending", "running"];
let jobsTimer = null;

function jobWhat(job) {
  if (job.kind === "backfill" && job.params.concept_id) return `backfill of concept ${job.params.concept_id}`;
  const sources = job.params.sources || [];
  if (job.kind === "ingest" && sources.length === 1) return `ingest ${String(sources[0]).replace(/^upload:/, "").split(/[\\/]/).pop()}`;
  if (job.kind === "ingest" && sources.length > 1) return `ingest of ${sources.length} sources`;
  return job.kind;
}

function jobLine(job) {
  const what = jobWhat(job);
  const count = job.total ? `${job.done + job.failed}/${job.total}` : `${job.done}`;
  const parts = [`#${job.id} ${what}`, job.status, count];
  if (job.failed) parts.push(`${job.failed} failed`);
  if (job.params.duplicate) parts.push("duplicate");
  if (ACTIVE.includes(job.status) && job.rate_per_s) parts.push(`${job.rate_per_s.toFixed(1)}/s`);
  if (ACTIVE.includes(job.status) && job.eta_s) parts.push(`about ${Math.ceil(job.eta_s)} s left`);
  return parts.join(" · ");
}

function renderJobs(jobs) {
  const list = $("jobs-list");
  list.replaceChildren();
  for (const job of jobs) {
    const li = el("li", { className: `job ${job.status}${job.failed ? " has-failures" : ""}` });
    li.dataset.jobId = String(job.id);
    const bar = el("progress", { max: 100, value: percent(job) });
    bar.setAttribute("aria-label", `job ${job.id} progress`);
    li.append(el("span", { className: "line", textContent: jobLine(job) }), bar);
    const failures = (job.params.failures || []).map((f) => f.reason);
    for (const reason of [job.error, ...failures.slice(0, 3)].filter(Boolean)) li.append(el("span", { className: "error", textContent: reason }));
    list.append(li);
  }
  const running = jobs.filter((j) => ACTIVE.includes(j.status)).length;
  setStatus($("jobs-status"), jobs.length ? `${running} running` : "no jobs yet");
}

// Fetches recent jobs; while any is active it polls again (one timer, however often called).
async function refreshJobs() {
  clearTimeout(jobsTimer);
  try {
    const page = await api("/jobs?limit=8");
    renderJobs(page.items);
    if (page.items.some((j) => ACTIVE.includes(j.status)) || upload.running) jobsTimer = setTimeout(refreshJobs, 700);
  } catch (error) {
    if (state.key) setStatus($("jobs-status"), error.message, "error");
  }
}

// ---------- concepts ----------
async function refreshConcepts() {
  try {
    const page = await api("/concepts");
    const list = $("concepts-list");
    list.replaceChildren();
    for (const concept of page.items) {
      const li = el("li", { className: `concept ${concept.status}` });
      li.dataset.conceptId = String(concept.id);
      const use = el("button", { type: "button", className: "link", textContent: concept.name });
      use.setAttribute("aria-label", `search ${concept.name}`);
      use.addEventListener("click", () => { addChip(concept.name, "all"); runSearch(); });
      const info = el("span", { className: "muted", textContent: ` ${concept.status} · ${concept.descriptions.length} descriptions · threshold ${concept.threshold.toFixed(2)}` });
      const remove = el("button", { type: "button", className: "small secondary", textContent: "Delete" });
      remove.setAttribute("aria-label", `delete concept ${concept.name}`);
      remove.addEventListener("click", () => deleteConcept(concept));
      li.append(use, info, " ", remove);
      if (concept.error) li.append(el("span", { className: "error", textContent: ` ${concept.error}` }));
      list.append(li);
    }
  } catch { /* no key yet */ }
}

async function deleteConcept(concept) {
  const status = $("concept-status");
  if (!(await confirmAction(`Delete the concept “${concept.name}” and its tag? Its scores on every asset go.`))) return;
  try {
    await api(`/concepts/${concept.id}`, { method: "DELETE" });
    setStatus(status, `“${concept.name}” deleted`, "ok");
    state.chips = state.chips.filter((c) => c.name !== concept.name);
    renderChips();
    refreshConcepts();
  } catch (error) {
    setStatus(status, error.message, "error");
  }
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
    setStatus(status, `scoring existing assets for “${created.concept.name}”…`);
    refreshConcepts();
    refreshJobs();
    const job = await followJob(created.job.id, (j) => {
      bar.value = percent(j);
      setStatus(status, `backfill ${j.done}/${j.total || "?"}`);
    });
    if (job.status === "done") {
      setStatus(status, `“${created.concept.name}” is now a tag (${job.done} assets scored)`, "ok");
      $("concept-name").value = "";
      $("concept-descriptions").value = "";
    } else {
      setStatus(status, `backfill ${job.status}: ${job.error || ""}`, "error");
    }
    refreshConcepts();
  } catch (error) {
    setStatus(status, error.message, "error");
  }
});

// ---------- start ----------
// On a phone the panels start folded: the results come first.
const narrow = matchMedia("(max-width: 900px)");
const foldPanels = () => { for (const d of document.querySelectorAll(".side details")) d.open = !narrow.matches; };
if (narrow.matches) foldPanels();
narrow.addEventListener("change", foldPanels);
$("api-key").value = state.key;
showModel();
checkKey().then((ok) => { if (ok) { refreshConcepts(); refreshJobs(); runSearch(); } });
