// The conveyor dashboard page: plain JavaScript, no build step.
//
// One page, routed by the URL's hash (#/, #/workers, #/jobs?state=failed,
// #/jobs/<id>, #/recurring), drawn from the JSON API under ./api/ (the page's
// <base> points at the mount). Each view draws its frame once and refreshes
// its data every few seconds, so filters being typed survive the updates.
// Everything shown is set as text (textContent), never as HTML.
"use strict";

const REFRESH_MS = 2000;
const STATES = ["scheduled", "queued", "running", "completed", "failed", "cancelled"];
const session = { actions: false, login: false, authenticated: false, via: null, csrf: null };
let current = null; // the view on screen: { refresh(), key }
let timer = null;

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "className") el.className = value;
    // Through the CSSOM: the page's Content-Security-Policy refuses style attributes.
    else if (name === "style") el.style.cssText = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Set an element's children: nested lists flattened, null and false left out.
function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
  return el;
}

async function api(path, options = {}) {
  const response = await fetch("api/" + path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const error = new Error((body && body.error) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// An action: POST with the session's CSRF token; the outcome is flashed.
async function act(path, done) {
  const headers = {};
  if (session.csrf) headers["X-CSRF-Token"] = session.csrf;
  try {
    const body = await api(path, { method: "POST", headers });
    flash(done ? done(body) : "Done.", "ok");
    await refresh();
    return body;
  } catch (error) {
    flash(`Refused (${error.status || "error"}): ${error.message}`, "error");
    return null;
  }
}

function flash(text, kind) {
  const box = document.getElementById("flash");
  fill(box, h("div", { className: kind, "data-flash": kind }, text));
}

function badge(state) {
  return h("span", { className: `badge state-${state}`, "data-state": state }, state);
}

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return `${date.toISOString().replace("T", " ").slice(0, 19)} UTC`;
}

function ago(iso) {
  if (!iso) return "";
  return age((Date.now() - new Date(iso).getTime()) / 1000);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function epoch(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString() : null;
}

function json(value) {
  return h("pre", {}, value === undefined ? "" : JSON.stringify(value, null, 2));
}

function button(label, onclick, attrs = {}) {
  return h("button", { type: "button", onclick, ...attrs }, label);
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value) search.set(name, value);
  const text = search.toString();
  return text ? `?${text}` : "";
}

// ------------------------------------------------------------------ session

async function loadSession() {
  Object.assign(session, await api("session"));
  drawAuth();
}

function drawAuth() {
  const box = document.getElementById("auth");
  if (!session.actions) {
    fill(box, h("span", { className: "badge", "data-auth": "read-only" }, "read-only"));
  } else if (session.authenticated) {
    const out = async () => {
      await api("logout", { method: "POST" });
      await loadSession();
      flash("Logged out.", "ok");
    };
    fill(box,
      h("span", { "data-auth": "signed-in" }, "signed in"),
      session.via === "session" ? button("Log out", out) : null,
    );
  } else {
    const input = h("input", {
      type: "password", name: "token", placeholder: "dashboard token", autocomplete: "off",
    });
    const form = h("form", {
      "data-auth": "login",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          await api("login", {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ token: input.value }),
          });
          await loadSession();
          flash("Logged in: actions are on.", "ok");
          await refresh();
        } catch (error) {
          flash(`Login refused: ${error.message}`, "error");
        }
      },
    }, input, h("button", { type: "submit" }, "Log in"));
    fill(box, form);
  }
}

// ------------------------------------------------------------------ overview

function chart(activity) {
  const width = 240;
  const height = 56;
  const n = activity.completed.length;
  const step = width / n;
  const totals = activity.completed.map((c, i) => c + activity.failed[i]);
  const top = Math.max(1, ...totals);
  const root = svg("svg", {
    width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "data-chart": "activity",
  });
  const title = svg("title");
  title.textContent = "jobs finished per 5 minutes over the last hour (completed, failed)";
  root.append(title);
  activity.completed.forEach((done, i) => {
    const failed = activity.failed[i];
    const x = i * step + 1;
    const doneHeight = (done / top) * (height - 4);
    const failedHeight = (failed / top) * (height - 4);
    root.append(svg("rect", {
      x, y: height - doneHeight, width: step - 2, height: doneHeight, fill: "#1f9d55",
    }));
    root.append(svg("rect", {
      x, y: height - doneHeight - failedHeight, width: step - 2, height: failedHeight,
      fill: "#d64545",
    }));
  });
  return root;
}

