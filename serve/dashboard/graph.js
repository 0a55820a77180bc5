// The workflow as an SVG graph: steps in layers (a step one layer right of the last step it
// needs), ordered within a layer by where their parents sit, edges as curves.

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 150;
const NODE_H = 46;
const GAP_X = 60;
const GAP_Y = 22;
const PAD = 12;

/** steps: [{id, needs}] -> {positions: {id: {x, y}}, width, height, vertical}. */
export function layout(steps, vertical = false) {
  const byId = new Map(steps.map((s) => [s.id, s]));
  const depth = new Map();
  const depthOf = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0; // a cycle cannot be defined; stay finite anyway
    seen.add(id);
    const needs = (byId.get(id)?.needs || []).filter((n) => byId.has(n));
    const d = needs.length ? 1 + Math.max(...needs.map((n) => depthOf(n, seen))) : 0;
    depth.set(id, d);
    return d;
  };
  const layers = [];
  for (const step of steps) {
    const d = depthOf(step.id);
    (layers[d] ||= []).push(step.id);
  }
  const row = new Map();
  layers.forEach((ids, d) => {
    if (d > 0) {
      const centre = (id) => {
        const rows = byId.get(id).needs.filter((n) => row.has(n)).map((n) => row.get(n));
        return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : 0;
      };
      ids.sort((a, b) => centre(a) - centre(b));
    }
    ids.forEach((id, i) => row.set(id, i));
  });
  // Layers run left to right, or top to bottom when `vertical` (a phone's narrow screen).
  const across = vertical ? NODE_W + GAP_Y : NODE_H + GAP_Y;
  const along = vertical ? NODE_H + GAP_X / 2 : NODE_W + GAP_X;
  const widest = Math.max(1, ...layers.map((ids) => ids.length));
  const positions = {};
  layers.forEach((ids, d) => {
    const offset = ((widest - ids.length) * across) / 2;
    ids.forEach((id, i) => {
      const [a, b] = [PAD + d * along, PAD + offset + i * across];
      positions[id] = vertical ? { x: b, y: a } : { x: a, y: b };
    });
  });
  const length = PAD * 2 + layers.length * along - (along - (vertical ? NODE_H : NODE_W));
  const breadth = PAD * 2 + widest * across - GAP_Y;
  return vertical
    ? { positions, width: breadth, height: length, vertical }
    : { positions, width: length, height: breadth, vertical };
}

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A curve from the end of step `a` to the start of step `b`. */
function edgePath(a, b, vertical) {
  if (vertical) {
    const [x1, y1, x2, y2] = [a.x + NODE_W / 2, a.y + NODE_H, b.x + NODE_W / 2, b.y];
    const mid = (y1 + y2) / 2;
    return `M${x1},${y1} C${x1},${mid} ${x2},${mid} ${x2},${y2}`;
  }
  const [x1, y1, x2, y2] = [a.x + NODE_W, a.y + NODE_H / 2, b.x, b.y + NODE_H / 2];
  const mid = (x1 + x2) / 2;
  return `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`;
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** Draw the graph; `onSelect(stepId)` on click or Enter. Returns {svg, paint(states)}. */
export function drawGraph(steps, onSelect) {
  const narrow = window.matchMedia("(max-width: 640px)").matches;
  const { positions, width, height, vertical } = layout(steps, narrow && steps.length > 1);
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "graph",
    role: "group",
    "aria-label": "Workflow steps and their dependencies",
    style: `max-width:${width}px`,
  });
  const defs = el("defs");
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(el("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }));
  defs.append(marker);
  svg.append(defs);
  for (const step of steps) {
    for (const need of step.needs) {
      if (!positions[need]) continue;
      const a = positions[need];
      const b = positions[step.id];
      svg.append(el("path", { d: edgePath(a, b, vertical), class: "edge", "marker-end": "url(#arrow)" }));
    }
  }
  const nodes = new Map();
  for (const step of steps) {
    const { x, y } = positions[step.id];
    const group = el("g", { class: "node s-pending", transform: `translate(${x},${y})`, tabindex: 0, role: "button", "data-step": step.id, "data-status": "pending" });
    const title = el("title", {}, step.id);
    group.append(title, el("rect", { width: NODE_W, height: NODE_H, rx: 8 }));
    group.append(el("text", { x: 10, y: 19, class: "label" }, clip(step.id, 18)));
    const sub = `${step.approval ? "gate · " : ""}${step.for_each ? "each · " : ""}${step.uses}`;
    group.append(el("text", { x: 10, y: 36, class: "sub" }, clip(sub, 22)));
    group.setAttribute("aria-label", `step ${step.id}: pending`);
    group.addEventListener("click", () => onSelect(step.id));
    group.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        onSelect(step.id);
      }
    });
    nodes.set(step.id, { group, title });
    svg.append(group);
  }
  const paint = (states = {}, selected = null) => {
    for (const [id, { group, title }] of nodes) {
      const status = states[id]?.status || "pending";
      group.setAttribute("class", `node s-${status}${id === selected ? " selected" : ""}`);
      group.setAttribute("data-status", status);
      group.setAttribute("aria-label", `step ${id}: ${status.replace("_", " ")}`);
      title.textContent = `${id}: ${status}`;
    }
  };
  return { svg, paint };
}
