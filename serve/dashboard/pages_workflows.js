// Workflows (their graphs, run one) and executions (the list, and one execution drawn on its
// workflow's graph with each step coloured live from the execution's WebSocket).

import { api, session } from "./api.js";
import { h, table, badge, section, when, every, actionButton, notify, alertError } from "./ui.js";
import { drawGraph } from "./graph.js";
import { liveExecution, timeline, stepDetails, eventItem, outputView } from "./execution_parts.js";
import { stepControls } from "./step_controls.js";

const REFRESH_MS = 2000;
const TIMELINE_MS = 1500;
const TERMINAL = ["succeeded", "failed", "cancelled"];
const link = (href, text) => h("a", { href }, text);
const execLink = (id) => link(`#/executions/${encodeURIComponent(id)}`, id.slice(0, 12));

export async function workflowsPage(main) {
  const { workflows } = await api("/v1/workflows");
  main.replaceChildren(h("h1", {}, "Workflows"),
    table(["Workflow", "Latest version", "Versions"],
      workflows.map((w) => [link(`#/workflows/${encodeURIComponent(w.name)}`, w.name), w.latest, w.versions.join(", ")]),
      { empty: "No workflows: define one with `dafnck run FILE` or POST /v1/workflows." }));
}

function defaultInputs(spec) {
  const inputs = {};
  for (const [name, input] of Object.entries(spec.inputs || {})) {
    if (input && input.default !== undefined) inputs[name] = input.default;
  }
  return inputs;
}

export async function workflowPage(main, name) {
  const [graph, definition] = await Promise.all([
    api(`/v1/workflows/${encodeURIComponent(name)}/graph`),
    api(`/v1/workflows/${encodeURIComponent(name)}`),
  ]);
  const details = h("div");
  const { svg, paint } = drawGraph(graph.steps, (id) => {
    paint({}, id);
    details.replaceChildren(stepDetails(graph.steps.find((s) => s.id === id), null));
  });
  paint();
  const inputs = h("textarea", { id: "run-inputs", rows: 4, spellcheck: "false" },
    JSON.stringify(defaultInputs(definition.spec), null, 2));
  const run = actionButton("Run", "executions:control", async () => {
    let parsed;
    try {
      parsed = JSON.parse(inputs.value || "{}");
    } catch (error) {
      throw new Error(`inputs: not JSON (${error.message})`);
    }
    const started = await api("/v1/executions", { method: "POST", body: { workflow: name, inputs: parsed } });
    location.hash = `#/executions/${encodeURIComponent(started.id)}`;
  }, { class: "primary" });
  const recent = h("div");
  main.replaceChildren(
    h("h1", {}, `Workflow ${name}`, h("small", {}, ` version ${graph.version}`)),
    h("div", { class: "grid wide" },
      section("Steps", h("div", { class: "graph-wrap" }, svg), details),
      section("Run", h("label", { for: "run-inputs" }, "Inputs (JSON)"), inputs, h("p", {}, run)),
      section("Recent executions", recent)));
  return every(REFRESH_MS * 2, async () => {
    const { executions } = await api("/v1/executions?limit=200");
    recent.replaceChildren(table(["Execution", "Version", "Status", "Started"],
      executions.filter((e) => e.workflow === name).slice(0, 20)
        .map((e) => [execLink(e.id), e.version, badge(e.status), when(e.created_at)])));
  });
}

const STATUSES = ["", "pending", "running", "paused", "waiting_approval", "succeeded", "failed", "cancelled"];

export async function executionsPage(main) {
  const filter = h("select", { id: "status-filter" }, STATUSES.map((s) => h("option", { value: s }, s || "any")));
  const list = h("div", { "aria-live": "polite" });
  main.replaceChildren(h("h1", {}, "Executions"),
    h("p", { class: "inline" }, h("label", { for: "status-filter" }, "Status"), filter), list);
  const refresh = async () => {
    const query = filter.value ? `&status=${filter.value}` : "";
    const { executions } = await api(`/v1/executions?limit=100${query}`);
    list.replaceChildren(table(["Execution", "Workflow", "Status", "Started", "Updated", "Error"],
      executions.map((e) => [execLink(e.id), `${e.workflow} v${e.version}`, badge(e.status),
        when(e.created_at), when(e.updated_at), e.error ? e.error.message : ""]),
      { empty: "No executions." }));
  };
  filter.addEventListener("change", () => refresh().catch(alertError));
  return every(REFRESH_MS, refresh);
}

// -- one execution -------------------------------------------------------------------------

