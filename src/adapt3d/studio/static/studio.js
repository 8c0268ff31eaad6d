// adapt3d studio: a thin page over the JSON API of adapt3d.studio.server. No build step, no external code.
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const c of children) if (c != null) node.append(c);
  return node;
};
const state = { info: null, form: null, jobs: new Map(), runsRoot: "" };

async function api(path, opts = {}) {
  const res = await fetch(path, opts);
  let body;
  try { body = await res.json(); } catch (e) { body = { ok: false, error: `${res.status} ${res.statusText}` }; }
  if (!res.ok && !("errors" in body)) throw new Error(body.error || `${res.status} ${res.statusText}`);
  return body;
}
const post = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify(body || {}) });
const fileUrl = (rel, t) => "/files/" + rel.split("/").map(encodeURIComponent).join("/") + (t ? `?t=${t}` : "");
const stamp = () => new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);

// ---------------------------------------------------------------------------------------------------- tabs
function showTab(name) {
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".panel")) s.hidden = s.id !== name;
  if (name === "runs") loadRuns();
}

// ------------------------------------------------------------------------------------------------- explore
function fillGeneratorSelect(select, info, slot) {
  select.replaceChildren();
  if (slot === "b") select.append(el("option", { value: "", textContent: "(none)" }));
  const group = (label, items, kind) => {
    if (!items.length) return;
    const g = el("optgroup", { label });
    for (const it of items) g.append(el("option", { value: `${kind}:${it}`, textContent: it }));
    select.append(g);
  };
  group("presets (random weights)", info.presets, "preset");
  group("checkpoints in the runs folder", info.checkpoints, "checkpoint");
  group("known names (download)", info.known, "checkpoint");
  const cur = info.slots[slot];
  if (cur) select.value = cur.arg.preset ? `preset:${cur.arg.preset}` : `checkpoint:${cur.label}`;
}

function showSlots(slots) {
  for (const s of ["a", "b"]) {
    const cur = slots[s];
    $(`#slot-${s}-status`).textContent = cur ? `${cur.label}${cur.notes.length ? " — " + cur.notes.join("; ") : ""}`
                                             : "no generator loaded";
    $(`#img-${s}`).classList.toggle("empty", !cur);
    $(`#orbit-${s}`).disabled = !cur;
  }
  state.info.slots = slots;
  renderViews();
}

async function loadSlot(slot) {
  const v = $(`#gen-${slot}`).value;
  const [kind, ...rest] = v.split(":");
  const body = v ? { [kind]: rest.join(":") } : {};
  $(`#slot-${slot}-status`).textContent = "loading…";
  try {
    const res = await post(`/api/slots/${slot}`, body);
    $("#explore-error").textContent = "";
    showSlots(res.slots);
  } catch (e) {
    $("#explore-error").textContent = e.message;
    showSlots(state.info.slots);
  }
}

function viewParams() {
  const p = new URLSearchParams({ seed: $("#seed").value || "0", trunc: $("#trunc").value, yaw_deg: $("#yaw").value,
                                  pitch_deg: $("#pitch").value, view: $("#view").value });
  if ($("#latent").value) p.set("latent", $("#latent").value);
  return p;
}

const pending = { a: false, b: false }, dirty = { a: false, b: false };
function renderSlot(slot) {
  const img = $(`#img-${slot}`);
  if (!state.info.slots[slot]) { img.removeAttribute("src"); return; }
  if (pending[slot]) { dirty[slot] = true; return; }   // one request in flight per slot; the newest wins
  pending[slot] = true; dirty[slot] = false;
  const params = viewParams(); params.set("slot", slot);
  const url = `/api/render?${params}`;
  const probe = new Image();
  probe.onload = () => {
    img.src = url; img.dataset.params = params.toString(); pending[slot] = false;
    $("#explore-error").textContent = "";
    if (dirty[slot]) renderSlot(slot);
  };
  probe.onerror = async () => {
    pending[slot] = false;
    try { await api(url); } catch (e) { $("#explore-error").textContent = `${slot.toUpperCase()}: ${e.message}`; }
    if (dirty[slot]) renderSlot(slot);
  };
  probe.src = url;
}
let renderTimer = null;
function renderViews() {
  for (const id of ["trunc", "yaw", "pitch"]) $(`#${id}-out`).textContent = $(`#${id}`).value;
  clearTimeout(renderTimer);
  renderTimer = setTimeout(() => { renderSlot("a"); renderSlot("b"); }, 30);
}