function activityPanel(a) {
  if (!a) return h("p", { className: "muted" }, "This backend keeps no job records to chart.");
  const rate = a.failure_rate === null ? "—" : `${(a.failure_rate * 100).toFixed(1)}%`;
  return h("div", { className: "chart" },
    chart(a),
    h("div", { className: "legend" },
      h("div", {}, h("i", { style: "background:#1f9d55" }), `${a.completed_total} completed`),
      h("div", {}, h("i", { style: "background:#d64545" }), `${a.failed_total} failed`),
      h("div", { "data-failure-rate": "" }, `failure rate ${rate}`),
      h("div", {}, "last hour, per 5 min")));
}

function queueCard(queue) {
  const a = queue.activity;
  const counts = STATES.map((state) => h("a", {
    className: "count", href: `#/jobs${query({ state, queue: queue.name })}`,
    "data-count": state,
  }, h("b", {}, queue.counts[state]), h("span", {}, state)));
  const pause = session.actions && typeof queue.paused === "boolean"
    ? button(queue.paused ? "Resume" : "Pause", () => act(
      `queues/${encodeURIComponent(queue.name)}/${queue.paused ? "resume" : "pause"}`,
      () => `Queue ${queue.name} ${queue.paused ? "resumed" : "paused"}.`,
    ), { "data-action": queue.paused ? "resume" : "pause" })
    : null;
  return h("section", { className: "panel", "data-queue": queue.name },
    h("div", { className: "toolbar" },
      h("h2", {}, queue.name),
      queue.paused ? h("span", { className: "badge paused", "data-paused": "" }, "paused") : null,
      h("span", { style: "flex:1" }),
      pause),
    h("div", { className: "counts" }, counts),
    activityPanel(a),
    h("p", { className: "muted" },
      `Oldest waiting job: ${age(queue.oldest_waiting_seconds)}`,
      !a || a.complete ? "" : " · throughput counts only the newest jobs the backend keeps"));
}

function overviewView() {
  const body = h("div", { className: "queues" });
  return {
    frame: [h("h1", {}, "Overview"), body],
    async refresh() {
      const data = await api("overview");
      fill(body, ...(data.queues.length
        ? data.queues.map(queueCard)
        : [h("p", { className: "muted" }, "No jobs yet.")]));
    },
  };
}

// ------------------------------------------------------------------ workers

function workersView() {
  const body = h("div");
  return {
    frame: [h("h1", {}, "Workers"), body],
    async refresh() {
      const data = await api("workers");
      if (!data.supported) {
        fill(body, h("p", { className: "muted" }, data.reason));
        return;
      }
      const rows = data.workers.map((w) => h("tr", { "data-worker": w.id, "data-stale": w.stale },
        h("td", {}, w.host, " ", w.stale ? h("span", { className: "badge stale" }, "stale") : null),
        h("td", { className: "num" }, w.pid),
        h("td", {}, (w.queues || []).join(", ")),
        h("td", { className: "num" }, w.concurrency
          ? `${(w.running || []).length} / ${w.concurrency}` : "—"),
        h("td", {}, runningJobs(w.running)),
        h("td", {}, ago(epoch(w.started_at))),
        h("td", {}, `${ago(epoch(w.last_heartbeat ?? w.last_seen))} ago`)));
      const unserved = Object.entries(data.unserved || {}).flatMap(([queue, names]) =>
        Object.entries(names).map(([name, count]) => h("li", {},
          `${count} job(s) ${name} in queue ${queue}: no live worker runs them`)));
      fill(body,
        h("table", {},
          h("thead", {}, h("tr", {}, ["Host", "PID", "Queues", "Busy / slots", "Running now",
            "Up", "Last heartbeat"].map((t) => h("th", {}, t)))),
          h("tbody", {}, rows.length ? rows
            : h("tr", {}, h("td", { colspan: 7, className: "muted" }, "No live workers.")))),
        unserved.length ? h("div", { className: "panel" }, h("h3", {}, "Waiting for a worker"),
          h("ul", {}, unserved)) : null);
    },
  };
}

