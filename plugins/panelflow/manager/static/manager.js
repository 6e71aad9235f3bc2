// The Threads Manager page: renders /threads-manager/api/threads and performs its actions.
// Run now and Enable/Disable call Airflow's own REST API (/api/v2) with the browser's Airflow
// session, so Airflow checks them like any UI action; the interval and logging overrides go to
// this plugin's endpoints, which check DAG edit permission themselves.
"use strict";

const ROOT = document.body.dataset.airflowRoot || "";
const PAGE = document.body.dataset.pageRoot || "/threads-manager";
const TZ = document.body.dataset.timezone || "UTC";
const REFRESH_MS = 15000;
const state = { data: null, byDag: new Map(), loading: null, loadFailed: false };

// -- small helpers --------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}
const fmt = new Intl.DateTimeFormat("en-GB", { timeZone: TZ, day: "2-digit", month: "short", hour: "2-digit",
                                                minute: "2-digit", second: "2-digit", hour12: false });
function when(iso) { return iso ? fmt.format(new Date(iso)) : "—"; }
function span(seconds) {  // JeraSoft style: "5d 07:03:12"
  seconds = Math.max(0, Math.round(seconds));
  const d = Math.floor(seconds / 86400), rest = seconds % 86400;
  const hms = [Math.floor(rest / 3600), Math.floor(rest / 60) % 60, rest % 60].map(n => String(n).padStart(2, "0")).join(":");
  return (d ? `${d}d ` : "") + hms;
}
function ago(iso) { return iso ? `${span((Date.now() - new Date(iso)) / 1000)} ago` : "—"; }
function until(iso) {
  if (!iso) return "—";
  const secs = (new Date(iso) - Date.now()) / 1000;
  return secs >= 0 ? `in ${span(secs)}` : `due ${span(-secs)} ago`;
}
function duration(secs) {
  if (secs === null || secs === undefined) return "—";
  return secs < 60 ? `${secs.toFixed(1)} s` : span(secs);
}

