// Per-step controls of the execution page: send a signal to a step waiting for one, and
// cancel or skip a step that has not ended (POST /v1/executions/{id}/signals/{name},
// .../steps/{step}/cancel|skip). Each answers the execution, which the page redraws.
import { api } from "./api.js";
import { h, actionButton } from "./ui.js";

const LIVE = ["pending", "queued", "running", "waiting_approval"];
const ENDED = ["succeeded", "failed", "cancelled"];

function signalNames(step) {
  const names = step?.wait?.signal;
  return names ? [].concat(names) : [];
}

/** The signal form of a waiting step: its name (one of the step's), and a JSON payload. */
function signalForm(execution, key, names, apply) {
  const id = `signal-${key}`;
  const name = h("select", { id: `${id}-name`, "aria-label": `Signal for ${key}` }, names.map((n) => h("option", { value: n }, n)));
  const payload = h("textarea", { id: `${id}-payload`, rows: 2, placeholder: "payload as JSON (empty: null)", "aria-label": `Payload for ${key}` });
  const send = () => {
    let body = null;
    if (payload.value.trim()) {
      try {
        body = JSON.parse(payload.value);
      } catch (error) {
        throw new Error(`payload: not JSON (${error.message})`);
      }
    }
    return apply(() => api(`/v1/executions/${execution.id}/signals/${encodeURIComponent(name.value)}`,
      { method: "POST", body }));
  };
  return h("span", { class: "inline" }, name, payload,
    actionButton(`Send signal to ${key}`, "executions:control", send, { class: "primary" }));
}

/** Controls for every step that has not ended, or "none" when nothing is left to control. */
export function stepControls(execution, graph, reason, apply) {
  if (ENDED.includes(execution.status)) return h("p", { class: "empty" }, "The execution has ended.");
  const open = graph.steps.filter((s) => LIVE.includes(execution.steps?.[s.id]?.status || "pending"));
  if (!open.length) return h("p", { class: "empty" }, "No step left to control.");
  return h("ul", { class: "step-controls" }, open.map((step) => {
    const key = step.id;
    const end = (verb) => apply(() => api(`/v1/executions/${execution.id}/steps/${encodeURIComponent(key)}/${verb}`,
      { method: "POST", body: { reason: reason.value } }));
    const names = signalNames(step);
    const state = execution.steps?.[key]?.status || "pending";
    return h("li", { "data-step": key }, h("strong", {}, key), ` ${state} `,
      names.length > 0 ? signalForm(execution, key, names, apply) : null,
      h("span", { class: "inline" },
        actionButton(`Cancel ${key}`, "executions:control", () => end("cancel"), { class: "danger" }),
        actionButton(`Skip ${key}`, "executions:control", () => end("skip"))));
  }));
}
