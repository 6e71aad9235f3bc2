// The Threads Manager's Automation Status: health badge, emergency stop banner, the day's status
// with 30-day charts, and the failed-actions queue. Uses manager.js's helpers (h, s, call, banner,
// when); every change goes to this plugin's /api/automation endpoints, which check DAG edit
// permission and record the change with the user.
"use strict";

const auto = { tab: "threads", failed: null, canEdit: false };
const COLOURS = ["#2f7fd6", "#2e9e4f", "#8a5a00", "#6b4fbb", "#0b8c8c"];

function dayToday() {  // today in the catalog's time zone, as the date picker wants it
  const parts = new Intl.DateTimeFormat("en-CA", { timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit" })
    .formatToParts(new Date());
  const get = (t) => parts.find(p => p.type === t).value;
  return `${get("year")}-${get("month")}-${get("day")}`;
}

// -- tabs -----------------------------------------------------------------------------------
function showTab(name) {
  auto.tab = ["threads", "status", "failed"].includes(name) ? name : "threads";
  document.querySelectorAll("section.tab").forEach(el => { el.hidden = el.id !== `tab-${auto.tab}`; });
  document.querySelectorAll("nav.tabs a").forEach(a => a.classList.toggle("active", a.dataset.tab === auto.tab));
  document.querySelector("header .toolbar").hidden = auto.tab !== "threads";
  if (auto.tab === "status") loadStatus();
  if (auto.tab === "failed") loadFailed();
}

// -- health badge and emergency stop ----------------------------------------------------------
async function loadHealth() {
  const el = document.getElementById("health");
  try {
    const health = await call("GET", `${PAGE}/api/automation/health`);
    el.className = `health ${health.status}`;
    el.textContent = health.status === "green" ? "healthy" : `${health.reasons.length} problem${health.reasons.length > 1 ? "s" : ""}`;
    el.title = health.reasons.map(r => r.text).join("\n") || "scheduler alive, every thread on time";
    document.getElementById("health-reasons").replaceChildren(...health.reasons.map(r =>
      h("li", { class: `reason ${r.kind}` }, r.text)));
  } catch (e) { el.className = "health unknown"; el.textContent = "health unknown"; el.title = e.message; }
}

async function loadStop() {
  try {
    const answer = await call("GET", `${PAGE}/api/automation/stop`);
    auto.canEdit = answer.can_edit;
    const stop = answer.stop, el = document.getElementById("stop-banner");
    el.hidden = !stop;
    if (stop) el.querySelector(".stop-text").textContent =
      `by ${stop.pulled_by} at ${when(stop.pulled_at)}: ${stop.paused_dag_ids.length} threads paused; Resume unpauses exactly those.`;
    const button = document.getElementById("stop");
    button.disabled = !!stop || !auto.canEdit;
    button.title = auto.canEdit ? "pause every enabled thread; Resume unpauses exactly those" : "needs permission to edit DAGs";
    document.getElementById("resume").disabled = !auto.canEdit;
  } catch (e) { banner(`Could not read the emergency stop: ${e.message}`, true); }
}

function confirmBox(title, text) {
  const dialog = document.getElementById("confirm-dialog");
  dialog.querySelector(".title").textContent = title;
  dialog.querySelector(".text").textContent = text;
  dialog.querySelector(".error").textContent = "";
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise(resolve => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

async function pullStop() {
  if (!await confirmBox("Stop all automation",
    "Every enabled thread is paused now; the threads that were enabled are remembered and Resume unpauses exactly those.")) return;
  const stop = await call("POST", `${PAGE}/api/automation/stop`);
  banner(`All automation stopped: ${stop.paused_dag_ids.length} threads paused.`);
}

async function resumeAll() {
  const answer = await call("POST", `${PAGE}/api/automation/resume`);
  banner(`Automation resumed: ${answer.resumed.length} threads enabled again.`);
}

// -- the day's status -----------------------------------------------------------------------
function dayChart(row) {
  const days = row.chart, keys = row.labels.map(l => l.key).filter(k => days.some(d => d.counts[k])).slice(0, 4);
  const slot = 10, height = 40, width = days.length * slot;
  const svg = s("svg", { class: "daychart", width, height: height + 2, viewBox: `0 0 ${width} ${height + 2}`, role: "img",
                         "aria-label": `${row.name}: the last ${days.length} days` });
  svg.append(s("line", { x1: 0, y1: height + 0.5, x2: width, y2: height + 0.5 }));
  const series = [...keys.map((k, i) => ({ key: k, colour: COLOURS[i % COLOURS.length], value: d => d.counts[k] || 0 })),
                  ...(keys.length ? [] : [{ key: "runs", colour: "#9aa5b1", value: d => d.runs - d.failed }]),
                  { key: "failed", colour: "#d64541", value: d => d.failed }];
  const top = Math.max(1, ...series.flatMap(se => days.map(se.value)));
  const bar = Math.max(1, Math.floor((slot - 2) / series.length));
  days.forEach((d, i) => {
    series.forEach((se, j) => {
      const v = se.value(d);
      if (!v) return;
      const barH = Math.max(2, Math.round(v / top * height));
      const rect = s("rect", { x: i * slot + j * bar, y: height - barH, width: bar, height: barH, fill: se.colour,
                               class: se.key === "failed" ? "failed" : "count", "data-day": d.day, "data-key": se.key,
                               "data-value": v });
      const title = s("title", {});
      const label = row.labels.find(l => l.key === se.key);
      title.textContent = `${d.day}: ${label ? label.words.replace("{n}", v) : `${v} ${se.key === "failed" ? "failed runs" : "runs"}`}`;
      rect.append(title);
      svg.append(rect);
    });
  });
  return svg;
}

async function loadStatus() {
  const picker = document.getElementById("status-day");
  if (!picker.value) picker.value = dayToday();
  try {
    const view = await call("GET", `${PAGE}/api/automation/status?day=${encodeURIComponent(picker.value)}`);
    document.querySelector("#status-table tbody").replaceChildren(...view.threads.map(t =>
      h("tr", { dataset: { dagId: t.dag_id, thread: t.name } },
        h("td", {}, h("span", { class: "name" }, t.name), h("div", { class: "meta" }, t.domain)),
        h("td", { class: "runs num" }, t.runs),
        h("td", { class: `failed num ${t.failed ? "bad" : ""}` }, t.failed),
        h("td", { class: "words" }, t.summary || h("span", { class: "meta" }, t.runs ? "no counts recorded" : "—")),
        h("td", { class: "chart30" }, dayChart(t)))));
  } catch (e) { banner(`Could not load the status of ${picker.value}: ${e.message}`, true); }
  loadHealth();
}

// -- failed actions -------------------------------------------------------------------------
function actionButton(label, act, attrs) {
  return h("button", { type: "button", "data-act": act, disabled: !auto.canEdit,
                       title: auto.canEdit ? null : "needs permission to edit DAGs", ...(attrs || {}) }, label);
}

function failedRow(item, cells, buttons) {
  return h("tr", { dataset: { kind: item.kind, id: item.id } }, ...cells.map(c => h("td", {}, c ?? "—")),
    h("td", { class: "actions" }, ...buttons));
}

async function loadFailed() {
  try {
    const q = await call("GET", `${PAGE}/api/automation/failed`);
    auto.failed = q;
    auto.canEdit = q.can_edit;
    const n = q.jobs.length + q.charges.length + q.messages.length;
    document.getElementById("failed-count").textContent = n ? String(n) : "";
    document.querySelector("#failed-jobs tbody").replaceChildren(...q.jobs.map(j => failedRow(j,
      [j.backend, j.target, j.action, j.message, j.attempts, when(j.when)],
      [actionButton("Retry", "retry", j.retryable ? {} : { disabled: true, title: j.why_not }), actionButton("Dismiss", "dismiss")])));
    document.getElementById("retry-all").disabled = !auto.canEdit || !q.jobs.some(j => j.retryable);
    document.querySelector("#failed-charges tbody").replaceChildren(...q.charges.map(c => failedRow(c,
      [c.target, `${c.action} (${c.status})`, c.message, c.attempts, when(c.when)],
      [actionButton("Retry charge", "retry-charge"), actionButton("Dismiss", "dismiss")])));
    document.querySelector("#failed-messages tbody").replaceChildren(...q.messages.map(m => failedRow(m,
      [m.target, m.action, m.status, m.message, m.attempts, when(m.when)],
      [actionButton(m.needs_confirmation ? "Resend…" : "Resend", "resend"), actionButton("Dismiss", "dismiss")])));
    document.querySelector("#audit tbody").replaceChildren(...q.audit.map(a =>
      h("tr", {}, h("td", {}, when(a.at)), h("td", {}, a.user), h("td", {}, a.action), h("td", {}, `${a.kind} ${a.target_id ?? ""}`))));
  } catch (e) { banner(`Could not load the failed actions: ${e.message}`, true); }
}

async function act(button) {
  const tr = button.closest("tr"), kind = tr.dataset.kind, id = Number(tr.dataset.id);
  const base = `${PAGE}/api/automation/failed`;
  const what = button.dataset.act;
  if (what === "retry") {
    await call("POST", `${base}/jobs/${id}/retry`);
    banner(`Job ${id} is pending again: its backend's next run makes one new attempt.`);
  } else if (what === "dismiss") {
    await call("POST", `${base}/${kind}/${id}/dismiss`);
    banner(`${kind} ${id} dismissed (marked handled).`);
  } else if (what === "retry-charge") {
    const answer = await call("POST", `${base}/charges/${id}/retry`);
    banner(`Invoice ${answer.invoice_number}: attempt ${answer.attempt} ${answer.outcome}.`, answer.outcome !== "approved");
  } else if (what === "resend") {
    const item = auto.failed.messages.find(m => m.id === id);
    let confirm = false;
    if (item && item.needs_confirmation) {
      confirm = await confirmBox("Resend an uncertain e-mail",
        `The mail server may already have accepted this message to ${item.target}: resending it may deliver it twice.`);
      if (!confirm) return;
    }
    await call("POST", `${base}/messages/${id}/resend`, { confirm });
    banner(`E-mail ${id} queued again.`);
  }
}

async function retryAllShown() {
  const ids = auto.failed.jobs.filter(j => j.retryable).map(j => j.id);
  const answer = await call("POST", `${PAGE}/api/automation/failed/jobs/retry`, { ids });
  const refused = Object.keys(answer.refused).length;
  banner(`${answer.retried.length} jobs pending again${refused ? `, ${refused} refused` : ""}.`, refused > 0);
}

// -- wiring ---------------------------------------------------------------------------------
document.addEventListener("click", async (ev) => {
  const tab = ev.target.closest("nav.tabs a[data-tab]");
  if (tab) { ev.preventDefault(); history.replaceState(null, "", `#${tab.dataset.tab}`); showTab(tab.dataset.tab); return; }
  if (ev.target.closest("#health")) { ev.preventDefault(); history.replaceState(null, "", "#status"); showTab("status"); return; }
  const button = ev.target.closest("button[data-act], #stop, #resume, #retry-all");
  if (!button) return;
  button.disabled = true;
  try {
    if (button.id === "stop") await pullStop();
    else if (button.id === "resume") await resumeAll();
    else if (button.id === "retry-all") await retryAllShown();
    else await act(button);
  } catch (e) { banner(e.message, true); }
  finally {
    button.disabled = false;
    await Promise.all([loadStop(), auto.tab === "failed" ? loadFailed() : null, auto.tab === "threads" ? load() : null]);
  }
});
document.getElementById("status-day").addEventListener("change", () => loadStatus());
setInterval(() => { if (!document.querySelector("dialog[open]")) { loadStop(); loadHealth(); } }, REFRESH_MS);
loadStop();
loadHealth();
loadFailed();
showTab((location.hash || "#threads").slice(1));