function runningJobs(running) {
  if (!running || !running.length) return "—";
  return h("ul", {}, running.map((job) => h("li", {},
    h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.name || job.id),
    job.started_at ? ` for ${age(Date.now() / 1000 - job.started_at)}` : "")));
}

// ------------------------------------------------------------------ job lists

function jobsView(params) {
  const filters = {
    state: params.get("state") || "", name: params.get("name") || "",
    queue: params.get("queue") || "", key: params.get("key") || "",
  };
  const offset = Number(params.get("offset") || 0);
  const limit = 25;
  const field = (name, label) => h("label", {}, label,
    h("input", { name, value: filters[name], placeholder: "any" }));
  const state = h("select", { name: "state" },
    h("option", { value: "" }, "any"),
    STATES.map((s) => h("option", { value: s, selected: s === filters.state }, s)));
  const form = h("form", {
    className: "filters", "data-form": "filters",
    onsubmit: (event) => {
      event.preventDefault();
      const data = Object.fromEntries(new FormData(form));
      location.hash = `#/jobs${query(data)}`;
    },
  }, h("label", {}, "State", state), field("name", "Name"), field("queue", "Queue"),
  field("key", "Key"), h("button", { type: "submit", className: "primary" }, "Filter"));
  const idInput = h("input", { name: "id", placeholder: "job id" });
  const search = h("form", {
    className: "filters", "data-form": "search",
    onsubmit: (event) => {
      event.preventDefault();
      if (idInput.value.trim()) location.hash = `#/jobs/${encodeURIComponent(idInput.value.trim())}`;
    },
  }, h("label", {}, "Find by id", idInput), h("button", { type: "submit" }, "Open"));
  const bulk = h("div", { className: "toolbar" });
  if (session.actions && ["failed", "cancelled"].includes(filters.state)) {
    const match = query({
      state: filters.state, name: filters.name, queue: filters.queue, key: filters.key,
    });
    bulk.append(button("Retry all matching", () => act(`jobs/retry${match}`,
      (body) => `Retried ${body.retried} job(s).`), { "data-action": "retry-all" }));
  }
  // Purge deletes by state and queue only: not offered on a list narrowed
  // by name or key (the server refuses those filters too).
  if (session.actions && ["failed", "completed", "cancelled"].includes(filters.state)
      && !filters.name && !filters.key) {
    bulk.append(button(`Purge ${filters.state}${filters.queue ? ` in ${filters.queue}` : ""}`,
      () => {
        if (!confirm(`Delete every ${filters.state} job${filters.queue ? ` of ${filters.queue}` : ""}?`)) return;
        act(`jobs/purge${query({ state: filters.state, queue: filters.queue })}`,
          (body) => `Purged ${body.purged} job(s).`);
      }, { className: "danger", "data-action": "purge" }));
  }
  const tbody = h("tbody");
  const pager = h("div", { className: "pager" });
  const page = (to) => `#/jobs${query({ ...filters, offset: to ? String(to) : "" })}`;
  return {
    frame: [h("h1", {}, filters.state ? `Jobs: ${filters.state}` : "Jobs"), search, form, bulk,
      h("table", {}, h("thead", {}, h("tr", {}, ["Id", "Name", "Queue", "State", "Attempts",
        "Created", "Run at", "Finished", "Error", ""].map((t) => h("th", {}, t)))), tbody), pager],
    async refresh() {
      const data = await api(`jobs${query({ ...filters, limit: String(limit), offset: String(offset) })}`);
      fill(tbody, ...(data.jobs.length ? data.jobs.map(jobRow)
        : [h("tr", {}, h("td", { colspan: 10, className: "muted" }, "No jobs match."))]));
      fill(pager,
        offset > 0 ? h("a", { href: page(Math.max(0, offset - limit)) }, "← newer") : "",
        h("span", { className: "muted" },
          data.jobs.length ? `${offset + 1}–${offset + data.jobs.length}` : ""),
        data.has_more ? h("a", { href: page(offset + limit), "data-page": "next" }, "older →") : "");
    },
  };
}