async function orbitJob(slot) {
  const cur = state.info.slots[slot];
  if (!cur) return;
  const values = { ...cur.arg, seeds: $("#seed").value || "0", trunc: $("#trunc").value, yaw_deg: $("#yaw").value,
                   pitch_deg: $("#pitch").value, video: "orbit", mesh: "ply",
                   out: `${state.runsRoot}/explore-${slot}-${stamp()}` };
  const res = await post("/api/jobs", { command: "render", values });
  const item = el("li");
  if (!res.ok) item.append(el("span", { className: "error", textContent: res.errors.map(e => e.message).join("; ") }));
  else item.append(`orbit video + mesh of ${slot.toUpperCase()}: job `, runLink(res.job), " (see the Jobs tab)");
  $("#explore-jobs").prepend(item);
  pollJobs();
}

async function upload(file) {
  $("#upload-status").textContent = "uploading…";
  try {
    const res = await api("/api/upload", { method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" },
                                           body: file });
    $("#upload-img").src = fileUrl(res.path);
    $("#upload-status").textContent = `${res.path} (${res.width}×${res.height} ${res.format})`;
    state.upload = res.path;
    $("#upload-invert").hidden = !state.info.commands.some(c => c.name === "invert");
  } catch (e) {
    $("#upload-status").textContent = e.message;
    $("#upload-img").removeAttribute("src");
  }
}

async function invertUpload() {
  await selectCommand("invert");
  const abs = `${state.info.runs_root}/${state.upload}`;
  const names = state.form.fields.map(f => f.name);
  const imageField = ["image", "images", "input", "target", "photo"].find(n => names.includes(n));
  if (imageField) setField(imageField, abs);
  const arg = (state.info.slots.a || {}).arg || {};
  if (arg.preset && names.includes("preset")) setField("preset", arg.preset);
  if (arg.checkpoint) for (const n of ["generator", "checkpoint"]) if (names.includes(n)) { setField(n, arg.checkpoint); break; }
  showTab("jobs");
}

// ---------------------------------------------------------------------------------------------------- jobs
function widget(f) {
  const id = `f-${f.name}`;
  const value = f.value == null ? "" : f.value;
  if (f.kind === "bool") return el("input", { type: "checkbox", id, name: f.name, checked: !!f.value });
  if (f.kind === "choice") {
    const s = el("select", { id, name: f.name });
    if (f.optional) s.append(el("option", { value: "", textContent: "None" }));
    for (const c of f.choices) s.append(el("option", { value: String(c), textContent: String(c) }));
    s.value = String(value);
    return s;
  }
  if (f.kind === "list") return el("textarea", { id, name: f.name, rows: 2, value: Array.isArray(value) ? value.join("\n") : value,
                                                 placeholder: "one value per line" });
  return el("input", { type: "text", id, name: f.name, value: Array.isArray(value) ? value.join(" ") : String(value),
                       placeholder: f.optional ? "None" : "", inputMode: f.kind === "int" || f.kind === "float" ? "decimal" : "text" });
}

function buildForm(form) {
  state.form = form;
  $("#job-help").textContent = form.doc || form.help;
  const root = $("#job-form");
  root.replaceChildren();
  for (const f of form.fields) {
    const kindText = f.kind === "choice" ? f.choices.join(" | ") : f.kind + (f.optional ? " | None" : "");
    root.append(el("div", { className: "field", id: `field-${f.name}` },
      el("label", { htmlFor: `f-${f.name}`, textContent: `${f.flag}${f.required ? " *" : ""} ` },
         el("span", { className: "muted", textContent: `(${kindText})` })),
      widget(f), el("div", { className: "help", textContent: f.help }),
      el("div", { className: "field-error", id: `err-${f.name}` })));
  }
  $("#job-argv").textContent = "";
  showErrors([]);
}

function setField(name, value) {
  const input = $(`#f-${name}`);
  if (!input) return;
  if (input.type === "checkbox") input.checked = !!value; else input.value = value;
}

function formValues() {
  const values = {};
  for (const f of state.form.fields) {
    const input = $(`#f-${f.name}`);
    values[f.name] = input.type === "checkbox" ? input.checked : input.value;
  }
  return values;
}

function showErrors(errors, message, good) {
  for (const node of document.querySelectorAll("#job-form .field")) node.classList.remove("invalid");
  for (const node of document.querySelectorAll("#job-form .field-error")) node.textContent = "";
  const general = [];
  for (const e of errors) {
    const box = e.field && $(`#err-${e.field}`);
    if (box) { box.textContent = e.message; $(`#field-${e.field}`).classList.add("invalid"); }
    else general.push(e.message);
  }
  const msg = $("#job-message");
  msg.textContent = errors.length ? errors.map(e => e.message).join("\n") : (message || "");
  msg.className = errors.length ? "bad" : good ? "good" : "";
  const first = errors.find(e => e.field && $(`#f-${e.field}`));
  if (first) $(`#f-${first.field}`).scrollIntoView({ block: "center" });
}

