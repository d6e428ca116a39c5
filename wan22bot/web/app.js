// wan22bot status page: queue, running job with live progress, recent videos with stage timings,
// and an upload form. Plain DOM, no libraries. Data comes from /api/*; if the server needs a bearer
// token, it is taken from the URL fragment (#token=...) or the token field and kept in this tab's
// sessionStorage. fetch() sends it as a header; <video src> and EventSource use ?token=.
"use strict";

const TOKEN_KEY = "wan22bot.token";
const STAGES = ["text_encode", "image_encode", "pass1", "pass2", "vae_decode", "interpolate", "encode"];
const STAGE_NAMES = {
  loading: "Loading models",
  text_encode: "Text encode",
  image_encode: "Image encode",
  pass1: "Pass 1 (high noise)",
  pass2: "Pass 2 (low noise)",
  vae_decode: "VAE decode",
  interpolate: "Interpolate (RIFE)",
  encode: "Encode MP4",
};
const RECENT = 12;

let token = readToken();
let events = null;
let refreshTimer = null;
let pollTimer = null;
let lastRefresh = 0;

function readToken() {
  const m = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);  // keep it out of the address bar
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function withToken(path) {
  if (!token) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

class AuthNeeded extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const resp = await fetch(path, Object.assign({}, options, { headers }));
  if (resp.status === 401) {
    showAuth(true);
    throw new AuthNeeded("token needed");
  }
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  return { ok: resp.ok, status: resp.status, body };
}

// ---------------------------------------------------------------------------- helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function secs(v) {
  if (v === null || v === undefined) return "";
  if (v >= 100) return v.toFixed(0) + " s";
  if (v >= 10) return v.toFixed(1) + " s";
  return v.toFixed(2) + " s";
}

function ago(ts) {
  if (!ts) return "";
  const d = Math.max(0, Date.now() / 1000 - ts);
  if (d < 60) return Math.round(d) + " s ago";
  if (d < 3600) return Math.round(d / 60) + " min ago";
  if (d < 86400) return Math.round(d / 3600) + " h ago";
  return new Date(ts * 1000).toLocaleDateString();
}

function span(d) {
  if (d < 60) return Math.round(d) + " s";
  if (d < 3600) return Math.floor(d / 60) + " min " + Math.round(d % 60) + " s";
  return Math.floor(d / 3600) + " h " + Math.round((d % 3600) / 60) + " min";
}

function gib(b) { return (b / 2 ** 30).toFixed(1); }

function optionsText(o) {
  if (!o) return "";
  const parts = [];
  if (o.frames) parts.push(o.frames + " frames");
  if (o.preset) parts.push(o.preset);
  if (o.interpolate) parts.push("32 fps");
  if (o.seed !== undefined && o.seed !== null && o.seed >= 0) parts.push("seed " + o.seed);
  if (o.prompt) parts.push("\u201c" + (o.prompt.length > 30 ? o.prompt.slice(0, 30) + "\u2026" : o.prompt) + "\u201d");
  return parts.join(", ");
}

function showAuth(on) {
  document.getElementById("auth").hidden = !on;
}

// ---------------------------------------------------------------------------- status line
function renderStatus(st) {
  const line = document.getElementById("status-line");
  const c = st.queue.counts;
  const pills = [];
  const m = st.model;
  pills.push(el("span", { class: "pill " + (m.loaded ? "ok" : "off"),
    text: (m.loaded ? "model loaded" : "model not loaded") + (m.device ? " on " + m.device : "") }));
  pills.push(el("span", { class: "pill", text: "model " + m.kind }));
  pills.push(el("span", { class: "pill", text: c.queued + " queued" }));
  pills.push(el("span", { class: "pill", text: c.running + " running" }));
  pills.push(el("span", { class: "pill", text: c.done + " done" }));
  if (c.failed) pills.push(el("span", { class: "pill bad", text: c.failed + " failed" }));
  for (const g of st.gpu || []) {
    pills.push(el("span", { class: "pill", title: g.name,
      text: g.device + " " + gib(g.reserved) + " / " + gib(g.total) + " GiB reserved (" + gib(g.allocated) + " in use)" }));
  }
  for (const w of st.workers || []) {  // one pill per worker process ([gpus] devices)
    const mem = w.memory || {};
    const used = mem.allocated != null ? gib(mem.allocated) + " GiB" : mem.rss != null ? gib(mem.rss) + " GiB RSS" : "";
    pills.push(el("span", { class: "pill " + (w.state === "dead" ? "bad" : w.busy ? "ok" : ""), title: w.error || "",
      text: w.name + " " + w.device + " " + (w.busy ? "running " + w.job : w.state) + (used ? " \u00b7 " + used : "") }));
  }
  if (st.last_timings && st.last_timings.total) {
    pills.push(el("span", { class: "pill", text: "last job " + secs(st.last_timings.total) }));
  }
  line.replaceChildren(...pills);
  const interp = document.getElementById("interpolate");
  if (interp && st.defaults) {
    interp.querySelector('option[value="true"]').disabled = !st.defaults.interpolate_available;
  }
  // only the lengths the loaded model can make (the server refuses the others anyway)
  const maxFrames = st.limits && st.limits.max_frames;
  if (maxFrames) {
    for (const opt of document.querySelectorAll('#upload select[name=frames] option')) {
      if (opt.value) opt.disabled = Number(opt.value) > maxFrames;
    }
  }
}

