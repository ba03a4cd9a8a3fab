// taskq dashboard: renders the views from the server-sent snapshots and the JSON API.
// No framework and no build: DOM nodes are made with textContent only (never innerHTML),
// so nothing a task carries can become markup.
"use strict";
(() => {
  const PREFIX = document.body.dataset.prefix || "";
  const ACTIONS = document.body.dataset.actions === "1";
  const SVG = "http://www.w3.org/2000/svg";
  const view = document.getElementById("view");
  const statusEl = document.getElementById("status");
  let snap = null;
  let current = null; // the open view: {kind, arg, update()}

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  const num = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en"));
  function age(s) {
    if (s === null || s === undefined) return "—";
    if (s < 60) return `${s.toFixed(1)} s`;
    if (s < 3600) return `${(s / 60).toFixed(1)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }
  const mib = (b) => (b ? `${(b / 1048576).toFixed(1)} MiB` : "—");
  const clock = (t) => (t ? new Date(t * 1000).toLocaleString("en-GB") : "—");
  const cell = (col, value, cls) => h("td", {dataset: {col}, class: cls || "num"}, value);
  const table = (heads, rows, empty) =>
    rows.length ? h("table", {}, h("thead", {}, h("tr", {}, heads.map((t) => h("th", {}, t)))),
                  h("tbody", {}, rows))
                : h("p", {class: "muted"}, empty);
  const api = (path, opts) => fetch(PREFIX + path, {credentials: "same-origin", ...opts})
    .then(async (r) => ({status: r.status, body: await r.json().catch(() => ({}))}));
  const enc = encodeURIComponent;

  function spark(done, failed) {
    const w = 180, ht = 30, n = 90;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${ht}`);
    svg.setAttribute("class", "spark");
    const peak = Math.max(1, ...done, ...failed);
    for (const [series, cls] of [[done, "done"], [failed, "failed"]]) {
      if (series.length < 2) continue;
      const pts = series.map((v, i) => {
        const x = w - (series.length - 1 - i) * (w / (n - 1));
        return `${x.toFixed(1)},${(ht - 1 - (v / peak) * (ht - 3)).toFixed(1)}`;
      });
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", pts.join(" "));
      line.setAttribute("class", cls);
      svg.append(line);
    }
    const title = document.createElementNS(SVG, "title");
    title.textContent = `last 15 min, peak ${peak.toFixed(1)}/s`;
    svg.append(title);
    return svg;
  }
  const last = (xs) => (xs.length ? xs[xs.length - 1] : 0);

  function busy(n) {
    if (n.procs_table) return [n.procs_table.filter((p) => p.state === "busy").length, ""];
    return [Math.min(n.in_flight, n.procs), "≈"]; // held tasks, prefetched ones included
  }
  const rss = (n) => (n.procs_table ? n.procs_table.reduce((s, p) => s + (p.rss || 0), 0) : 0);

  // -- views ----------------------------------------------------------------------------

  function overview() {
    const queues = snap.queues.map((q) => h("tr", {dataset: {queue: q.name}},
      h("td", {}, h("a", {href: `#/queue/${enc(q.name)}`}, q.name)),
      cell("queued", num(q.depth)), cell("in_flight", num(q.in_flight)),
      cell("delayed", num(q.delayed)), cell("done", num(q.counters.done || 0)),
      cell("failed", num(q.counters.failed || 0)), cell("dead", num(q.dead)),
      cell("oldest", age(q.oldest_age)),
      h("td", {class: "spark-cell"}, spark(q.done_rate, q.failed_rate),
        h("span", {class: "rate", dataset: {col: "rate"}},
          `${last(q.done_rate).toFixed(1)}/s done · ${last(q.failed_rate).toFixed(1)}/s failed`))));
    const nodes = snap.nodes.map((n) => {
      const [b, approx] = busy(n);
      return h("tr", {dataset: {node: n.id}},
        h("td", {}, h("a", {href: `#/node/${enc(n.id)}`}, n.id)), h("td", {}, n.host),
        cell("pid", n.pid), h("td", {}, n.queues.join(", ")),
        cell("busy", `${approx}${b} / ${n.procs}`),
        cell("util", n.procs ? `${Math.round((100 * b) / n.procs)} %` : "—"),
        cell("processed", num(n.processed)), cell("rss", mib(rss(n))),
        cell("heartbeat", age(n.heartbeat_age)));
    });
    return [
      h("h2", {}, "Queues", snap.truncated ? h("small", {}, " (first 200 shown)") : null),
      table(["queue", "queued", "in flight", "delayed", "done", "failed", "dead", "oldest waiting",
             "throughput, last 15 min"], queues, "No queue yet: enqueue a task."),
      h("h2", {}, `Live nodes (${snap.nodes_live})`),
      table(["node", "host", "pid", "queues", "busy / total", "utilisation", "processed", "RSS",
             "heartbeat"], nodes, "No live node: start one with `taskq worker`."),
    ];
  }

  function nodeView(id) {
    const n = snap.nodes.find((x) => x.id === id);
    if (!n) return [h("h2", {}, `Node ${id}`), h("p", {class: "muted"}, "Not live: no heartbeat in the last 30 s.")];
    const [b, approx] = busy(n);
    const facts = [["host", n.host], ["pid", n.pid], ["queues", n.queues.join(", ")],
      ["processes busy / total", `${approx}${b} / ${n.procs}`],
      ["utilisation", n.procs ? `${Math.round((100 * b) / n.procs)} %` : "—"],
      ["RSS", mib(rss(n))], ["heartbeat", `${age(n.heartbeat_age)} ago`],
      ["processed / failed", `${num(n.processed)} / ${num(n.failed)}`], ["in flight", num(n.in_flight)]];
    const now = snap.time;
    const procs = n.procs_table
      ? table(["slot", "pid", "state", "task", "task id", "running for", "done", "RSS", "restarts", "last exit"],
          n.procs_table.map((p) => h("tr", {dataset: {slot: p.slot}}, cell("slot", p.slot), cell("pid", p.pid),
            h("td", {dataset: {col: "state"}, class: `state ${p.state}`}, p.state),
            h("td", {dataset: {col: "task"}}, p.task || "—"), h("td", {class: "mono"}, p.task_id || "—"),
            cell("for", p.task && p.since ? age(Math.max(0, now - p.since)) : "—"),
            cell("done", num(p.done)), cell("rss", mib(p.rss)), cell("restarts", num(p.restarts)),
            h("td", {dataset: {col: "last_exit"}}, p.last_exit || "—"))), "No process.")
      : h("p", {class: "muted", id: "no-procs"},
          "This node does not publish its process table (an older taskq worker): totals only.");
    return [h("h2", {}, `Node ${n.id}`),
      h("dl", {class: "facts"}, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      h("h3", {}, "Pool processes"), procs];
  }

  function queueView(name) {
    const counts = h("div", {id: "queue-counts"});
    const deadBox = h("div", {id: "dead"});
    const delayedBox = h("div", {id: "delayed"});
    const note = h("p", {id: "action-note", class: "note"});
    const st = {before: [], cursor: null, page: null, seenDead: -1, seenDelayed: -1, offset: 0};

    async function post(path, payload) {
      const r = await api(`/api/queues/${enc(name)}/dead/${path}`, {method: "POST",
        headers: {"x-taskq-action": "1", "content-type": "application/json"}, body: JSON.stringify(payload)});
      note.textContent = r.status === 200
        ? `${path === "purge" ? "purged" : "requeued"} ${r.body.purged ?? r.body.requeued} task(s)`
        : `refused (${r.status}): ${r.body.error || "error"}`;
      note.className = r.status === 200 ? "note ok" : "note bad";
      loadDead();
    }
    async function loadDead() {
      const before = st.before.length ? st.before[st.before.length - 1] : "";
      const r = await api(`/api/queues/${enc(name)}/dead?count=25&before=${enc(before)}`);
      if (r.status !== 200) { deadBox.replaceChildren(h("p", {class: "bad"}, r.body.error || "error")); return; }
      st.cursor = r.body.next;
      const rows = r.body.rows.map((d) => h("tr", {dataset: {dead: d.id}},
        h("td", {class: "mono"}, clock(d.at)), h("td", {}, d.task), h("td", {class: "mono"}, d.task_id),
        h("td", {class: "args"}, d.args), h("td", {dataset: {col: "reason"}}, d.reason),
        h("td", {}, h("details", {}, h("summary", {}, `${d.error_type}: ${d.message}`),
          h("pre", {}, d.traceback || "(no traceback)"))),
        cell("attempts", d.attempts), h("td", {class: "mono"}, d.node),
        h("td", {}, ACTIONS ? h("button", {class: "retry", onclick: () => post("retry", {ids: [d.id]})}, "Retry") : "")));
      const confirm = h("input", {id: "confirm", placeholder: `type "${name}" to confirm`, size: 24});
      const bulk = ACTIONS ? h("div", {class: "bulk"}, confirm,
        h("button", {id: "retry-all", onclick: () => post("retry", {all: true, confirm: confirm.value})}, "Retry all"),
        h("button", {id: "purge", class: "danger", onclick: () => post("purge", {confirm: confirm.value})}, "Purge"))
        : h("p", {class: "muted"}, "Read-only: start the dashboard with --allow-actions to retry or purge.");
      deadBox.replaceChildren(bulk, table(["time", "task", "task id", "arguments", "reason", "error",
        "attempts", "node", ""], rows, "No dead letter."),
        h("div", {class: "pager"},
          st.before.length ? h("button", {onclick: () => { st.before.pop(); loadDead(); }}, "← Newer") : null,
          st.cursor ? h("button", {onclick: () => { st.before.push(st.cursor); loadDead(); }}, "Older →") : null));
    }
    async function loadDelayed() {
      const r = await api(`/api/queues/${enc(name)}/delayed?count=25&offset=${st.offset}`);
      if (r.status !== 200) return;
      const rows = r.body.rows.map((d) => h("tr", {},
        h("td", {class: "mono"}, clock(d.due)), cell("in", age(Math.max(0, d.due - snap.time))),
        h("td", {}, d.task), h("td", {class: "mono"}, d.task_id), h("td", {class: "args"}, d.args),
        cell("attempt", d.attempt)));
      delayedBox.replaceChildren(table(["due", "in", "task", "task id", "arguments", "attempt"], rows,
        "No retry waiting."), h("div", {class: "pager"},
        st.offset ? h("button", {onclick: () => { st.offset = Math.max(0, st.offset - 25); loadDelayed(); }}, "← Sooner") : null,
        st.offset + 25 < r.body.total ? h("button", {onclick: () => { st.offset += 25; loadDelayed(); }}, "Later →") : null));
    }
    function update() {
      const q = snap.queues.find((x) => x.name === name);
      if (!q) { counts.replaceChildren(h("p", {class: "muted"}, "Unknown queue.")); return; }
      counts.replaceChildren(h("dl", {class: "facts"},
        [["queued", q.depth], ["in flight", q.in_flight], ["delayed", q.delayed], ["done", q.counters.done || 0],
         ["failed", q.counters.failed || 0], ["dead", q.dead]].map(([k, v]) =>
          [h("dt", {}, k), h("dd", {dataset: {col: k.replace(" ", "_")}}, num(v))]),
        h("dt", {}, "oldest waiting"), h("dd", {}, age(q.oldest_age))));
      if (q.dead !== st.seenDead) { st.seenDead = q.dead; loadDead(); }
      if (q.delayed !== st.seenDelayed) { st.seenDelayed = q.delayed; loadDelayed(); }
    }
    view.replaceChildren(h("h2", {}, `Queue ${name}`), counts, h("h3", {}, "Dead letters"), note, deadBox,
      h("h3", {}, "Delayed retries"), delayedBox);
    return update;
  }

  function lookupView(kind, id) {
    const box = h("div", {id: "lookup"}, h("p", {class: "muted"}, "Looking…"));
    let final = false, lastAsk = 0;
    async function ask() {
      lastAsk = Date.now();
      const r = await api(`/api/${kind === "task" ? "tasks" : "batches"}/${enc(id)}`);
      if (kind === "batch") {
        if (r.status !== 200) { box.replaceChildren(h("p", {class: "bad"}, r.body.error || "error")); return; }
        const b = r.body, frac = b.total ? (b.done + b.failed) / b.total : 0;
        final = b.pending === 0;
        const bar = document.createElementNS(SVG, "svg");
        bar.setAttribute("viewBox", "0 0 300 14"); bar.setAttribute("class", "bar");
        for (const [x, wd, cls] of [[0, 300, "track"], [0, 300 * frac, "fill"]]) {
          const rect = document.createElementNS(SVG, "rect");
          rect.setAttribute("x", x); rect.setAttribute("width", wd); rect.setAttribute("height", 14);
          rect.setAttribute("class", cls); bar.append(rect);
        }
        box.replaceChildren(bar, h("p", {id: "batch-progress"},
          `${b.done + b.failed} / ${b.total} finished (${b.done} done, ${b.failed} failed) on queue ${b.queue}`));
        return;
      }
      const t = r.body;
      final = ["done", "failed", "dead", "unknown"].includes(t.state);
      box.replaceChildren(h("p", {}, h("span", {id: "task-state", class: `state ${t.state}`}, t.state),
        t.queue ? ` on queue ${t.queue}` : ""), h("pre", {id: "task-detail"}, t.detail || ""),
        t.traceback ? h("pre", {}, t.traceback) : null,
        t.node ? h("p", {}, h("a", {href: `#/node/${enc(t.node)}`}, `node ${t.node}`)) : null);
    }
    view.replaceChildren(h("h2", {}, `${kind === "task" ? "Task" : "Batch"} ${id}`), box);
    ask();
    return () => { if (!final && Date.now() - lastAsk > 2000) ask(); }; // until it settles
  }

  // -- routing and the live stream ----------------------------------------------------

  function route() {
    const [, kind, ...rest] = (location.hash || "#/").slice(1).split("/");
    const arg = decodeURIComponent(rest.join("/"));
    if (kind === "queue") current = {update: queueView(arg)};
    else if (kind === "task" || kind === "batch") current = {update: lookupView(kind, arg)};
    else if (kind === "node") current = {render: () => nodeView(arg)};
    else current = {render: overview};
    if (snap) refresh();
  }
  function refresh() {
    if (current.render) view.replaceChildren(...current.render());
    else current.update();
  }
  document.getElementById("lookup-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = document.getElementById("lookup-id").value.trim();
    if (id) location.hash = `#/${(e.submitter && e.submitter.dataset.kind) || "task"}/${enc(id)}`;
  });
  window.addEventListener("hashchange", route);
  route();
  const events = new EventSource(`${PREFIX}/api/events`);
  events.onmessage = (e) => {
    snap = JSON.parse(e.data);
    statusEl.textContent = snap.error ? `⚠ ${snap.error}` : `live · ${clock(snap.time)}`;
    statusEl.className = snap.error ? "status bad" : "status ok";
    refresh();
  };
  events.onerror = () => { statusEl.textContent = "disconnected, retrying…"; statusEl.className = "status bad"; };
})();