async function submitJob(start) {
  const body = { command: state.form.command, values: formValues() };
  showErrors([], start ? "starting…" : "checking…");
  try {
    const res = await post(start ? "/api/jobs" : "/api/validate", body);
    $("#job-argv").textContent = res.argv && res.argv.length ? res.command_line : "";
    if (!res.ok) return showErrors(res.errors);
    showErrors([], start ? `started ${res.job}` : `valid (checked by ${res.validator || "tyro + the basic checks"})`, true);
    if (start) { await pollJobs(); refreshForm(); }
  } catch (e) { showErrors([{ field: null, message: e.message }]); }
}

async function selectCommand(name) {
  $("#job-command").value = name;
  buildForm(await api(`/api/forms/${encodeURIComponent(name)}`));
}
async function refreshForm() {  // a fresh default --out for the next job, the other values kept
  const values = formValues();
  const form = await api(`/api/forms/${encodeURIComponent(state.form.command)}`);
  buildForm(form);
  for (const [k, v] of Object.entries(values)) if (k !== "out") setField(k, v);
}

function runLink(id) {
  return el("a", { href: "#", textContent: id, onclick: ev => { ev.preventDefault(); showTab("runs"); showRun(id); } });
}

function jobCard(job) {
  let card = state.jobs.get(job.id);
  if (!card) {
    card = el("div", { className: "job" });
    card.dataset.id = job.id;
    const cancel = el("button", { type: "button", className: "job-cancel", textContent: "Cancel" });
    cancel.onclick = async () => { await post(`/api/job/cancel?id=${encodeURIComponent(job.id)}`); pollJobs(); };
    card.append(el("div", { className: "row" }, el("span", { className: "job-status" }), runLink(job.id), cancel),
                el("code", { className: "muted job-cmd" }), el("progress", { max: 100 }),
                el("div", { className: "job-progress muted" }), el("img", { className: "job-image", alt: "newest image" }),
                el("pre", { className: "log" }));
    state.jobs.set(job.id, card);
  }
  card.dataset.status = job.status;
  $(".job-status", card).textContent = job.status + (job.exit_code != null ? ` (exit ${job.exit_code})` : "") +
                                       (job.lost ? " (ended while nobody watched)" : "");
  $(".job-cmd", card).textContent = job.command_line;
  const p = job.progress, bar = $("progress", card);
  if (p && p.percent != null) bar.value = p.percent; else bar.removeAttribute("value");
  if (job.status === "succeeded") bar.value = 100;
  bar.hidden = !["starting", "running", "cancelling"].includes(job.status) && job.status !== "succeeded";
  $(".job-progress", card).textContent = p ? `${p.stage || "working"}: ${p.percent != null ? p.percent + "%" : ""} ` +
    `${p.n}${p.total ? "/" + p.total : ""}${p.elapsed ? ", elapsed " + p.elapsed : ""}${p.eta ? ", ETA " + p.eta : ""}` : "";
  $(".job-cancel", card).hidden = !["starting", "running"].includes(job.status);
  const img = $(".job-image", card);
  if (job.image) {
    const url = fileUrl(job.image, job.image_mtime);
    if (img.getAttribute("src") !== url) img.src = url;
    img.dataset.path = job.image;
  }
  if (job.log_tail != null) $(".log", card).textContent = job.log_tail;
  return card;
}

let polling = null;
async function pollJobs() {
  clearTimeout(polling);
  try {
    const { jobs } = await api("/api/jobs");
    const list = $("#job-list");
    const cards = [];
    for (const j of jobs.slice(0, 12)) {
      const active = ["starting", "running", "cancelling"].includes(j.status);
      const detail = active || !state.jobs.has(j.id) || state.jobs.get(j.id).dataset.status !== j.status
        ? await api(`/api/job?id=${encodeURIComponent(j.id)}`) : null;
      cards.push(jobCard(detail || j));
    }
    list.replaceChildren(...(cards.length ? cards : [el("p", { className: "muted", textContent:
      "No jobs yet: fill in the form and press Start. Jobs started earlier appear here, even after a restart." })]));
    const busy = jobs.some(j => ["starting", "running", "cancelling"].includes(j.status));
    polling = setTimeout(pollJobs, busy ? 700 : 3000);
  } catch (e) { polling = setTimeout(pollJobs, 3000); }
}

// ---------------------------------------------------------------------------------------------------- runs
async function loadRuns() {
  const { runs } = await api("/api/runs");
  const body = $("#runs-body");
  body.replaceChildren(...runs.map(r => {
    const tr = el("tr", { className: "run" }, el("td", { textContent: r.id }), el("td", { textContent: r.command || "" }),
                  el("td", { textContent: r.status || "" }),
                  el("td", { textContent: new Date(r.modified * 1000).toLocaleString() }));
    tr.dataset.id = r.id;
    tr.onclick = () => showRun(r.id);
    return tr;
  }));
}

