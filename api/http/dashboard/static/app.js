// tradeflow dashboard: every page reads the public API (/api/v1) and follows the live
// events stream (/api/v1/events, Server-Sent Events).  No build step, no dependencies.
"use strict";

// -- small helpers ------------------------------------------------------------------------------

const $ = (selector, root) => (root || document).querySelector(selector);
const $$ = (selector, root) => Array.from((root || document).querySelectorAll(selector));
const page = document.body.dataset.page;
const CAN_OPERATE = document.body.dataset.canOperate === "yes";
const CAN_ADMIN = document.body.dataset.canAdmin === "yes";

/** An element: el("a", {href: "/x", class: "y"}, "text", child...). Never sets inline styles. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function escapeXml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function flash(message, kind) {
  const box = $("#flash");
  if (!box) return;
  box.textContent = message;
  box.className = "flash " + (kind || "info");
  box.hidden = false;
}

// -- time: UTC or local, persisted ----------------------------------------------------------------

function pad(n) { return String(n).padStart(2, "0"); }

function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (document.documentElement.dataset.time === "local") {
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  return d.toISOString().slice(0, 19).replace("T", " ") + " UTC";
}

function timeEl(iso) {
  return iso ? el("time", { datetime: iso, text: fmtTime(iso) }) : "—";
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function rerenderTimes() {
  for (const node of $$("time[datetime]")) node.textContent = fmtTime(node.getAttribute("datetime"));
}

// -- the API ------------------------------------------------------------------------------------

async function api(path, options) {
  const { method = "GET", json, params } = options || {};
  const query = params ? "?" + (params instanceof URLSearchParams ? params : new URLSearchParams(params)) : "";
  const init = { method, credentials: "same-origin", headers: {} };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const response = await fetch("/api/v1" + path + query, init);
  if (response.status === 401) {
    location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new Error("not logged in");
  }
  if (response.status === 204) return null;
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error((body && (body.detail || body.title)) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

/** Run an action; its refusal becomes a message on the page. */
async function act(label, fn) {
  try {
    const result = await fn();
    return result;
  } catch (error) {
    flash(`${label}: ${error.message}`, "error");
    return undefined;
  }
}

// -- live events ----------------------------------------------------------------------------------

//: Event kinds the stream sends (an EventSource only delivers the named events it listens to).
const KINDS = [
  "job.pending", "job.running", "job.retrying", "job.completed", "job.failed", "job.cancelled",
  "job.dead_letter", "job.dead", "run.running", "run.succeeded", "run.failed", "run.compensating",
  "run.compensated", "run.compensation_failed", "run.cancelled", "schedule.fired", "alert.raised",
  "stream.gap", "operator.jobs.submit", "operator.jobs.cancel", "operator.jobs.retry", "operator.jobs.delete",
  "operator.dlq.retry", "operator.dlq.purge", "operator.queues.pause", "operator.schedules.control",
  "operator.workflows.start", "operator.workflows.control",
];

const live = {
  source: null,
  lastId: null,
  paused: localStorage.getItem("tf.live") === "paused",
  handlers: [],
  resumers: [],
  connectedOnce: false,

  on(handler) { this.handlers.push(handler); },
  onResume(handler) { this.resumers.push(handler); },

  state(text) {
    const node = $("#live-state");
    if (node) { node.textContent = text; node.dataset.state = text; }
  },

  connect() {
    if (this.source || this.paused || document.hidden) return;
    // a new connection resumes after the last event seen; the browser's own reconnects send
    // Last-Event-ID by themselves
    const url = "/api/v1/events" + (this.lastId ? "?since=" + encodeURIComponent(this.lastId) : "");
    const source = new EventSource(url, { withCredentials: true });
    this.source = source;
    this.state("connecting");
    source.onopen = () => {
      this.state("live");
      if (this.connectedOnce && !this.lastId) this.resumers.forEach((fn) => fn());
      this.connectedOnce = true;
    };
    source.onerror = () => this.state(source.readyState === EventSource.CLOSED ? "offline" : "reconnecting");
    const deliver = (event) => {
      if (event.lastEventId) this.lastId = event.lastEventId;
      let data = {};
      try { data = JSON.parse(event.data); } catch (_) { return; }
      if (data.kind === "stream.gap") { this.resumers.forEach((fn) => fn()); return; }
      for (const handler of this.handlers) handler(data.kind || event.type, data);
    };
    for (const kind of KINDS) source.addEventListener(kind, deliver);
  },

  disconnect(text) {
    if (this.source) { this.source.close(); this.source = null; }
    this.state(text);
  },

  setPaused(paused) {
    this.paused = paused;
    localStorage.setItem("tf.live", paused ? "paused" : "on");
    const button = $("#live-toggle");
    if (button) {
      button.setAttribute("aria-pressed", paused ? "true" : "false");
      button.textContent = paused ? "Resume live" : "Pause live";
    }
    if (paused) this.disconnect("paused");
    else { this.connect(); this.resumers.forEach((fn) => fn()); }
  },
};

document.addEventListener("visibilitychange", () => {
  // a hidden tab takes no updates; it catches up (Last-Event-ID) when shown again
  if (document.hidden) live.disconnect("hidden");
  else if (!live.paused) live.connect();
});

// -- header controls, keyboard, dialogs -----------------------------------------------------------