function controls(execution, reason, apply) {
  const s = execution.status;
  const terminal = ["succeeded", "failed", "cancelled"].includes(s);
  const call = (op, body) => apply(() => api(`/v1/executions/${execution.id}/${op}`, { method: "POST", body }));
  return h("div", { class: "controls", role: "group", "aria-label": "Control the execution" },
    actionButton("Pause", "executions:control", () => call("pause"),
      { disabled: !["running", "waiting_approval"].includes(s) }),
    actionButton("Resume", "executions:control", () => call("resume"), { disabled: s !== "paused" }),
    actionButton("Cancel", "executions:control", () => call("cancel", { reason: reason.value }),
      { disabled: terminal, class: "danger" }),
    actionButton("Retry", "executions:control", () => call("retry"),
      { disabled: !["failed", "cancelled"].includes(s) }));
}

function approvals(execution, graph, reason, apply) {
  const waiting = Object.entries(execution.steps || {}).filter(([, st]) => st.status === "waiting_approval");
  if (!waiting.length) return h("p", { class: "empty" }, "No step waits for approval.");
  return h("ul", { class: "approvals" }, waiting.map(([key]) => {
    const step = graph.steps.find((s) => s.id === key);
    const decide = (verb) => apply(() => api(`/v1/executions/${execution.id}/steps/${encodeURIComponent(key)}/${verb}`,
      { method: "POST", body: { reason: reason.value } }));
    return h("li", { "data-waiting": key }, h("strong", {}, key), " ", step?.approval?.prompt || "",
      h("span", { class: "inline" },
        actionButton(`Approve ${key}`, "executions:approve", () => decide("approve"), { class: "primary" }),
        actionButton(`Reject ${key}`, "executions:approve", () => decide("reject"), { class: "danger" })));
  }));
}

export async function executionPage(main, id) {
  let execution = await api(`/v1/executions/${encodeURIComponent(id)}`);
  const graph = await api(`/v1/workflows/${encodeURIComponent(execution.workflow)}/graph?version=${execution.version}`);
  const features = session.get()?.me.features || {};
  let selected = null;
  const status = h("span", { id: "execution-status", "aria-live": "polite" });
  const reason = h("input", { id: "reason", name: "reason", placeholder: "why (kept in the record)", maxlength: 2000 });
  const controlBox = h("div");
  const approvalBox = h("div", { "aria-live": "polite" });
  const stepBox = h("div", { id: "step-controls" });
  const detailBox = h("div");
  const timelineBox = h("div");
  const outputsBox = h("div", { id: "execution-outputs" });
  const events = h("ol", { class: "events", "aria-live": "polite", "aria-label": "Events" });
  const { svg, paint } = drawGraph(graph.steps, (stepId) => {
    selected = stepId;
    render();
    detailBox.querySelector("h3")?.focus();
  });
  const apply = async (call) => {
    execution = await call();
    notify(`execution ${execution.status.replace("_", " ")}`);
    render();
    live.ensure(execution);
  };
  function render() {
    status.replaceChildren(badge(execution.status));
    status.dataset.status = execution.status;
    paint(execution.steps, selected);
    controlBox.replaceChildren(controls(execution, reason, apply));
    approvalBox.replaceChildren(approvals(execution, graph, reason, apply));
    stepBox.replaceChildren(stepControls(execution, graph, reason, apply));
    outputsBox.replaceChildren(outputView(execution.outputs, "outputs"));
    const step = graph.steps.find((s) => s.id === selected);
    detailBox.replaceChildren(step ? stepDetails(step, execution.steps[step.id], execution)
      : h("p", { class: "empty" }, "Select a step in the graph to see its inputs and output."));
  }
  main.replaceChildren(
    h("h1", {}, "Execution ", h("code", {}, id.slice(0, 12)), " ", status),
    h("p", {}, link(`#/workflows/${encodeURIComponent(execution.workflow)}`, `${execution.workflow} v${execution.version}`),
      ` · started ${when(execution.created_at)}`),
    h("div", { class: "grid wide" },
      section("Steps", h("div", { class: "graph-wrap" }, svg), h("div", { class: "legend", "aria-hidden": "true" },
        ["pending", "queued", "running", "waiting_approval", "succeeded", "failed", "skipped", "cancelled"].map(badge))),
      section("Control", h("label", { for: "reason" }, "Reason"), reason, controlBox, h("h3", {}, "Approvals"), approvalBox,
        h("h3", {}, "Step controls"), stepBox),
      section("Step", detailBox),
      section("Outputs", outputsBox),
      section("Timeline", timelineBox),
      section("Events", events)));
  render();
  const live = liveExecution(execution, {
    onEvent(frame) {
      events.append(eventItem(frame));
      while (events.childElementCount > 300) events.firstElementChild.remove();
    },
    async onChange() {
      execution = await api(`/v1/executions/${encodeURIComponent(id)}`);
      render();
    },
  });
  // Spans reach the trace a second or so after they end: keep drawing it a while after the end.
  let endedTicks = 0;
  const stopTimeline = every(TIMELINE_MS, async () => {
    if (TERMINAL.includes(execution.status) && (endedTicks += 1) > 4) return;
    timelineBox.replaceChildren(await timeline(execution, features.trace));
  });
  return () => {
    live.close();
    stopTimeline();
  };
}