async function showRun(id) {
  for (const tr of document.querySelectorAll("tr.run")) tr.classList.toggle("selected", tr.dataset.id === id);
  const box = $("#run-detail");
  let run;
  try { run = await api(`/api/run?id=${encodeURIComponent(id)}`); }
  catch (e) { box.replaceChildren(el("div", { className: "error", textContent: e.message })); return; }
  const parts = [el("h2", { textContent: run.id })];
  const links = (title, files, make) => {
    if (!files.length) return;
    parts.push(el("h3", { textContent: title }), el("div", { className: "row" }, ...files.map(make)));
  };
  links("Reports", run.reports, f => el("a", { href: fileUrl(f.path), target: "_blank", rel: "noopener", textContent: f.path }));
  links("Videos", run.videos, f => f.path.endsWith(".gif") ? el("img", { src: fileUrl(f.path), className: "thumb" })
                                                            : el("video", { src: fileUrl(f.path), controls: true, width: 256 }));
  links("Meshes", run.meshes, f => el("a", { href: fileUrl(f.path), download: "", textContent: f.path }));
  links("Checkpoints", run.checkpoints, p => el("span", {}, p + " ",
    ...["a", "b"].map(s => el("button", { type: "button", textContent: `load in ${s.toUpperCase()}`,
      onclick: async () => { await refreshInfo(); $(`#gen-${s}`).value = `checkpoint:${p}`; await loadSlot(s); showTab("explore"); } }))));
  links("Inverted latents", run.latents, f => el("button", { type: "button", textContent: `view ${f.path} in Explore`,
    onclick: async () => { await refreshInfo(); $("#latent").value = f.path; showTab("explore"); renderViews(); } }));
  if (run.images.length) {
    parts.push(el("h3", { textContent: `Images (${run.images.length}, newest first)` }),
      el("div", { className: "gallery" }, ...run.images.slice(0, 24).map(f =>
        el("figure", {}, el("a", { href: fileUrl(f.path, f.mtime), target: "_blank", rel: "noopener" },
                            el("img", { src: fileUrl(f.path, f.mtime), alt: f.path, loading: "lazy" })),
           el("figcaption", { textContent: f.path })))));
  }
  for (const [name, text] of Object.entries(run.summaries))
    parts.push(el("details", { open: name !== "studio_job.json" && Object.keys(run.summaries).length < 3 },
                  el("summary", { textContent: name }), el("pre", { textContent: text })));
  box.replaceChildren(...parts);
}

// ---------------------------------------------------------------------------------------------------- start
async function refreshInfo() {
  const info = await api("/api/info");
  state.info = info;
  state.runsRoot = info.runs_root;
  $("#runs-root").textContent = `runs folder: ${info.runs_label}`;
  $("#runs-root").title = info.runs_root;
  for (const s of ["a", "b"]) fillGeneratorSelect($(`#gen-${s}`), info, s);
  const latent = $("#latent"), keep = latent.value;
  latent.replaceChildren(el("option", { value: "", textContent: "seed" }),
                         ...info.latents.map(p => el("option", { value: p, textContent: p })));
  latent.value = keep;
  return info;
}

async function init() {
  const info = await refreshInfo();
  for (const b of document.querySelectorAll(".tab")) b.onclick = () => showTab(b.dataset.tab);
  for (const b of document.querySelectorAll("button.load")) b.onclick = () => loadSlot(b.dataset.slot);
  for (const b of document.querySelectorAll("button.orbit")) b.onclick = () => orbitJob(b.dataset.slot);
  for (const id of ["seed", "trunc", "yaw", "pitch", "view", "latent"]) {
    $(`#${id}`).addEventListener("input", renderViews);
    $(`#${id}`).addEventListener("change", renderViews);
  }
  $("#upload-file").onchange = ev => ev.target.files[0] && upload(ev.target.files[0]);
  $("#upload-invert").onclick = invertUpload;
  const cmd = $("#job-command");
  cmd.replaceChildren(...info.commands.map(c => el("option", { value: c.name, textContent: c.name, title: c.help })));
  cmd.onchange = () => selectCommand(cmd.value);
  $("#job-check").onclick = () => submitJob(false);
  $("#job-start").onclick = () => submitJob(true);
  $("#runs-refresh").onclick = loadRuns;
  await selectCommand(info.commands.some(c => c.name === "make-dataset") ? "make-dataset" : info.commands[0].name);
  showSlots(info.slots);
  pollJobs();
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", () => init().catch(e => {
  document.body.prepend(el("div", { className: "error", textContent: `studio failed to start: ${e.message}` }));
}));