function jobActions(job) {
  if (!session.actions) return [];
  const id = encodeURIComponent(job.id);
  const out = [];
  if (job.state === "failed" || job.state === "cancelled") {
    out.push(button("Retry", () => act(`jobs/${id}/retry`, () => `Job ${job.id} queued again.`),
      { "data-action": "retry" }));
  }
  if (["scheduled", "queued", "running"].includes(job.state)) {
    out.push(button("Cancel", () => act(`jobs/${id}/cancel`,
      (body) => `Job ${job.id} ${body.state === "cancelled" ? "cancelled" : "asked to stop"}.`),
    { className: "danger", "data-action": "cancel" }));
  }
  return out;
}

function jobRow(job) {
  return h("tr", { "data-job": job.id },
    h("td", { className: "mono" }, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
    h("td", {}, job.name), h("td", {}, job.queue), h("td", {}, badge(job.state)),
    h("td", { className: "num" }, `${job.attempts}/${job.max_retries + 1}`),
    h("td", {}, when(job.created_at)), h("td", {}, when(job.run_at)),
    h("td", {}, when(job.finished_at)),
    h("td", { className: "muted" }, job.error ? job.error.slice(0, 80) : ""),
    h("td", {}, jobActions(job)));
}

// ------------------------------------------------------------------ one job

function jobView(id) {
  const body = h("div");
  return {
    frame: [body],
    async refresh() {
      let job;
      try {
        job = await api(`jobs/${encodeURIComponent(id)}`);
      } catch (error) {
        if (error.status !== 404) throw error;
        fill(body, h("h1", {}, "No such job"), h("p", { className: "muted" }, error.message));
        return;
      }
      const fields = [
        ["Name", job.name], ["Queue", job.queue], ["Key", job.key || "—"],
        ["Attempts", `${job.attempts} of ${job.max_retries + 1}` + (job.stalls ? ` (${job.stalls} stalled)` : "")],
        ["Priority", job.priority], ["Timeout", job.timeout === null ? "none" : `${job.timeout} s`],
        ["Created", when(job.created_at)], ["Run at", when(job.run_at)],
        ["Started", when(job.started_at)], ["Finished", when(job.finished_at)],
      ];
      const history = (job.history || []).map((entry) => h("tr", {},
        h("td", { className: "num" }, entry.attempt), h("td", {}, entry.outcome),
        h("td", {}, when(entry.started_at)), h("td", {}, when(entry.finished_at)),
        h("td", {}, entry.error || "")));
      const logs = (job.logs || []).map((line) => {
        const { at, msg, ...rest } = line;
        return h("tr", {}, h("td", {}, when(epoch(at))), h("td", {}, msg),
          h("td", { className: "mono" }, Object.keys(rest).length ? JSON.stringify(rest) : ""));
      });
      fill(body,
        h("div", { className: "toolbar" }, h("h1", { className: "mono" }, job.id), badge(job.state),
          h("span", { style: "flex:1" }), jobActions(job)),
        h("div", { className: "panel" },
          h("dl", { className: "fields" }, fields.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
            h("dt", {}, "Progress"),
            h("dd", {}, h("div", { className: "progress", "data-progress": job.progress },
              h("div", { style: `width:${Math.min(100, job.progress)}%` })), ` ${job.progress}%`))),
        h("h3", {}, "Payload"), json(job.payload),
        job.result !== null ? [h("h3", {}, "Result"), json(job.result)] : null,
        job.error ? [h("h3", {}, "Error"), h("pre", { "data-error": "" }, job.error)] : null,
        job.traceback ? [h("h3", {}, "Traceback"),
          h("pre", { className: "traceback", "data-traceback": "" }, job.traceback)] : null,
        h("h3", {}, "Attempts"),
        history.length ? h("table", {}, h("thead", {}, h("tr", {},
          ["#", "Outcome", "Started", "Finished", "Error"].map((t) => h("th", {}, t)))),
        h("tbody", {}, history)) : h("p", { className: "muted" }, "No finished attempt yet."),
        h("h3", {}, "Log lines"),
        logs.length ? h("table", {}, h("thead", {}, h("tr", {},
          ["At", "Message", "Fields"].map((t) => h("th", {}, t)))), h("tbody", {}, logs))
          : h("p", { className: "muted" }, "No ctx.log lines."));
    },
  };
}

// ------------------------------------------------------------------ recurring

function recurringView() {
  const tbody = h("tbody");
  return {
    frame: [h("h1", {}, "Recurring schedules"), h("table", {}, h("thead", {}, h("tr", {},
      ["Name", "Job", "When", "Next run", "Last run", "Last error", "State", ""]
        .map((t) => h("th", {}, t)))), tbody)],
    async refresh() {
      const schedules = await api("recurring");
      fill(tbody, ...(schedules.length ? schedules.map((s) => {
        const name = encodeURIComponent(s.name);
        const buttons = session.actions ? [
          s.enabled
            ? button("Disable", () => act(`recurring/${name}/disable`, () => `${s.name} disabled.`),
              { "data-action": "disable" })
            : button("Enable", () => act(`recurring/${name}/enable`, () => `${s.name} enabled.`),
              { "data-action": "enable" }),
          button("Run now", () => act(`recurring/${name}/run`,
            (body) => `${s.name}: job ${body.job.id} enqueued.`), { "data-action": "run" }),
        ] : [];
        return h("tr", { "data-schedule": s.name },
          h("td", {}, s.name), h("td", {}, s.job_name), h("td", { className: "mono" }, s.spec),
          h("td", {}, s.next_run
            ? [h("div", {}, `${s.next_run_local ? s.next_run_local.replace("T", " ").slice(0, 19) : "?"} ${s.tz}`),
              h("div", { className: "muted" }, when(s.next_run))]
            : "—"),
          h("td", {}, when(s.last_run)), h("td", {}, s.last_error || ""),
          h("td", {}, s.enabled ? "enabled" : h("span", { className: "badge paused" }, "disabled")),
          h("td", {}, buttons));
      }) : [h("tr", {}, h("td", { colspan: 8, className: "muted" }, "No schedules."))]));
    },
  };
}

// ------------------------------------------------------------------ routing

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search] = hash.split("?");
  const params = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "workers") return ["workers", workersView()];
  if (parts[0] === "recurring") return ["recurring", recurringView()];
  if (parts[0] === "jobs" && parts[1]) return ["jobs", jobView(decodeURIComponent(parts[1]))];
  if (parts[0] === "jobs") return [params.get("state") === "failed" ? "failed" : "jobs", jobsView(params)];
  return ["overview", overviewView()];
}