// ---------------------------------------------------------------------------- running job
function renderRunning(job) {
  const box = document.getElementById("running");
  if (!job) {
    box.replaceChildren(el("p", { class: "muted", text: "Idle." }));
    return;
  }
  const p = job.progress || {};
  const stage = p.stage || "starting";
  const idx = STAGES.indexOf(stage);
  const chips = STAGES.filter((s) => s !== "interpolate" || (job.options && job.options.interpolate) || stage === "interpolate")
    .map((s) => {
      const i = STAGES.indexOf(s);
      const cls = "stage-chip" + (s === stage ? " current" : idx >= 0 && i < idx ? " done" : "");
      return el("span", { class: cls, text: STAGE_NAMES[s] });
    });
  let label = STAGE_NAMES[stage] || stage;
  let frac = 0;
  if ((stage === "pass1" || stage === "pass2") && p.steps) {
    label += " \u00b7 step " + p.step + "/" + p.steps;
    frac = p.step / p.steps;
  } else if (idx >= 0) {
    frac = 1;
  }
  const elapsed = job.started ? span(Date.now() / 1000 - job.started) : "";
  const bar = el("div");
  bar.style.width = Math.round(frac * 100) + "%";
  box.replaceChildren(
    el("div", { class: "title", "data-job-id": job.id },
      el("span", { text: job.photo }),
      el("span", { class: "meta", text: [job.source + (job.user ? " \u00b7 " + job.user : ""), elapsed].filter(Boolean).join(" \u00b7 ") })),
    el("div", { class: "stages" }, ...chips),
    el("div", { class: "progress-label" },
      el("span", { class: "stage-now", text: label }),
      el("span", { class: "muted", text: optionsText(job.options) })),
    el("div", { class: "progress", role: "progressbar", "aria-valuenow": Math.round(frac * 100) }, bar),
    el("div", { class: "row job-line" },
      el("span", { class: "muted", text: "job " + job.id }),
      cancelButton(job)),
  );
}

function cancelButton(job) {
  const b = el("button", { class: "small", type: "button", text: "Cancel" });
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      const r = await api("/api/jobs/" + encodeURIComponent(job.id), { method: "DELETE" });
      if (!r.ok && r.body) alert(r.body.error);
    } catch (e) { /* shown elsewhere */ }
    scheduleRefresh(50);
  });
  return b;
}

// ---------------------------------------------------------------------------- queue
function renderQueue(jobs) {
  jobs.sort((a, b) => (a.position || 1e9) - (b.position || 1e9));
  const body = document.getElementById("queue-body");
  body.replaceChildren(...jobs.map((j) => el("tr", { class: "job-row", "data-job-id": j.id },
    el("td", { text: j.position || "" }),
    el("td", { class: "name", title: j.photo, text: j.photo }),
    el("td", { text: j.source + (j.user ? " \u00b7 " + j.user : "") }),
    el("td", { class: "muted", text: optionsText(j.options) }),
    el("td", { class: "muted", text: ago(j.created) }),
    el("td", {}, cancelButton(j)),
  )));
  document.getElementById("queue-count").textContent = String(jobs.length);
  document.getElementById("queue-empty").hidden = jobs.length > 0;
}

// ---------------------------------------------------------------------------- recent videos
function timingChart(t) {
  const rows = STAGES.filter((s) => t[s] !== undefined && (s !== "interpolate" || t[s] > 0));
  const max = Math.max(1e-9, ...rows.map((s) => t[s]));
  const chart = el("div", { class: "timing-chart", role: "img",
    "aria-label": "stage timings, total " + secs(t.total) });
  for (const s of rows) {
    const bar = el("div", { class: "bar s-" + s, title: STAGE_NAMES[s] + ": " + secs(t[s]) });
    bar.style.width = Math.max(0.5, (t[s] / max) * 100).toFixed(1) + "%";
    chart.append(
      el("span", { class: "label", text: STAGE_NAMES[s] }),
      el("div", { class: "track" }, bar),
      el("span", { class: "value", text: secs(t[s]) }),
    );
  }
  return chart;
}

