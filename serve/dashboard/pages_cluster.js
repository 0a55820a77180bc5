// Overview (cluster health, pools, throughput, executions) and Agents (the registry, with
// scale, status and remove), both refreshed every couple of seconds.

import { api, can } from "./api.js";
import { h, table, badge, section, bytes, every, actionButton, notify } from "./ui.js";

const REFRESH_MS = 2000;

/** Tasks per second and mean latency from two readings of the overview's task totals. */
function throughput(previous, current) {
  if (!previous) return { rate: null, latencyMs: null };
  const seconds = current.at - previous.at;
  const done = (t) => t.tasks.completed + t.tasks.failed;
  const tasks = done(current) - done(previous);
  if (seconds <= 0 || tasks < 0) return { rate: null, latencyMs: null };
  const busy = current.tasks.busy_s - previous.tasks.busy_s;
  return { rate: tasks / seconds, latencyMs: tasks > 0 ? (busy / tasks) * 1000 : null };
}

function stat(label, value, id) {
  return h("div", { class: "stat" }, h("span", { class: "stat-label" }, label),
    h("strong", { class: "stat-value", "data-stat": id }, value));
}

function clusterCard(o) {
  const total = o.ray?.resources || {};
  const free = o.ray?.available || {};
  const used = (k) => (total[k] || 0) - (free[k] || 0);
  const parts = Object.entries(o.components || {}).filter(([name]) => name !== "pools");
  return section("Cluster",
    h("p", {}, badge(o.status), o.store_latency_ms === null ? " store unreachable" : ` store ${o.store_latency_ms} ms`),
    parts.length ? h("ul", { class: "components", "aria-label": "Components" },
      parts.map(([name, part]) => h("li", {}, name, " ", badge(part.status)))) : null,
    h("div", { class: "stats" },
      stat("Nodes", o.ray?.nodes ?? "—", "nodes"),
      stat("CPUs in use", `${used("CPU").toFixed(1)} / ${total.CPU ?? 0}`, "cpus"),
      stat("Memory reserved", `${bytes(used("memory"))} / ${bytes(total.memory)}`, "memory"),
      stat("Object store", bytes(total.object_store_memory), "object-store")),
    h("h3", {}, "System actors"),
    table(["Actor", "PID", "Node", "Restarted", "Executions running"],
      Object.entries(o.system || {}).map(([name, a]) =>
        [name, a.pid, String(a.node || "").slice(0, 12), a.restarted ? "yes" : "no", a.executions_running])));
}

function workCard(o, flow) {
  const counts = o.executions?.counts;
  return section("Work",
    h("div", { class: "stats" },
      stat("Tasks / s", flow.rate === null ? "…" : flow.rate.toFixed(1), "rate"),
      stat("Mean latency", flow.latencyMs === null ? "—" : `${flow.latencyMs.toFixed(0)} ms`, "latency"),
      stat("Tasks in flight", o.tasks.in_flight, "in-flight"),
      counts ? [
        stat("Running", counts.running + counts.pending, "running"),
        stat("Waiting for approval", counts.waiting_approval, "waiting"),
        stat("Paused", counts.paused, "paused"),
        stat("Failed", counts.failed, "failed"),
      ] : null),
    counts ? h("p", { class: "hint" }, `Executions counted among the newest ${o.executions.of_recent}.`) : null);
}

function poolsCard(o) {
  return section("Agents and pools",
    table(["Agent", "Status", "Health", "Replicas", "In flight", "Done", "Restarts"],
      Object.entries(o.pools || {}).map(([id, p]) =>
        [id, badge(p.status), badge(o.components?.pools?.[id]?.status || (p.running >= p.desired ? "ok" : "degraded")),
          `${p.running} / ${p.desired}`, p.in_flight, p.completed, p.restarts]),
      { empty: "No agents yet." }));
}

export async function overviewPage(main) {
  const live = h("div", { class: "grid", "aria-live": "polite", "aria-busy": "true" });
  main.replaceChildren(h("h1", {}, "Overview"), live);
  let previous = null;
  let flow = { rate: null, latencyMs: null };
  return every(REFRESH_MS, async () => {
    const o = await api("/v1/overview");
    const next = throughput(previous, o);
    if (next.rate !== null) flow = { rate: next.rate, latencyMs: next.latencyMs ?? flow.latencyMs };
    previous = o;
    live.replaceChildren(clusterCard(o), workCard(o, flow), poolsCard(o));
    live.setAttribute("aria-busy", "false");
  });
}

// -- agents --------------------------------------------------------------------------------