function setupHeader() {
  const theme = $("#theme-toggle");
  const time = $("#time-toggle");
  const showTheme = () => {
    const dark = document.documentElement.dataset.theme === "dark";
    theme.textContent = dark ? "Light mode" : "Dark mode";
    theme.setAttribute("aria-pressed", dark ? "true" : "false");
  };
  const showTime = () => {
    const local = document.documentElement.dataset.time === "local";
    time.textContent = local ? "Local time" : "UTC";
  };
  theme.addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem("tf.theme", next);
    showTheme();
  });
  time.addEventListener("click", () => {
    const next = document.documentElement.dataset.time === "local" ? "utc" : "local";
    document.documentElement.dataset.time = next;
    localStorage.setItem("tf.time", next);
    showTime();
    rerenderTimes();
  });
  showTheme();
  showTime();
  $("#live-toggle").addEventListener("click", () => live.setPaused(!live.paused));
  $("#logout").addEventListener("click", async () => {
    await fetch("/api/v1/session", { method: "DELETE", credentials: "same-origin" });
    location.assign("/login");
  });
}

function moveSelection(step) {
  const rows = $$(".nav-list tbody tr");
  if (!rows.length) return;
  const current = rows.findIndex((row) => row.classList.contains("selected"));
  const next = Math.max(0, Math.min(rows.length - 1, current < 0 ? (step > 0 ? 0 : rows.length - 1) : current + step));
  rows.forEach((row) => row.classList.remove("selected"));
  const row = rows[next];
  row.classList.add("selected");
  row.scrollIntoView({ block: "nearest" });
  const link = $("a", row);
  if (link) link.focus();
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target.closest && event.target.closest("input, textarea, select, dialog")) {
    if (event.key === "Escape" && event.target.blur) event.target.blur();
    return;
  }
  if (event.key === "/") {
    const search = $("[data-search]") || $("#filters input");
    if (search) { event.preventDefault(); search.focus(); }
  } else if (event.key === "j" || event.key === "k") {
    event.preventDefault();
    moveSelection(event.key === "j" ? 1 : -1);
  } else if (event.key === "?") {
    event.preventDefault();
    $("#help").showModal();
  }
});

/** Ask before acting; with ``word`` the user must type it (destructive actions). */
function confirmAction(text, word) {
  const dialog = $("#confirm");
  const typed = $("#confirm-typed");
  const ok = $("#confirm-ok");
  $("#confirm-text").replaceChildren(...(Array.isArray(text) ? text : [text]));
  $("#confirm-typed-row").hidden = !word;
  $("#confirm-word").textContent = word || "";
  typed.value = "";
  ok.disabled = Boolean(word);
  typed.oninput = () => { ok.disabled = typed.value.trim() !== String(word); };
  return new Promise((resolve) => {
    dialog.onclose = () => resolve(dialog.returnValue === "ok");
    dialog.returnValue = "";
    dialog.showModal();
    if (word) typed.focus();
  });
}

/** Follow a bulk operation to its end: a progress bar, then the count. */
async function followOperation(operationId, verb) {
  const box = $("#bulk-progress");
  const bar = $("#bulk-bar");
  const text = $("#bulk-text");
  box.hidden = false;
  for (;;) {
    const op = await api(`/operations/${operationId}`);
    const total = op.total === null ? 0 : op.total;
    bar.max = Math.max(total, 1);
    bar.value = op.done + op.skipped;
    text.textContent = op.total === null ? "counting…" : `${op.done} of ${total} ${verb}`;
    if (op.status !== "running") {
      text.textContent = op.status === "succeeded"
        ? `Done: ${op.done} ${verb}` + (op.skipped ? `, ${op.skipped} skipped` : "")
        : `${op.status === "interrupted" ? "Interrupted" : "Failed"} after ${op.done}: ${op.error || "error"}`;
      box.dataset.status = op.status;
      return op;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

function statusBadge(status) {
  return el("span", { class: `badge st-${status}`, text: status });
}

function setRows(tbody, rows, emptyText, columns) {
  if (!rows.length) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: columns, class: "empty", text: emptyText })));
    return;
  }
  tbody.replaceChildren(...rows);
}

function columnsOf(table) { return $$("thead th", table).length; }

// -- charts: hand-written SVG -----------------------------------------------------------------------

/** A bar chart of ``values`` (one per minute) with ``labels`` (times), in an SVG the CSS colours. */
function barChart(container, values, labels, options) {
  const width = 600, height = 140, left = 34, bottom = 18, top = 8;
  const max = Math.max(options.max || 0, ...values, 1);
  const slot = (width - left) / Math.max(values.length, 1);
  const scale = (v) => ((height - bottom - top) * v) / max;
  let bars = "";
  values.forEach((value, i) => {
    const h = scale(value);
    const x = left + i * slot;
    const tip = `${labels[i] ? fmtTime(labels[i]) : ""}: ${options.format(value)}`;
    bars += `<rect class="${options.cls}" x="${x.toFixed(1)}" y="${(height - bottom - h).toFixed(1)}" width="${Math.max(slot - 1, 1).toFixed(1)}" height="${h.toFixed(1)}"><title>${escapeXml(tip)}</title></rect>`;
  });
  const total = options.summary(values);
  container.innerHTML =
    `<svg viewBox="0 0 ${width} ${height}" role="img" aria-label="${escapeXml(options.label + ": " + total)}" class="chart-svg">` +
    `<line class="axis" x1="${left}" y1="${height - bottom}" x2="${width}" y2="${height - bottom}"/>` +
    `<line class="axis" x1="${left}" y1="${top}" x2="${left}" y2="${height - bottom}"/>` +
    `<text class="tick" x="${left - 4}" y="${top + 8}" text-anchor="end">${escapeXml(options.format(max))}</text>` +
    `<text class="tick" x="${left - 4}" y="${height - bottom}" text-anchor="end">0</text>` +
    (labels.length ? `<text class="tick" x="${left}" y="${height - 4}">${escapeXml(fmtTime(labels[0]))}</text>` +
      `<text class="tick" x="${width}" y="${height - 4}" text-anchor="end">${escapeXml(fmtTime(labels[labels.length - 1]))}</text>` : "") +
    bars + `</svg><p class="chart-total">${escapeXml(total)}</p>`;
}

