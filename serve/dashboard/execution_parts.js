// Parts of the execution page: its live event socket (resuming after the last event seen),
// the timeline of its steps, a step's inputs and output, one event's line.

import { api, socketUrl, endSession } from "./api.js";
import { h, badge, when, json, table } from "./ui.js";

const TERMINAL = ["succeeded", "failed", "cancelled"];
const MAX_SPANS = 80;
const MAX_TABLES = 50;

/**
 * Follow the execution's events over `WS /v1/ws/executions/{id}`: each frame goes to
 * `onEvent`, then (debounced) `onChange` reloads the record. A dropped socket reconnects with
 * `?cursor=` the last id seen, so no event is missed or repeated; the server closes it (1000)
 * once the execution has ended. `ensure(execution)` reopens it after a retry.
 */
export function liveExecution(execution, { onEvent, onChange }) {
  let socket = null;
  let cursor = null;
  let closed = false;
  let timer = null;
  const changed = () => {
    clearTimeout(timer);
    timer = setTimeout(() => onChange().catch(() => {}), 150);
  };
  const open = () => {
    socket = new WebSocket(socketUrl(`/v1/ws/executions/${encodeURIComponent(execution.id)}`, { cursor }));
    socket.onmessage = (message) => {
      const frame = JSON.parse(message.data);
      cursor = frame.id;
      onEvent(frame);
      changed();
    };
    socket.onclose = (event) => {
      socket = null;
      if (closed) return;
      if (event.code === 4401) endSession("Your session has expired: log in again.");
      else if (event.code === 1000) changed();
      else if (event.code !== 4403 && event.code !== 4404) setTimeout(() => closed || socket || open(), 1000);
    };
  };
  open();
  return {
    ensure(current) {
      if (!closed && !socket && !TERMINAL.includes(current.status)) open();
    },
    close() {
      closed = true;
      clearTimeout(timer);
      if (!socket) return;
      if (socket.readyState === WebSocket.CONNECTING) socket.onopen = () => socket.close();
      else socket.close();
    },
  };
}

function bars(rows) {
  // rows: [{label, start, end, status}] in seconds; drawn relative to the earliest start.
  if (!rows.length) return h("p", { class: "empty" }, "No step has started yet.");
  const t0 = Math.min(...rows.map((r) => r.start));
  const t1 = Math.max(...rows.map((r) => r.end ?? Date.now() / 1000));
  const span = Math.max(t1 - t0, 0.001);
  return h("ul", { class: "timeline" }, rows.map((r) => {
    const end = r.end ?? Date.now() / 1000;
    const left = ((r.start - t0) / span) * 100;
    const width = Math.max(((end - r.start) / span) * 100, 0.5);
    const took = r.end ? `${((r.end - r.start) * 1000).toFixed(0)} ms` : "running";
    return h("li", {},
      h("span", { class: "tl-label", style: r.depth ? `padding-left:${r.depth * 0.6}rem` : null, title: r.label }, r.label),
      h("span", { class: "tl-track" },
        h("span", { class: `tl-bar s-${r.status}`, style: `left:${left}%;width:${width}%`, title: `${r.label}: ${took}` })),
      h("span", { class: "tl-took" }, took));
  }));
}

/** Rows from the execution's trace spans, or (none yet) from its steps' start and end. */
export async function timeline(execution, traced) {
  if (traced) {
    const { spans } = await api(`/v1/executions/${encodeURIComponent(execution.id)}/trace`);
    if (spans && spans.length) {
      const parents = new Map(spans.map((s) => [s.span_id, s.parent_id]));
      const depth = (s) => {
        let d = 0;
        for (let p = s.parent_id; p && parents.has(p) && d < 8; p = parents.get(p)) d += 1;
        return d;
      };
      const rows = [...spans].sort((a, b) => a.start_ms - b.start_ms).slice(0, MAX_SPANS).map((s) => ({
        label: s.name, depth: depth(s), start: s.start_ms / 1000, end: s.end_ms ? s.end_ms / 1000 : null,
        status: String(s.status).toLowerCase() === "error" ? "failed" : "succeeded",
      }));
      const more = spans.length > MAX_SPANS ? ` (the first ${MAX_SPANS} of ${spans.length} spans)` : "";
      return h("div", {}, h("p", { class: "hint" }, `From the execution's trace${more}.`), bars(rows));
    }
  }
  const rows = Object.entries(execution.steps || {})
    .filter(([, st]) => st.started_at)
    .sort(([, a], [, b]) => a.started_at - b.started_at)
    .map(([key, st]) => ({ label: key, start: st.started_at, end: st.finished_at, status: st.status }));
  return h("div", {}, h("p", { class: "hint" }, "From the steps' start and end times."), bars(rows));
}

