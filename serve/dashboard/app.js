// The dashboard's shell: hash routes to pages, the login form, the header, session expiry.

import { login, onSessionEnd, endSession, session } from "./api.js";
import { h, alertError, clearAlerts } from "./ui.js";
import { overviewPage, agentsPage } from "./pages_cluster.js";
import { workflowsPage, workflowPage, executionsPage, executionPage } from "./pages_workflows.js";
import { messagesPage, dataPage } from "./pages_data.js";

const ROUTES = [
  [/^\/overview$/, overviewPage, "Overview"],
  [/^\/agents$/, agentsPage, "Agents"],
  [/^\/workflows$/, workflowsPage, "Workflows"],
  [/^\/workflows\/([^/]+)$/, workflowPage, "Workflow"],
  [/^\/executions$/, executionsPage, "Executions"],
  [/^\/executions\/([^/]+)$/, executionPage, "Execution"],
  [/^\/messages$/, messagesPage, "Messages"],
  [/^\/data$/, dataPage, "Data"],
];

const TENANT_KEY = "dafnck.tenant";
const main = document.getElementById("main");
const header = document.querySelector("header.top");
let cleanup = null;
let loginMessage = "";

function loginPage() {
  const field = (label, name, attrs = {}) =>
    h("label", {}, h("span", {}, label), h("input", { name, required: true, ...attrs }));
  const form = h("form", { class: "card login", "aria-label": "Log in" },
    h("h1", {}, "Log in to DafnckMachine"),
    loginMessage ? h("p", { class: "notice", role: "status" }, loginMessage) : null,
    field("Tenant", "tenant", { value: localStorage.getItem(TENANT_KEY) || "default", autocomplete: "organization" }),
    field("Username", "username", { autocomplete: "username" }),
    field("Password", "password", { type: "password", autocomplete: "current-password" }),
    field("One-time code (if your account has TOTP)", "totp", {
      required: false, inputmode: "numeric", autocomplete: "one-time-code", pattern: "[0-9]{6,8}",
    }),
    h("button", { type: "submit", class: "primary" }, "Log in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearAlerts();
    const data = Object.fromEntries(new FormData(form));
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await login(data);
      localStorage.setItem(TENANT_KEY, data.tenant); // not a secret: saves typing it again
      loginMessage = "";
      // Back to the page the session ended on, or the overview.
      const target = location.hash && location.hash !== "#/login" ? location.hash : "#/overview";
      if (location.hash === target) route();
      else location.hash = target;
    } catch (error) {
      alertError(error);
    } finally {
      button.disabled = false;
    }
  });
  main.replaceChildren(form);
  form.querySelector("input[name=username]").focus();
}

async function route() {
  if (cleanup) cleanup();
  cleanup = null;
  const path = location.hash.replace(/^#/, "") || "/overview";
  main.dataset.route = path;
  delete main.dataset.ready;
  const current = session.get();
  if (!current || path === "/login") {
    if (session.expired()) loginMessage = "Your session has expired: log in again.";
    header.hidden = true;
    document.title = "Log in · DafnckMachine";
    loginPage();
    return;
  }
  header.hidden = false;
  document.getElementById("who").textContent = `${current.me.subject} · ${current.me.role} · ${current.me.tenant}`;
  for (const link of header.querySelectorAll("nav a")) {
    link.hidden = !current.me.permissions.includes(link.dataset.needs);
    const active = path.startsWith(link.getAttribute("href").slice(1));
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const match = ROUTES.find(([pattern]) => pattern.test(path));
  if (!match) {
    location.hash = "#/overview";
    return;
  }
  const [pattern, page, title] = match;
  const args = path.match(pattern).slice(1).map(decodeURIComponent);
  document.title = `${title} · DafnckMachine`;
  main.replaceChildren(h("p", { class: "empty" }, "Loading…"));
  try {
    cleanup = (await page(main, ...args)) || null;
    if (!cleanup || !cleanup.polling) main.dataset.ready = "true";
  } catch (error) {
    if (error.status !== 401) {
      main.replaceChildren(h("p", { class: "empty" }, "This page could not load."));
      alertError(error);
    }
  }
}

onSessionEnd((reason) => {
  loginMessage = reason;
  if (location.hash !== "#/login") location.hash = "#/login";
  else route();
});

document.getElementById("logout").addEventListener("click", () => {
  clearAlerts();
  endSession("You are logged out.");
});

// The token's lifetime is short: when it ends, back to the login page.
setInterval(() => {
  if (!header.hidden && !session.get()) endSession("Your session has expired: log in again.");
}, 5000);

window.addEventListener("hashchange", route);
route();