// -- pages ----------------------------------------------------------------------------------------

const pages = {};

pages.overview = async function () {
  const queuesBody = $("#queues-table tbody");
  const refresh = async () => {
    const [queues, workers, alerts, throughput] = await Promise.all([
      api("/queues"), api("/workers"), api("/alerts", { params: { state: "open" } }), api("/stats/throughput"),
    ]);
    setRows(queuesBody, queues.map((q) => el("tr", { "data-queue": q.name },
      el("th", { scope: "row" }, el("a", { href: `/jobs?queue=${encodeURIComponent(q.name)}`, text: q.name })),
      ...["critical", "high", "normal", "low"].map((lane) => el("td", { class: "num", text: q.ready[lane] || 0 })),
      el("td", { class: "num", text: q.delayed }), el("td", { class: "num", text: q.in_flight }),
      el("td", { class: "num" }, q.dead ? el("a", { href: `/dead-letters?queue=${encodeURIComponent(q.name)}`, text: q.dead }) : "0"),
      el("td", { text: fmtAge(q.oldest_age_s) }), el("td", { class: "num", text: q.enqueued_last_minute ?? "—" }),
      el("td", {}, q.paused ? el("span", { class: "badge st-paused", text: "paused" }) : "running"),
    )), "No queues yet", 11);
    const alertList = $("#alerts");
    alertList.replaceChildren(...(alerts.items.length
      ? alerts.items.map((a) => el("li", { class: `alert sev-${a.severity}` },
        el("strong", { text: `${a.severity}: ${a.check}` }), " ", a.message, " · ", timeEl(a.raised_at)))
      : [el("li", { class: "empty", text: "No open alerts" })]));
    const now = Date.now();
    $("#workers").replaceChildren(...(workers.length
      ? workers.map((w) => el("li", {}, el("span", { class: `dot ${w.alive ? "ok" : "bad"}`, "aria-hidden": "true" }), ` ${w.id} · heartbeat ${fmtAge((now - Date.parse(w.last_heartbeat)) / 1000)} ago`))
      : [el("li", { class: "empty", text: "No workers" })]));
    const buckets = throughput.buckets;
    const labels = buckets.map((b) => b.start);
    barChart($("#chart-throughput"), buckets.map((b) => b.completed + b.failed), labels, {
      cls: "bar", label: "Jobs finished per minute", format: (v) => String(Math.round(v)),
      summary: (vs) => `${vs.reduce((a, b) => a + b, 0)} jobs in the last hour`,
    });
    barChart($("#chart-failures"), buckets.map((b) => (b.completed + b.failed ? (100 * b.failed) / (b.completed + b.failed) : 0)), labels, {
      cls: "bar fail", label: "Failure rate per minute", max: 1, format: (v) => `${v.toFixed(0)}%`,
      summary: () => {
        const failed = buckets.reduce((a, b) => a + b.failed, 0);
        const all = buckets.reduce((a, b) => a + b.failed + b.completed, 0);
        return `${failed} failed of ${all} (${all ? ((100 * failed) / all).toFixed(1) : 0}%)`;
      },
    });
  };
  await refresh();
  const later = debounce(refresh, 1000);
  live.on(later);
  live.onResume(later);
};

// jobs: filters in the URL, keyset pages, live first page, bulk cancel ------------------------------

const JOB_FILTERS = ["status", "actor", "queue", "priority", "user", "from", "to", "args", "id"];
const CANCELLABLE = new Set(["pending", "running", "retrying"]);

/** A datetime-local value as an ISO instant, in the time zone the page shows. */
function inputToIso(value) {
  if (!value) return null;
  if (document.documentElement.dataset.time === "local") return new Date(value).toISOString();
  return new Date(value + (value.length === 16 ? ":00Z" : "Z")).toISOString();
}

/** The list endpoint's parameters (and a bulk selection's fields) from the page's URL. */
function jobQuery(url) {
  const params = new URLSearchParams();
  const selection = { args: {} };
  for (const name of ["status", "actor", "queue", "priority", "user"]) {
    const value = url.get(name);
    if (value) { params.set(name, value); selection[name] = value; }
  }
  for (const name of ["from", "to"]) {
    const iso = inputToIso(url.get(name));
    if (iso) { params.set(name, iso); selection[name] = iso; }
  }
  for (const [key, value] of pairs(url.get("args"))) {
    params.set(`args.${key}`, value);
    selection.args[key] = value;
  }
  return { params, selection };
}

/** ``"a=1,b=2"`` as ``[["a", "1"], ["b", "2"]]`` (the args and input filters). */
function pairs(text) {
  const out = [];
  for (const pair of (text || "").split(",")) {
    const [key, ...rest] = pair.split("=");
    if (key && key.trim() && rest.length) out.push([key.trim(), rest.join("=").trim()]);
  }
  return out;
}

function bindFilters(form, names, base) {
  const url = new URLSearchParams(location.search);
  for (const name of names) {
    const field = form.elements[name];
    if (field && url.get(name)) field.value = url.get(name);
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const name of names) {
      const field = form.elements[name];
      if (field && field.value.trim()) next.set(name, field.value.trim());
    }
    if (base === "/jobs" && next.get("id")) { location.assign(`/jobs/${encodeURIComponent(next.get("id"))}`); return; }
    location.assign(base + (next.toString() ? "?" + next : ""));
  });
}

function pager(nextCursor) {
  const url = new URLSearchParams(location.search);
  const first = $("#first-page");
  const next = $("#next-page");
  if (url.get("cursor")) {
    const firstUrl = new URLSearchParams(url);
    firstUrl.delete("cursor");
    first.href = location.pathname + (firstUrl.toString() ? "?" + firstUrl : "");
    first.hidden = false;
  }
  if (nextCursor) {
    url.set("cursor", nextCursor);
    next.href = location.pathname + "?" + url;
    next.hidden = false;
  } else next.hidden = true;
}