function field(label, value) {
  return [h("dt", {}, label), h("dd", {}, value)];
}

/** What a step is (uses, needs, its inputs as written) and what it did (state, output). */
export function stepDetails(step, state, execution) {
  const st = state || {};
  const took = st.started_at && st.finished_at ? `${((st.finished_at - st.started_at) * 1000).toFixed(0)} ms` : "—";
  const items = st.items && execution ? st.items.map((k) => h("li", {}, k, " ", badge(execution.steps[k]?.status || "pending"))) : [];
  return h("div", { class: "step-details" },
    h("h3", { tabindex: -1 }, `Step ${step.id}`),
    h("dl", {},
      field("Status", badge(st.status || "pending")),
      field("Uses", h("code", {}, step.uses)),
      field("Needs", step.needs.join(", ") || "—"),
      step.when ? field("When", h("code", {}, step.when)) : [],
      field("Attempts", st.attempts ?? 0),
      field("Started", when(st.started_at)),
      field("Took", took),
      st.child_execution ? field("Runs", h("a", { href: `#/executions/${encodeURIComponent(st.child_execution)}` },
        `execution ${st.child_execution.slice(0, 12)}`)) : [],
      st.approval ? field("Approval", `${st.approval.decision} by ${st.approval.by}${st.approval.reason ? `: ${st.approval.reason}` : ""}`) : []),
    h("h4", {}, "Inputs (as written; the execution's inputs below)"), json(step.with),
    execution ? json(execution.inputs) : null,
    items.length ? [h("h4", {}, "Items"), h("ul", {}, items)] : null,
    h("h4", {}, "Output"), outputView(st.output),
    st.error ? [h("h4", {}, "Error"), h("p", { class: "error-text" }, `${st.error.type}: ${st.error.message}`)] : null);
}

function isSummary(value) {
  const t = value.$table;
  return Object.keys(value).length === 1 && t !== null && typeof t === "object"
    && Number.isInteger(t.rows) && Array.isArray(t.columns);
}

/**
 * The Arrow tables in an output, as the API summarises them (`{"$table": {rows, columns,
 * stored_at}}`, never the data), each with its place in the output: `output.files[3]`.
 */
export function tableSummaries(value, path = "output", found = []) {
  if (found.length >= MAX_TABLES || value === null || typeof value !== "object") return found;
  if (Array.isArray(value)) value.forEach((v, i) => tableSummaries(v, `${path}[${i}]`, found));
  else if (isSummary(value)) found.push({ path, ...value.$table });
  else Object.entries(value).forEach(([k, v]) => tableSummaries(v, `${path}.${k}`, found));
  return found;
}

/** An output (a step's, or the execution's): its Arrow tables listed, then the whole as JSON. */
export function outputView(output, name = "output") {
  if (output === undefined || output === null) return h("p", { class: "empty" }, "—");
  const tables = tableSummaries(output, name);
  const caption = `${tables.length}${tables.length >= MAX_TABLES ? "+" : ""} Arrow table${tables.length === 1 ? "" : "s"} (shown as rows and columns; the data stays in the store)`;
  return h("div", { class: "output" },
    tables.length ? table(["In the output", "Rows", "Columns", "Stored at"], tables.map((t) => [
      h("code", {}, t.path), String(t.rows), t.columns.join(", "), t.stored_at ? h("code", {}, t.stored_at) : "—",
    ]), { caption }) : null,
    json(output));
}

export function eventItem(frame) {
  const e = frame.event;
  const data = e.data && Object.keys(e.data).length ? ` ${JSON.stringify(e.data).slice(0, 160)}` : "";
  return h("li", { "data-type": e.type }, h("time", {}, when(e.at)), " ", h("strong", {}, e.type),
    e.step ? ` ${e.step}` : "", data);
}