// One refresh in flight at a time: a slow answer (many queues, a busy store)
// must not pile requests up. One asked for meanwhile (a new page) runs after.
let refreshing = null;
let again = false;

async function refresh() {
  if (refreshing) {
    again = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      again = false;
      await refreshOnce();
    } while (again);
  })();
  try {
    await refreshing;
  } finally {
    refreshing = null;
  }
}

async function refreshOnce() {
  if (!current) return;
  const updated = document.getElementById("updated");
  try {
    await current.refresh();
    updated.textContent = `updated ${new Date().toLocaleTimeString()} · live, every ${REFRESH_MS / 1000} s`;
  } catch (error) {
    updated.textContent = `update failed: ${error.message}`;
  }
}

async function show() {
  const [nav, view] = route();
  for (const link of document.querySelectorAll("header nav a")) {
    link.classList.toggle("active", link.dataset.nav === nav);
  }
  current = view;
  fill(document.getElementById("main"), ...view.frame.filter(Boolean));
  await refresh();
}

async function start() {
  try {
    await loadSession();
  } catch (error) {
    flash(`Cannot reach the dashboard's API: ${error.message}`, "error");
  }
  window.addEventListener("hashchange", () => {
    fill(document.getElementById("flash"));
    show();
  });
  await show();
  // The next refresh is set once this one is done (setInterval would start
  // one every REFRESH_MS however long each took).
  const tick = async () => {
    if (!document.hidden) await refresh();
    timer = setTimeout(tick, REFRESH_MS);
  };
  timer = setTimeout(tick, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);