pages.jobs = async function () {
  const url = new URLSearchParams(location.search);
  bindFilters($("#filters"), JOB_FILTERS, "/jobs");
  const { params, selection } = jobQuery(url);
  for (const name of ["cursor", "limit"]) if (url.get(name)) params.set(name, url.get(name));
  const table = $("#jobs-table");
  const tbody = $("tbody", table);
  const selected = new Set();
  const selectedButton = $("#cancel-selected");
  const showSelected = () => {
    if (selectedButton) {
      selectedButton.disabled = !selected.size;
      selectedButton.textContent = selected.size ? `Cancel selected (${selected.size})` : "Cancel selected";
    }
  };
  const refresh = async () => {
    const data = await api("/jobs", { params });
    setRows(tbody, data.items.map((job) => el("tr", { "data-job": job.job_id },
      CAN_OPERATE ? el("td", {}, CANCELLABLE.has(job.status)
        ? el("input", {
          type: "checkbox", "aria-label": `Select job ${job.job_id}`, checked: selected.has(job.job_id),
          onchange: (event) => { event.target.checked ? selected.add(job.job_id) : selected.delete(job.job_id); showSelected(); },
        }) : "") : null,
      el("td", {}, el("a", { href: `/jobs/${job.job_id}`, class: "mono", text: job.job_id.slice(0, 12) })),
      el("td", { text: job.actor }), el("td", { text: job.queue }), el("td", { text: job.priority || "—" }),
      el("td", {}, statusBadge(job.status)), el("td", { text: job.user_id || "—" }),
      el("td", {}, timeEl(job.created_at)), el("td", { text: fmtMs(job.processing_time_ms) }),
    )), "No jobs match", columnsOf(table));
    pager(data.next_cursor);
  };
  await refresh();
  if (!url.get("cursor")) {
    // the first page shows new jobs as they come; later pages stay put (keyset pages never shift)
    const later = debounce(refresh, 80);
    live.on((kind) => { if (kind.startsWith("job.")) later(); });
    live.onResume(later);
  }
  if (!CAN_OPERATE) return;
  const selectAll = $("#select-all");
  selectAll.addEventListener("change", () => {
    for (const box of $$("tbody input[type=checkbox]", table)) {
      box.checked = selectAll.checked;
      const id = box.closest("tr").dataset.job;
      selectAll.checked ? selected.add(id) : selected.delete(id);
    }
    showSelected();
  });
  const bulkCancel = async (body, what) => {
    const preview = await act("Preview", () => api("/jobs:cancel", { method: "POST", json: { ...body, dry_run: true } }));
    if (!preview) return;
    if (!preview.count) { flash(`No waiting or running job ${what}.`, "info"); return; }
    const ok = await confirmAction(`Cancel ${preview.count} waiting or running jobs ${what}?`, String(preview.count));
    if (!ok) return;
    const started = await act("Cancel", () => api("/jobs:cancel", { method: "POST", json: body }));
    if (!started) return;
    await followOperation(started.operation_id, "cancelled");
    selected.clear();
    showSelected();
    await refresh();
  };
  selectedButton.addEventListener("click", () => bulkCancel({ ids: Array.from(selected) }, "selected"));
  $("#cancel-matching").addEventListener("click", () => {
    const body = { ...selection };
    if (body.status && !CANCELLABLE.has(body.status)) { flash(`Jobs that are ${body.status} cannot be cancelled.`, "info"); return; }
    bulkCancel(body, "matching this filter");
  });
};