function scaleControl(record, refresh) {
  const { min, max } = record.spec.replicas;
  const input = h("input", { type: "number", min, max, value: record.desired_replicas, class: "narrow",
    "aria-label": `replicas of ${record.spec.name}`, name: "replicas", disabled: !can("agents:write") });
  const button = actionButton("Scale", "agents:write", async () => {
    await api(`/v1/agents/${encodeURIComponent(record.spec.name)}/scale`,
      { method: "POST", body: { replicas: Number(input.value) } });
    notify(`${record.spec.name} scaled to ${input.value}`);
    await refresh();
  });
  return h("span", { class: "inline" }, input, button);
}

function statusControl(record, refresh) {
  const id = `${record.spec.name}@${record.spec.version}`;
  const select = h("select", { "aria-label": `status of ${id}`, disabled: !can("agents:write") },
    ["active", "draining", "disabled"].map((s) => h("option", { value: s, selected: s === record.status }, s)));
  const button = actionButton("Set", "agents:write", async () => {
    await api(`/v1/agents/${encodeURIComponent(id)}/status`, { method: "PUT", body: { status: select.value } });
    notify(`${id} is ${select.value}`);
    await refresh();
  });
  return h("span", { class: "inline" }, select, button);
}

function removeControl(record, refresh) {
  const id = `${record.spec.name}@${record.spec.version}`;
  let armed = false;
  const button = actionButton("Remove", "agents:write", async () => {
    if (!armed) {
      armed = true;
      button.textContent = "Confirm remove";
      setTimeout(() => { armed = false; button.textContent = "Remove"; }, 5000);
      return;
    }
    await api(`/v1/agents/${encodeURIComponent(id)}`, { method: "DELETE" });
    notify(`${id} removed`);
    await refresh();
  }, { class: "danger" });
  return button;
}

function replicasDetails(id, pool) {
  const rows = Object.entries(pool?.replicas || {}).map(([name, r]) =>
    [name, r.error ? `error: ${r.error}` : r.unresponsive ? "unresponsive" : "ok", r.pid ?? "—", r.in_flight ?? 0, r.completed ?? 0, r.failed ?? 0,
      r.uptime_s === undefined ? "—" : `${Math.round(r.uptime_s)} s`]);
  return h("details", { class: "replicas" }, h("summary", {}, `Replica health of ${id}`),
    table(["Replica", "Health", "PID", "In flight", "Done", "Failed", "Up"], rows, { empty: "No replica runs." }));
}

export async function agentsPage(main) {
  const body = h("div", { "aria-live": "polite" });
  main.replaceChildren(h("h1", {}, "Agents"), body);
  const rows = new Map();
  let shape = "";
  const refresh = async () => {
    const [{ agents }, overview] = await Promise.all([api("/v1/agents"), api("/v1/overview")]);
    const pools = overview.pools || {};
    const nextShape = agents.map((a) => `${a.spec.name}@${a.spec.version}:${a.status}:${a.desired_replicas}`).join(",");
    if (nextShape !== shape) {
      shape = nextShape;
      rows.clear();
      const cells = agents.map((record) => {
        const id = `${record.spec.name}@${record.spec.version}`;
        const live = { replicas: h("span"), load: h("span"), restarts: h("span"), health: h("div") };
        rows.set(id, live);
        return [h("strong", {}, id), record.spec.capabilities.join(", "), statusControl(record, refresh),
          live.replicas, live.load, live.restarts, scaleControl(record, refresh), removeControl(record, refresh)];
      });
      const details = agents.map((r) => rows.get(`${r.spec.name}@${r.spec.version}`).health);
      body.replaceChildren(
        table(["Agent", "Capabilities", "Status", "Replicas (running / desired)", "In flight", "Restarts", "Scale", ""],
          cells, { empty: "No agents: apply one with `dafnck agents apply -f FILE` or POST /v1/agents." }),
        ...details);
    }
    for (const record of agents) {
      const id = `${record.spec.name}@${record.spec.version}`;
      const pool = pools[id];
      const live = rows.get(id);
      live.replicas.textContent = `${pool ? pool.running : 0} / ${record.desired_replicas}`;
      live.replicas.dataset.running = pool ? pool.running : 0;
      live.load.textContent = pool ? pool.in_flight : 0;
      live.restarts.textContent = pool ? pool.restarts : 0;
      const open = live.health.querySelector("details")?.open;
      const details = replicasDetails(id, pool);
      details.open = Boolean(open);
      live.health.replaceChildren(details);
    }
  };
  return every(REFRESH_MS, refresh);
}