function videoCard(j) {
  const head = el("div", { class: "head" },
    el("span", { class: "name", title: j.photo, text: j.name || j.photo }),
    el("span", { class: "state " + j.state, text: j.state }));
  const card = el("article", { class: "video-card " + j.state, "data-job-id": j.id, "data-state": j.state });
  if (j.state === "done") {
    // no controls until the pointer is over it: the first frame stays visible in the grid
    const v = el("video", { muted: true, loop: true, playsInline: true, preload: "metadata",
      title: "hover for controls" });
    v.setAttribute("muted", "");
    v.addEventListener("mouseenter", () => { v.controls = true; });
    v.addEventListener("mouseleave", () => { if (v.paused) v.controls = false; });
    v.addEventListener("focus", () => { v.controls = true; });
    v.src = withToken("/api/jobs/" + encodeURIComponent(j.id) + "/video");
    const t = j.timings || {};
    card.append(v, el("div", { class: "body" }, head,
      el("div", { class: "sub" },
        "total " + secs(t.total) + " \u00b7 " + ago(j.finished) + " \u00b7 ",
        el("a", { href: withToken("/api/jobs/" + encodeURIComponent(j.id) + "/video?download=1"), text: "download" }),
        " \u00b7 ",
        el("a", { href: withToken("/api/jobs/" + encodeURIComponent(j.id) + "/sidecar"), target: "_blank", text: "sidecar" })),
      timingChart(t)));
  } else {
    card.append(el("div", { class: "body" }, head,
      el("div", { class: "sub", text: j.source + " \u00b7 " + ago(j.finished) }),
      el("div", { class: "error", text: j.error || j.state })));
  }
  return card;
}

function renderRecent(jobs) {
  const grid = document.getElementById("recent");
  const have = new Map([...grid.querySelectorAll(".video-card")].map((c) => [c.dataset.jobId, c]));
  // keep existing cards (and their playing videos); add new ones in order
  const cards = jobs.map((j) => {
    const old = have.get(j.id);
    return old && old.dataset.state === j.state ? old : videoCard(j);
  });
  const empty = document.getElementById("recent-empty") || el("p", { class: "muted", id: "recent-empty", text: "No finished jobs yet." });
  empty.hidden = jobs.length > 0;
  grid.replaceChildren(empty, ...cards);
}

// ---------------------------------------------------------------------------- refresh
async function refresh() {
  lastRefresh = Date.now();
  try {
    const [st, queued, recent] = await Promise.all([
      api("/api/status"),
      api("/api/jobs?state=queued&limit=200"),
      api("/api/jobs?state=done,failed,cancelled&limit=" + RECENT),
    ]);
    showAuth(false);
    if (st.ok) {
      renderStatus(st.body);
      renderRunning(st.body.running);
    }
    if (queued.ok) renderQueue(queued.body);
    if (recent.ok) renderRecent(recent.body);
    document.getElementById("conn").textContent = "updated " + new Date().toLocaleTimeString();
    if (!events) openEvents();
  } catch (e) {
    if (!(e instanceof AuthNeeded)) {
      document.getElementById("status-line").replaceChildren(el("span", { class: "pill bad", text: "server not reachable" }));
    }
  }
}

function scheduleRefresh(delay = 250) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, delay);
}

function openEvents() {
  if (!window.EventSource) return;
  events = new EventSource(withToken("/api/events"));
  events.addEventListener("job", (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch (e) { return; }
    if (ev.kind === "progress") {
      renderRunning(ev.job);  // step updates come straight from the event
    } else {
      scheduleRefresh();
    }
  });
  events.onerror = () => {
    document.getElementById("conn").textContent = "live updates interrupted; polling";
  };
}

function startPolling() {
  // every 5 s without live events; with them, a slow refresh keeps the "ago" times current
  clearInterval(pollTimer);
  pollTimer = setInterval(() => {
    if (document.hidden) return;
    const live = events && events.readyState === EventSource.OPEN;
    if (!live || Date.now() - lastRefresh > 30000) refresh();
  }, 5000);
}

// ---------------------------------------------------------------------------- upload
async function upload(ev) {
  ev.preventDefault();
  const form = ev.target;
  const msg = document.getElementById("upload-msg");
  const button = document.getElementById("upload-button");
  const data = new FormData();
  for (const [k, v] of new FormData(form).entries()) {
    if (v instanceof File ? v.size || v.name : String(v).trim() !== "") data.append(k, v);
  }
  button.disabled = true;
  msg.className = "msg";
  msg.textContent = "uploading\u2026";
  try {
    const r = await api("/api/jobs", { method: "POST", body: data });
    if (r.status === 202) {
      msg.className = "msg ok";
      msg.textContent = "Queued " + r.body.photo + " as job " + r.body.id +
        (r.body.position ? " (position " + r.body.position + ")" : "") + ".";
      form.reset();
    } else {
      msg.className = "msg bad";
      msg.textContent = (r.body && r.body.error) || "the server answered " + r.status;
    }
  } catch (e) {
    msg.className = "msg bad";
    msg.textContent = e instanceof AuthNeeded ? "a token is needed (see above)" : "upload failed: " + e.message;
  } finally {
    button.disabled = false;
    scheduleRefresh(50);
  }
}

// ---------------------------------------------------------------------------- start
document.getElementById("upload").addEventListener("submit", upload);
document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("token-input").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  if (events) { events.close(); events = null; }
  document.getElementById("recent").replaceChildren();
  refresh();
});
refresh();
startPolling();