/** One attempt of a job: its outcome, worker, timings, error with traceback, and trace link. */
function attemptView(attempt, jaeger) {
  const worker = attempt.worker_host ? `${attempt.worker_host} (pid ${attempt.worker_pid ?? "?"})` : (attempt.worker_id || "—");
  const trace = attempt.trace_id
    ? (jaeger
      ? el("a", { href: `${jaeger.replace(/\/$/, "")}/trace/${attempt.trace_id}`, rel: "noopener", target: "_blank", class: "trace-link", text: attempt.trace_id })
      : el("code", { text: attempt.trace_id }))
    : "—";
  const facts = [
    ["Outcome", statusBadge(attempt.status)], ["Worker", worker], ["Started", timeEl(attempt.started_at)],
    ["Finished", timeEl(attempt.finished_at)], ["Took", fmtMs(attempt.duration_ms)],
    ["Retries before", String(attempt.retry_count)], ["Trace", trace],
  ];
  const parts = [
    el("h3", { text: `Attempt ${attempt.number}` }),
    el("dl", { class: "facts" }, facts.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", {}, value)])),
  ];
  if (attempt.error) parts.push(el("pre", { class: "code error", text: attempt.error }));
  if (attempt.traceback) {
    parts.push(el("details", { class: "traceback-box", open: true },
      el("summary", { text: "Traceback" }), el("pre", { class: "code traceback", text: attempt.traceback })));
  }
  return el("section", { class: "attempt", "data-attempt": attempt.number, "aria-label": `Attempt ${attempt.number}` }, parts);
}

pages.job = async function () {
  const id = $("#job").dataset.job;
  const jaeger = document.body.dataset.jaeger;
  const refresh = async () => {
    let job;
    try { job = await api(`/jobs/${encodeURIComponent(id)}`); } catch (error) { flash(error.message, "error"); return; }
    const facts = [
      ["Status", statusBadge(job.status)], ["Actor", job.actor], ["Queue", job.queue], ["Priority", job.priority || "—"],
      ["User", job.user_id || "—"], ["Worker", job.worker_id || "—"], ["Created", timeEl(job.created_at)],
      ["Started", timeEl(job.started_at)], ["Finished", timeEl(job.completed_at)], ["Took", fmtMs(job.processing_time_ms)],
      ["Retries", `${job.retry_count}${job.max_retries !== null && job.max_retries !== undefined ? " of " + job.max_retries : ""}`],
      ["From", job.ip_address || "—"],
    ];
    $("#job-facts").replaceChildren(...facts.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", {}, value)]));
    $("#job-args").textContent = JSON.stringify({ args: job.args || [], kwargs: job.kwargs || {} }, null, 2);
    const retryArgs = $("#retry-args");
    if (retryArgs && !retryArgs.dataset.touched) retryArgs.value = JSON.stringify({ args: job.args || [], kwargs: job.kwargs || {} });
    const attempts = [];
    const tried = job.attempts || [];
    const count = tried.length;
    attempts.push(el("p", { text: count ? `${count} attempt${count === 1 ? "" : "s"}, first first.` : "No attempt has run yet." }));
    for (const attempt of tried) attempts.push(attemptView(attempt, jaeger));
    if (job.dead_letter && job.dead_letter.traceback && !tried.some((attempt) => attempt.traceback)) {
      attempts.push(el("h3", { text: `Traceback (dead since ${fmtTime(job.dead_letter.failed_at)}, fingerprint ${job.dead_letter.fingerprint})` }),
        el("pre", { class: "code traceback", text: job.dead_letter.traceback }));
    }
    $("#attempts").replaceChildren(...attempts);
    if (jaeger) {
      const tags = JSON.stringify({ "messaging.message.id": job.job_id });
      $("#trace-link").href = `${jaeger.replace(/\/$/, "")}/search?service=${encodeURIComponent(document.body.dataset.service)}&tags=${encodeURIComponent(tags)}`;
      $("#trace-link-row").hidden = false;
    }
    const cancel = $("#job-cancel");
    if (cancel) cancel.disabled = !CANCELLABLE.has(job.status);
  };
  await refresh();
  const later = debounce(refresh, 100);
  live.on((kind, data) => { if (data.job === id) later(); });
  live.onResume(later);
  if (!CAN_OPERATE) return;
  $("#retry-args").addEventListener("input", (event) => { event.target.dataset.touched = "yes"; });
  $("#job-cancel").addEventListener("click", async () => {
    const done = await act("Cancel", () => api(`/jobs/${id}/cancel`, { method: "POST" }));
    if (done) flash(`Cancel: ${done.outcome}${done.detail ? " (" + done.detail + ")" : ""}`, "info");
  });
  $("#job-retry").addEventListener("click", async () => {
    let body;
    try { body = JSON.parse($("#retry-args").value || "{}"); } catch (error) { flash(`Arguments are not JSON: ${error.message}`, "error"); return; }
    const done = await act("Retry", () => api(`/jobs/${id}/retry`, { method: "POST", json: body }));
    if (done) {
      flash(`Retry: ${done.outcome}`, "info");
      if (done.job_id !== id) location.assign(`/jobs/${done.job_id}`);
    }
  });
  const del = $("#job-delete");
  if (del) del.addEventListener("click", async () => {
    if (!(await confirmAction(`Delete the audit row of job ${id}?`, "delete"))) return;
    const done = await act("Delete", () => api(`/jobs/${id}`, { method: "DELETE" }));
    if (done !== undefined) location.assign("/jobs");
  });
};

// dead letters: grouped by fingerprint; retry or purge a group ---------------------------------------

pages["dead-letters"] = async function () {
  bindFilters($("#filters"), ["queue"], "/dead-letters");
  const queue = new URLSearchParams(location.search).get("queue");
  const table = $("#groups-table");
  let shown = null;
  const showLetters = async (fingerprint) => {
    shown = fingerprint;
    const params = { fingerprint, limit: 100 };
    if (queue) params.queue = queue;
    const data = await api("/dead-letters", { params });
    const lettersTable = $("#letters-table");
    setRows($("tbody", lettersTable), data.items.map((letter) => el("tr", { "data-job": letter.job_id },
      el("td", {}, el("a", { href: `/jobs/${letter.job_id}`, class: "mono", text: letter.job_id.slice(0, 12) })),
      el("td", { text: letter.actor }), el("td", { text: letter.queue }), el("td", {}, timeEl(letter.failed_at)),
      el("td", { class: "num", text: letter.attempts }), el("td", { class: "error", text: letter.error }),
      CAN_OPERATE ? el("td", {}, el("button", {
        type: "button", class: "retry-one", text: "Retry",
        onclick: async () => {
          const done = await act("Retry", () => api(`/dead-letters/${letter.job_id}/retry`, { method: "POST" }));
          if (done) { flash(`Job ${letter.job_id.slice(0, 12)} retried`, "info"); await refresh(); }
        },
      })) : null)), "No letters in this group", columnsOf(lettersTable));
    $("#group-h").textContent = `Letters of group ${fingerprint}`;
    $("#group-detail").hidden = false;
  };
  const bulk = async (group, verb, path, word) => {
    const body = { fingerprint: group.fingerprint };
    if (queue) body.queue = queue;
    const preview = await act(verb, () => api(path, { method: "POST", json: { ...body, dry_run: true } }));
    if (!preview) return;
    const text = `${verb} the ${preview.count} dead letters of ${group.exception} at ${group.top_frame || "?"}?`;
    if (!(await confirmAction(text, word === "count" ? String(preview.count) : word))) return;
    const started = await act(verb, () => api(path, { method: "POST", json: body }));
    if (!started) return;
    await followOperation(started.operation_id, verb === "Retry" ? "retried" : "purged");
    await refresh();
  };
  const refresh = async () => {
    const groups = await api("/dead-letters/groups", { params: queue ? { queue } : {} });
    setRows($("tbody", table), groups.map((group) => el("tr", { "data-fingerprint": group.fingerprint },
      el("td", {}, el("a", { href: `#${group.fingerprint}`, text: group.exception, onclick: (event) => { event.preventDefault(); showLetters(group.fingerprint); } })),
      el("td", { class: "mono", text: group.top_frame || "—" }), el("td", { class: "num count", text: group.count }),
      el("td", { text: group.queues.join(", ") }), el("td", {}, timeEl(group.last_failed_at)),
      el("td", { class: "mono", text: group.fingerprint }),
      CAN_OPERATE ? el("td", { class: "actions" },
        el("button", { type: "button", class: "retry-group", text: "Retry group…", onclick: () => bulk(group, "Retry", "/dead-letters:retry", null) }),
        CAN_ADMIN ? el("button", { type: "button", class: "purge-group danger", text: "Purge group…", onclick: () => bulk(group, "Purge", "/dead-letters:purge", "count") }) : null,
      ) : null)), "No dead letters", columnsOf(table));
    if (shown) {
      if (groups.some((group) => group.fingerprint === shown)) await showLetters(shown);
      else {
        shown = null;
        $("#group-detail").hidden = true;
        $("#letters-table tbody").replaceChildren();
      }
    }
  };
  await refresh();
  if (location.hash.length > 1) await showLetters(location.hash.slice(1));
  const later = debounce(refresh, 300);
  live.on((kind) => { if (kind.startsWith("job.dead") || kind.startsWith("operator.dlq") || kind === "job.completed") later(); });
  live.onResume(later);
};

// schedules -----------------------------------------------------------------------------------------

pages.schedules = async function () {
  const table = $("#schedules-table");
  const control = (name, what) => async () => {
    const done = await act(what, () => api(`/schedules/${encodeURIComponent(name)}/${what}`, { method: "POST" }));
    if (done) { flash(what === "run" ? `${name}: sent job ${done.job_id}` : `${name}: ${what}d`, "info"); await refresh(); }
  };
  const refresh = async () => {
    const schedules = await api("/schedules");
    setRows($("tbody", table), schedules.map((s) => el("tr", { "data-schedule": s.name },
      el("th", { scope: "row" }, el("a", { href: `/jobs?actor=${encodeURIComponent(s.actor)}`, text: s.name })),
      el("td", { text: s.description }), el("td", { class: "mono", text: s.spec }), el("td", { text: s.timezone }),
      el("td", { text: s.actor }), el("td", { text: s.source }), el("td", {}, timeEl(s.last_run_at)),
      el("td", {}, s.last_status ? statusBadge(s.last_status) : "—"), el("td", {}, timeEl(s.next_run_at)),
      el("td", {}, s.enabled ? "enabled" : el("span", { class: "badge st-paused", text: "disabled" })),
      CAN_OPERATE ? el("td", { class: "actions" },
        el("button", { type: "button", text: s.enabled ? "Disable" : "Enable", onclick: control(s.name, s.enabled ? "disable" : "enable") }),
        el("button", { type: "button", text: "Run now", onclick: control(s.name, "run") })) : null,
    )), "No schedules", columnsOf(table));
  };
  await refresh();
  const later = debounce(refresh, 500);
  live.on((kind) => { if (kind === "schedule.fired" || kind === "operator.schedules.control") later(); });
  live.onResume(later);
};

// workflows: runs list ---------------------------------------------------------------------------------

pages.workflows = async function () {
  const url = new URLSearchParams(location.search);
  bindFilters($("#filters"), ["workflow", "status", "input"], "/workflows");
  const params = new URLSearchParams();
  for (const name of ["workflow", "status", "cursor", "limit"]) if (url.get(name)) params.set(name, url.get(name));
  for (const [key, value] of pairs(url.get("input"))) params.set(`input.${key}`, value);
  const table = $("#runs-table");
  const refresh = async () => {
    const data = await api("/workflow-runs", { params });
    setRows($("tbody", table), data.items.map((run) => el("tr", { "data-run": run.run_id },
      el("td", {}, el("a", { href: `/workflows/${run.run_id}`, class: "mono", text: run.run_id.slice(0, 12) })),
      el("td", { text: run.workflow }), el("td", {}, statusBadge(run.status)), el("td", { class: "num", text: run.open_steps }),
      el("td", {}, timeEl(run.created_at)), el("td", {}, timeEl(run.finished_at)), el("td", { class: "error", text: run.error || "" }),
    )), "No runs match", columnsOf(table));
    pager(data.next_cursor);
  };
  await refresh();
  if (!url.get("cursor")) {
    const later = debounce(refresh, 200);
    live.on((kind) => { if (kind.startsWith("run.")) later(); });
    live.onResume(later);
  }
};

// one run: the layered dependency graph, live ---------------------------------------------------------

//: Steps above which groups start collapsed (one node per group), so a big run stays light.
const COLLAPSE_ABOVE = 150;
const NODE_W = 150, NODE_H = 34, GAP_X = 60, GAP_Y = 14;

/** Layers (longest path from a root) and, within a layer, an order by the parents' mean position. */
function layout(nodes, edges) {
  const parents = new Map(nodes.map((n) => [n.id, []]));
  for (const e of edges) if (parents.has(e.to) && parents.has(e.from)) parents.get(e.to).push(e.from);
  const layer = new Map();
  const visiting = new Set();
  const depth = (id) => {
    if (layer.has(id)) return layer.get(id);
    if (visiting.has(id)) return 0; // a cycle cannot happen (the API validates), but never loop
    visiting.add(id);
    let d = 0;
    for (const p of parents.get(id)) d = Math.max(d, depth(p) + 1);
    layer.set(id, d);
    return d;
  };
  nodes.forEach((n) => depth(n.id));
  const layers = [];
  for (const n of nodes) (layers[layer.get(n.id)] ||= []).push(n);
  const position = new Map();
  layers.forEach((members, x) => {
    if (x > 0) {
      const mean = (n) => {
        const ps = parents.get(n.id);
        return ps.length ? ps.reduce((s, p) => s + position.get(p).row, 0) / ps.length : 0;
      };
      members.sort((a, b) => mean(a) - mean(b));
    }
    members.forEach((n, row) => position.set(n.id, { layer: x, row }));
  });
  return { position, layers: layers.length, rows: Math.max(...layers.map((l) => l.length), 1) };
}

function groupStatus(statuses) {
  for (const s of ["failed", "compensating", "running", "ready", "pending", "compensated", "cancelled", "skipped"]) {
    if (statuses.includes(s)) return s;
  }
  return statuses[0] || "pending";
}

function graphModel(run, collapse) {
  if (!collapse) {
    return {
      nodes: run.steps.map((s) => ({ id: s.name, label: s.name, status: s.status, title: `${s.name} (${s.actor}): ${s.status}` })),
      edges: run.edges, comp: run.compensation_edges,
    };
  }
  const nodeOf = (step) => (step.group ? `group:${step.group}` : step.name);
  const byNode = new Map();
  const stepNode = new Map();
  for (const step of run.steps) {
    const id = nodeOf(step);
    stepNode.set(step.name, id);
    if (!byNode.has(id)) byNode.set(id, []);
    byNode.get(id).push(step);
  }
  const nodes = Array.from(byNode.entries()).map(([id, steps]) => {
    const statuses = steps.map((s) => s.status);
    const counts = {};
    statuses.forEach((s) => { counts[s] = (counts[s] || 0) + 1; });
    const summary = Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ");
    return steps.length === 1 && !steps[0].group
      ? { id, label: steps[0].name, status: steps[0].status, title: `${steps[0].name}: ${steps[0].status}` }
      : { id, label: `${id.slice(6)} ×${steps.length}`, status: groupStatus(statuses), title: `group ${id.slice(6)}: ${summary}` };
  });
  const squash = (edges) => {
    const seen = new Set();
    const out = [];
    for (const e of edges) {
      const from = stepNode.get(e.from), to = stepNode.get(e.to);
      if (from === to || seen.has(from + "\u0000" + to)) continue;
      seen.add(from + "\u0000" + to);
      out.push({ from, to });
    }
    return out;
  };
  return { nodes, edges: squash(run.edges), comp: squash(run.compensation_edges) };
}

function drawGraph(container, run, collapse) {
  const model = graphModel(run, collapse);
  const { position, layers, rows } = layout(model.nodes, model.edges);
  const width = layers * (NODE_W + GAP_X) + 20;
  const height = rows * (NODE_H + GAP_Y) + 60 + (model.comp.length ? 40 : 0); // room for the arcs
  const xy = (id) => {
    const p = position.get(id);
    return { x: 10 + p.layer * (NODE_W + GAP_X), y: 20 + p.row * (NODE_H + GAP_Y) };
  };
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="Dependency graph: ${model.nodes.length} nodes; the steps table below lists them">` +
    `<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker>` +
    `<marker id="arrow-comp" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead comp"/></marker></defs>`;
  for (const e of model.edges) {
    if (!position.has(e.from) || !position.has(e.to)) continue;
    const a = xy(e.from), b = xy(e.to);
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    const mx = (x1 + x2) / 2;
    svg += `<path class="edge" data-from="${escapeXml(e.from)}" data-to="${escapeXml(e.to)}" d="M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}" marker-end="url(#arrow)"/>`;
  }
  for (const e of model.comp) {
    if (!position.has(e.from) || !position.has(e.to)) continue;
    // compensation order, drawn under the nodes as a dashed arc: "a is undone, then b"
    const a = xy(e.from), b = xy(e.to);
    const x1 = a.x + NODE_W / 2, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2, y2 = b.y + NODE_H;
    const sag = 18 + Math.abs(x1 - x2) / 6;
    svg += `<path class="edge comp" data-from="${escapeXml(e.from)}" data-to="${escapeXml(e.to)}" d="M${x1},${y1} C${x1},${y1 + sag} ${x2},${y2 + sag} ${x2},${y2}" marker-end="url(#arrow-comp)"/>`;
  }
  for (const n of model.nodes) {
    const { x, y } = xy(n.id);
    const label = n.label.length > 20 ? n.label.slice(0, 19) + "…" : n.label;
    svg += `<g class="node st-${escapeXml(n.status)}" data-step="${escapeXml(n.id)}" data-status="${escapeXml(n.status)}" transform="translate(${x},${y})">` +
      `<title>${escapeXml(n.title)}</title><rect width="${NODE_W}" height="${NODE_H}" rx="6"/>` +
      `<text x="8" y="14" class="name">${escapeXml(label)}</text><text x="8" y="28" class="state">${escapeXml(n.status)}</text></g>`;
  }
  container.innerHTML = svg + "</svg>";
}

const STEP_STATES = ["pending", "ready", "running", "succeeded", "failed", "skipped", "compensating", "compensated", "cancelled"];

pages.run = async function () {
  const id = $("#run").dataset.run;
  const collapse = $("#collapse-groups");
  $("#legend").replaceChildren("States: ", ...STEP_STATES.map((s) => statusBadge(s)),
    " · solid arrows: dependencies · ", el("span", { class: "comp-key", text: "dashed arrows" }), ": compensation order");
  let run = null;
  let initialised = false;
  const draw = () => drawGraph($("#graph"), run, collapse.checked);
  collapse.addEventListener("change", draw);
  const refresh = async () => {
    try { run = await api(`/workflow-runs/${encodeURIComponent(id)}`); } catch (error) { flash(error.message, "error"); return; }
    if (!initialised) { collapse.checked = run.steps.length > COLLAPSE_ABOVE; initialised = true; }
    const facts = [["Workflow", run.workflow], ["Status", statusBadge(run.status)], ["Open steps", run.open_steps],
      ["Created", timeEl(run.created_at)], ["Finished", timeEl(run.finished_at)],
      ["Forked from", run.forked_from ? el("a", { href: `/workflows/${run.forked_from}`, text: run.forked_from.slice(0, 12) }) : "—"],
      ["Inputs", el("code", { text: JSON.stringify(run.inputs) })], ["Error", run.error || "—"]];
    $("#run-facts").replaceChildren(...facts.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", {}, value)]));
    $("#run").dataset.status = run.status;
    draw();
    const stepsTable = $("#steps-table");
    setRows($("tbody", stepsTable), run.steps.map((s) => el("tr", { "data-step": s.name },
      el("td", { text: s.name }), el("td", { text: s.actor }), el("td", {}, statusBadge(s.status)),
      el("td", { class: "num", text: s.attempts }), el("td", { text: s.group || "" }),
      el("td", { class: "error", text: s.error || s.compensation_error || "" }))), "No steps", 6);
    $("#timeline").replaceChildren(...run.timeline.map((t) => el("li", {}, timeEl(t.at), " ", t.step ? el("strong", { text: t.step }) : "", " ", t.event)));
    const running = run.status === "running" || run.status === "compensating";
    if ($("#run-cancel")) $("#run-cancel").disabled = run.status !== "running";
    if ($("#run-resume")) $("#run-resume").disabled = running || run.status === "succeeded";
  };
  await refresh();
  const later = debounce(refresh, 120);
  // step deliveries are jobs: any job or run event may move a step of this run
  live.on((kind, data) => { if (data.run === id || kind.startsWith("job.")) later(); });
  live.onResume(later);
  if (!CAN_OPERATE) return;
  $("#run-cancel").addEventListener("click", async () => {
    const preview = await act("Preview", () => api(`/workflow-runs/${id}/compensation-preview`));
    if (!preview) return;
    const plan = preview.compensations;
    const text = plan.length
      ? [el("span", { text: `Cancelling now runs ${plan.length} compensation${plan.length === 1 ? "" : "s"}, in this order:` }),
        el("ol", { class: "plan" }, ...plan.map((c) => el("li", { text: `${c.actor} (undoes ${c.step})` })))]
      : [el("span", { text: "Nothing has completed that needs compensating: cancelling only stops the run." })];
    if (!(await confirmAction(text, null))) return;
    const done = await act("Cancel", () => api(`/workflow-runs/${id}/cancel`, { method: "POST", params: { compensate: "true" } }));
    if (done) { flash(`Run ${done.status}`, "info"); await refresh(); }
  });
  $("#run-resume").addEventListener("click", async () => {
    const done = await act("Resume", () => api(`/workflow-runs/${id}/resume`, { method: "POST" }));
    if (done) { flash(`Run ${done.status}`, "info"); await refresh(); }
  });
  $("#run-fork").addEventListener("click", async () => {
    const done = await act("Fork", () => api(`/workflow-runs/${id}/fork`, { method: "POST" }));
    if (done) location.assign(`/workflows/${done.run_id}`);
  });
};

// queues and workers ------------------------------------------------------------------------------------

pages.queues = async function () {
  const queuesTable = $("#queues-table");
  const workersTable = $("#workers-table");
  const refresh = async () => {
    const [queues, workers] = await Promise.all([api("/queues"), api("/workers")]);
    setRows($("tbody", queuesTable), queues.map((q) => el("tr", { "data-queue": q.name },
      el("th", { scope: "row" }, el("a", { href: `/jobs?queue=${encodeURIComponent(q.name)}`, text: q.name })),
      el("td", { class: "num", text: Object.values(q.ready).reduce((a, b) => a + b, 0) }),
      el("td", { class: "num", text: q.delayed }), el("td", { class: "num", text: q.in_flight }), el("td", { class: "num", text: q.dead }),
      el("td", { text: fmtAge(q.oldest_age_s) }),
      el("td", {}, q.paused ? el("span", { class: "badge st-paused", text: "paused" }) : "running"),
      CAN_OPERATE ? el("td", {}, el("button", {
        type: "button", class: q.paused ? "resume" : "pause", text: q.paused ? "Resume" : "Pause",
        onclick: async () => {
          const done = await act(q.paused ? "Resume" : "Pause", () => api(`/queues/${encodeURIComponent(q.name)}/${q.paused ? "resume" : "pause"}`, { method: "POST" }));
          if (done) await refresh();
        },
      })) : null)), "No queues", columnsOf(queuesTable));
    const now = Date.now();
    setRows($("tbody", workersTable), workers.map((w) => el("tr", {},
      el("td", { class: "mono", text: w.id }), el("td", { text: w.host }), el("td", { class: "num", text: w.pid ?? "—" }),
      el("td", { text: (w.queues || []).join(", ") }), el("td", { class: "num", text: w.in_flight }),
      el("td", { text: fmtAge((now - Date.parse(w.last_heartbeat)) / 1000) }),
      el("td", {}, el("span", { class: `dot ${w.alive ? "ok" : "bad"}`, "aria-hidden": "true" }), w.alive ? " alive" : " silent"))),
    "No workers", 7);
  };
  await refresh();
  const later = debounce(refresh, 1000);
  live.on(later);
  live.onResume(later);
};

// -- start --------------------------------------------------------------------------------------------

if (page && page !== "login") {
  setupHeader();
  live.setPaused(live.paused);
  const run = pages[page];
  if (run) run().catch((error) => flash(error.message, "error"));
}