async function call(method, url, body) {
  const res = await fetch(url, {
    method, credentials: "same-origin",
    headers: { "Accept": "application/json", ...(body !== undefined ? { "Content-Type": "application/json" } : {}) },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  let payload = null;
  try { payload = await res.json(); } catch (e) { /* an empty or non-JSON answer */ }
  if (!res.ok) {
    let detail = payload && payload.detail !== undefined ? payload.detail : res.statusText;
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    const err = new Error(`${res.status}: ${detail}`);
    err.status = res.status;
    throw err;
  }
  return payload;
}
const airflowApi = (path) => `${ROOT}/api/v2${path}`;

function banner(text, isError) {
  const el = document.getElementById("banner");
  el.hidden = !text;
  el.textContent = text || "";
  el.classList.toggle("error", !!isError);
}

// -- rendering ------------------------------------------------------------------------------
function chart(runs) {
  const n = 20, w = 6, gap = 2, height = 26;
  const svg = s("svg", { class: "chart", width: n * (w + gap), height, viewBox: `0 0 ${n * (w + gap)} ${height}`,
                         role: "img", "aria-label": `${runs.length} recent runs` });
  svg.append(s("line", { x1: 0, y1: height - 0.5, x2: n * (w + gap), y2: height - 0.5 }));
  const ordered = runs.slice().reverse();  // oldest left, newest right
  // a running run's bar grows with the time it has taken so far
  ordered.forEach(r => { if (r.duration === null && r.start_date && r.state === "running") r.duration = (Date.now() - new Date(r.start_date)) / 1000; });
  const longest = Math.max(1, ...ordered.map(r => r.duration || 0));
  ordered.forEach((r, i) => {
    const known = ["success", "failed", "running", "queued"].includes(r.state) ? r.state : "other";
    const barH = r.duration ? Math.max(3, Math.round((r.duration / longest) * (height - 2))) : 3;
    const rect = s("rect", { x: (n - ordered.length + i) * (w + gap), y: height - 1 - barH, width: w, height: barH,
                             class: known, "data-state": r.state || "", "data-run-id": r.run_id || "" });
    const title = s("title", {});
    title.textContent = `${r.run_id}\n${r.state} · ${duration(r.duration)} · ${r.run_type}\nstarted ${when(r.start_date)}`;
    rect.append(title);
    svg.append(rect);
  });
  return svg;
}

function scheduleCell(t) {
  const cell = h("td", { class: "schedule" }, h("div", { class: "effective" }, t.schedule));
  if (t.override && t.override.schedule) {
    const pending = t.dag && t.dag.last_parsed && t.override.updated_at && new Date(t.dag.last_parsed) < new Date(t.override.updated_at);
    cell.append(h("div", {},
      h("span", { class: "badge override", title: `set by ${t.override.updated_by} at ${when(t.override.updated_at)}` }, "override"),
      pending ? h("span", { class: "badge pending", title: "the DAG is re-parsed with it within seconds" }, " applies at the next parse") : null),
      h("div", { class: "meta catalog" }, `catalog: ${t.catalog_schedule}`));
  }
  if (t.override_problem) cell.append(h("div", { class: "problem" }, `stored override ignored: ${t.override_problem}`));
  return cell;
}

function queueCell(t) {
  const since = iso => span((Date.now() - new Date(iso)) / 1000);
  const parts = [];
  if (t.queued_runs) parts.push(h("div", { class: "queued", title: `run${t.queued_runs > 1 ? "s" : ""} created, not started, since ${when(t.queued_since)}` },
    `${t.queued_runs} run${t.queued_runs > 1 ? "s" : ""} queued `, h("span", { class: "ago" }, since(t.queued_since))));
  if (t.waiting_tasks) parts.push(h("div", { class: "waiting meta", title: `task${t.waiting_tasks > 1 ? "s" : ""} waiting for a worker or a run-group slot since ${when(t.waiting_since)}` },
    `${t.waiting_tasks} task${t.waiting_tasks > 1 ? "s" : ""} waiting `, h("span", { class: "ago" }, since(t.waiting_since))));
  if (t.run_group_waits) parts.push(h("div", { class: "queued run-groups", title: `in queue while another thread holds one of its run groups (${(t.run_groups || []).join(", ")}) since ${when(t.run_group_waiting_since)}` },
    `in queue for run group `, h("span", { class: "ago" }, since(t.run_group_waiting_since))));
  return h("td", { class: "queue" }, parts.length ? parts : "—");
}

function liveRow(t) {
  const paused = t.dag ? t.dag.is_paused : null;
  const last = t.last_run;
  const status = paused === null ? "not parsed" : paused ? "paused" : "enabled";
  const dagUrl = `${ROOT}/dags/${encodeURIComponent(t.dag_id)}`;
  const name = h("td", {},
    h("a", { class: "name dag-link", href: dagUrl, title: t.description }, t.name),
    t.verbose_logging ? h("span", { class: "badge verbose", title: "Enable Logging: verbose task logs" }, " logging") : null,
    h("div", { class: "meta" },
      h("span", { class: "chip domain", dataset: { domain: t.domain }, title: "show only this domain" }, t.domain),
      ` steps ${t.steps_built}/${t.steps_total} · priority ${t.priority}`),
    t.replaces.length ? h("div", { class: "meta" }, `replaces ${t.replaces.join(", ")}`) : null,
    t.dag && t.dag.has_import_errors ? h("div", { class: "problem" }, "DAG file has import errors") : null);
  const lastCell = h("td", { class: "last-run" }, last ? [
    h("div", { class: "ago", title: `${last.run_id}\n${when(last.start_date || last.run_after)}` }, ago(last.start_date || last.run_after)),
    h("div", {}, h("span", { class: `state ${last.state}` }, last.state), h("span", { class: "meta" }, ` ${last.run_type}`)),
  ] : h("span", { class: "meta" }, "never"));
  const nextCell = h("td", { class: "next-run" },
    t.kind === "daemon" ? h("span", { class: "meta" }, "continuous")
    : paused ? h("span", { class: "meta", title: "a paused thread makes no scheduled runs" }, "— (paused)")
    : t.dag && t.dag.next_run ? [h("div", { class: "ago" }, until(t.dag.next_run)), h("div", { class: "meta" }, when(t.dag.next_run))]
    : "—");
  const editTitle = t.can_edit ? null : "needs permission to edit this DAG";
  const actions = h("td", { class: "actions" },
    h("div", {},
      h("button", { type: "button", "data-action": "run", disabled: !t.can_trigger,
                    title: t.kind === "daemon" ? "a daemon runs whenever its queue has work" : (t.can_trigger ? "trigger a run now" : "needs permission to trigger this DAG") }, "Run now"),
      h("button", { type: "button", "data-action": paused ? "enable" : "disable", disabled: !t.can_edit || paused === null,
                    title: editTitle || (paused ? "unpause: scheduled runs start again" : "pause: no new scheduled runs") }, paused ? "Enable" : "Disable")),
    h("div", {},
      h("button", { type: "button", "data-action": "interval", disabled: !t.can_edit || t.kind === "daemon",
                    title: t.kind === "daemon" ? "a daemon has no time interval" : (editTitle || "Update Time Interval") }, "Interval…"),
      h("label", { title: editTitle || "Enable Logging: verbose task logs for this thread from its next run" },
        h("input", { type: "checkbox", "data-action": "logging", checked: t.verbose_logging, disabled: !t.can_edit }), "Enable Logging")));
  return h("tr", { dataset: { dagId: t.dag_id, thread: t.name, domain: t.domain, status } },
    h("td", {}, h("span", { class: `status ${status === "enabled" ? "" : "paused"}` }, status)),
    name, scheduleCell(t),
    h("td", { class: "nodes" }, chips(t.nodes)),
    h("td", { class: "run-groups" }, t.run_groups.length ? chips(t.run_groups) : "—"),
    lastCell, nextCell, queueCell(t),
    h("td", { class: "recent" }, chart(t.recent_runs)),
    actions);
}

function chips(names) { return names.flatMap((n, i) => [i ? " " : null, h("span", { class: "chip" }, n)]); }

function legacyRow(t) {
  return h("tr", { class: "legacy", dataset: { thread: t.name, status: "legacy", domain: "" } },
    h("td", {}, h("span", { class: "status legacy" }, "legacy")),
    h("td", {}, h("span", { class: "name", title: t.description }, t.name),
      h("div", { class: "meta" }, t.description)),
    h("td", { colspan: 8 }, "superseded by ",
      h("a", { href: "#", class: "superseded-by", "data-target": t.legacy.superseded_by }, t.legacy.superseded_by),
      t.legacy.note ? h("span", { class: "meta" }, ` — ${t.legacy.note}`) : null));
}

function render() {
  const data = state.data;
  const tbody = document.querySelector("#threads tbody");
  const select = document.getElementById("filter-domain");
  if (select.options.length === 1) data.domains.forEach(d => select.append(h("option", { value: d }, d)));
  state.byDag = new Map(data.threads.filter(t => t.dag_id).map(t => [t.dag_id, t]));
  tbody.replaceChildren(...data.threads.map(t => t.legacy ? legacyRow(t) : liveRow(t)));
  if (data.stored_override_problem) banner(`The stored overrides are ignored: ${data.stored_override_problem}`, true);
  if (data.catalog_problem) banner(`The catalog files do not load; showing the last valid catalog. ${data.catalog_problem}`, true);
  applyFilters();
}

function applyFilters() {
  const domain = document.getElementById("filter-domain").value;
  const status = document.getElementById("filter-status").value;
  const text = document.getElementById("filter-text").value.trim().toLowerCase();
  const legacy = document.getElementById("filter-legacy").checked;
  let shown = 0, live = 0, old = 0;
  for (const tr of document.querySelectorAll("#threads tbody tr")) {
    const isLegacy = tr.dataset.status === "legacy";
    const ok = (!domain || tr.dataset.domain === domain) && (!status || tr.dataset.status === status)
      && (legacy || isLegacy === false || status === "legacy") && (!text || tr.textContent.toLowerCase().includes(text));
    tr.hidden = !ok;
    if (ok) { shown++; isLegacy ? old++ : live++; }
  }
  const total = state.data.threads.length;
  document.getElementById("counts").textContent =
    `${shown} of ${total} threads shown (${live} live, ${old} legacy) · updated ${when(new Date().toISOString())}`;
}

async function load() {
  if (state.loading) return state.loading;
  state.loading = (async () => {
    try {
      state.data = await call("GET", `${PAGE}/api/threads`);
      if (state.loadFailed) banner("");
      state.loadFailed = false;
      render();
    } catch (e) {
      state.loadFailed = true;
      banner(`Could not load the threads: ${e.message}`, true);
    } finally {
      state.loading = null;
    }
  })();
  return state.loading;
}

// -- actions --------------------------------------------------------------------------------
function flash(dagId) {
  const tr = document.querySelector(`tr[data-dag-id="${CSS.escape(dagId)}"]`);
  if (tr) tr.classList.add("flash");
}

async function setPaused(t, paused) {
  await call("PATCH", airflowApi(`/dags/${encodeURIComponent(t.dag_id)}`), { is_paused: paused });
  banner(`${t.name} ${paused ? "disabled (paused)" : "enabled"}.`);
}

async function setLogging(t, enabled) {
  await call("PUT", `${PAGE}/api/threads/${encodeURIComponent(t.dag_id)}/logging`, { enabled });
  banner(`Enable Logging ${enabled ? "on" : "off"} for ${t.name}: ${enabled ? "verbose" : "normal"} task logs from its next run.`);
}

function openDialog(id, t) {
  const dialog = document.getElementById(id);
  dialog.querySelectorAll(".thread-name").forEach(el => { el.textContent = t.name; });
  dialog.querySelector(".error").textContent = "";
  dialog.dataset.dagId = t.dag_id;
  return dialog;
}

async function runNow(t) {
  const dialog = openDialog("run-dialog", t);
  const area = dialog.querySelector("textarea[name=conf]");
  area.value = "{}";
  dialog.querySelector(".paused-warning").hidden = !(t.dag && t.dag.is_paused);
  dialog.showModal();
  try {  // the thread's params and their defaults, as Airflow's Trigger form shows them
    const details = await call("GET", airflowApi(`/dags/${encodeURIComponent(t.dag_id)}/details`));
    const conf = {};
    for (const [k, v] of Object.entries(details.params || {})) conf[k] = v && typeof v === "object" && "value" in v ? v.value : v;
    area.value = JSON.stringify(conf, null, 2);
  } catch (e) { dialog.querySelector(".error").textContent = `Could not read the params: ${e.message}`; }
}

async function confirmRun(dialog) {
  const t = state.byDag.get(dialog.dataset.dagId);
  let conf;
  try { conf = JSON.parse(dialog.querySelector("textarea[name=conf]").value || "{}"); }
  catch (e) { dialog.querySelector(".error").textContent = `Run configuration is not JSON: ${e.message}`; return; }
  try {
    const run = await call("POST", airflowApi(`/dags/${encodeURIComponent(t.dag_id)}/dagRuns`), { logical_date: null, conf });
    dialog.close();
    banner(`${t.name}: run ${run.dag_run_id} created (${run.state}).`);
    await load();
    flash(t.dag_id);
  } catch (e) { dialog.querySelector(".error").textContent = e.message; }
}

function fillInterval(dialog, shape) {
  const f = dialog.querySelector("form");
  f.kind.value = shape.kind === "daemon" ? "periodic" : shape.kind;
  f.every.value = shape.every ?? ""; f.align_to.value = shape.align_to ?? 0;
  f.days.value = shape.days ?? 0; f.hours.value = shape.hours ?? 0;
  f.at.value = (shape.at || []).join(", "); f.timezone.value = shape.timezone || TZ;
  f.data_interval.checked = !!shape.data_interval;
  showKind(dialog);
}
function showKind(dialog) {
  const kind = dialog.querySelector("select[name=kind]").value;
  dialog.querySelectorAll("fieldset[data-kind]").forEach(fs => { fs.hidden = fs.dataset.kind !== kind; });
  dialog.querySelector(".data-interval").hidden = kind === "manual";
}

function openInterval(t) {
  const dialog = openDialog("interval-dialog", t);
  dialog.querySelector(".catalog-schedule").textContent = t.catalog_schedule;
  const o = t.override && t.override.schedule;
  dialog.querySelector(".current-override").textContent = o ? ` · override: ${t.override.schedule_text}` : " · no override";
  dialog.querySelector("button.reset").disabled = !o;
  fillInterval(dialog, o || t.catalog_schedule_shape);
  dialog.showModal();
}

// After an interval change the DAG file is re-parsed within seconds (the change queued it): follow
// it until the DAG's last parse is a newer one than when the change was made (at most a minute).
function watchParse(dagId, parsedBefore, until = Date.now() + 60000) {
  setTimeout(async () => {
    await load();
    const t = state.byDag.get(dagId);
    const parsed = t && t.dag ? t.dag.last_parsed : null;
    if (parsed === parsedBefore && Date.now() < until) watchParse(dagId, parsedBefore, until);
  }, 2000);
}

function num(v) { return v === "" ? v : (Number.isFinite(Number(v)) ? Number(v) : v); }

async function confirmInterval(dialog, how) {
  const t = state.byDag.get(dialog.dataset.dagId);
  const f = dialog.querySelector("form");
  const url = `${PAGE}/api/threads/${encodeURIComponent(t.dag_id)}/schedule`;
  try {
    if (how === "reset") {
      await call("DELETE", url);
      banner(`${t.name}: back to the catalog's interval (${t.catalog_schedule}) at the next parse.`);
    } else {
      const kind = f.kind.value;
      const schedule = { kind };
      if (kind === "periodic") Object.assign(schedule, { every: num(f.every.value), align_to: num(f.align_to.value || "0") });
      if (kind === "interval") Object.assign(schedule, { days: num(f.days.value || "0"), hours: num(f.hours.value || "0") });
      if (kind === "fixed") Object.assign(schedule, { at: f.at.value.split(/[\s,]+/).filter(Boolean), timezone: f.timezone.value || null });
      if (kind !== "manual") schedule.data_interval = f.data_interval.checked;
      const answer = await call("PUT", url, { schedule });
      banner(`${t.name}: time interval set to ${answer.schedule} (catalog: ${answer.catalog_schedule}); applied at the next parse.`);
    }
    dialog.close();
    await load();
    flash(t.dag_id);
    watchParse(t.dag_id, t.dag ? t.dag.last_parsed : null);
  } catch (e) { dialog.querySelector(".error").textContent = e.message; }
}

// Inside Airflow the page is a sandboxed iframe that may not navigate the top window; it is the
// same origin, though, so it asks Airflow's router (browser history) to show the DAG instead.
function openInAirflow(url) {
  try {
    if (window.parent !== window && window.parent.location.origin === window.location.origin) {
      window.parent.history.pushState({}, "", url);
      window.parent.dispatchEvent(new PopStateEvent("popstate", { state: {} }));
      return;
    }
  } catch (e) { /* not reachable: open it here */ }
  window.location.href = url;
}

document.addEventListener("click", async (ev) => {
  const dagLink = ev.target.closest("a.dag-link");
  if (dagLink && !ev.ctrlKey && !ev.metaKey && !ev.shiftKey) { ev.preventDefault(); openInAirflow(dagLink.href); return; }
  const chip = ev.target.closest(".chip.domain");
  if (chip) { document.getElementById("filter-domain").value = chip.dataset.domain; applyFilters(); return; }
  const link = ev.target.closest("a.superseded-by");
  if (link) {
    ev.preventDefault();
    const tr = document.querySelector(`tr[data-thread="${CSS.escape(link.dataset.target)}"]`);
    if (tr) { tr.hidden = false; tr.scrollIntoView({ block: "center" }); tr.classList.remove("flash"); void tr.offsetWidth; tr.classList.add("flash"); }
    return;
  }
  const button = ev.target.closest("button[data-action]");
  if (button) {
    const t = state.byDag.get(button.closest("tr").dataset.dagId);
    button.disabled = true;
    try {
      if (button.dataset.action === "run") await runNow(t);
      else if (button.dataset.action === "interval") openInterval(t);
      else { await setPaused(t, button.dataset.action === "disable"); await load(); flash(t.dag_id); }
    } catch (e) { banner(`${t.name}: ${e.message}`, true); }
    finally { button.disabled = false; }
    return;
  }
  const confirm = ev.target.closest("button[data-confirm]");
  if (confirm) {
    ev.preventDefault();
    const dialog = confirm.closest("dialog");
    if (confirm.dataset.confirm === "run") await confirmRun(dialog);
    else await confirmInterval(dialog, confirm.dataset.confirm);
  }
});

document.addEventListener("change", async (ev) => {
  const box = ev.target.closest("input[data-action=logging]");
  if (box) {
    const t = state.byDag.get(box.closest("tr").dataset.dagId);
    try { await setLogging(t, box.checked); await load(); flash(t.dag_id); }
    catch (e) { box.checked = !box.checked; banner(`${t.name}: ${e.message}`, true); }
    return;
  }
  if (ev.target.name === "kind") showKind(ev.target.closest("dialog"));
  if (ev.target.id && ev.target.id.startsWith("filter-")) applyFilters();
});
document.getElementById("filter-text").addEventListener("input", applyFilters);
document.getElementById("refresh").addEventListener("click", () => load());
setInterval(() => { if (!document.querySelector("dialog[open]")) load(); }, REFRESH_MS);
load();
