// Small DOM helpers: elements built with textContent (never innerHTML: data is untrusted),
// notices and alerts in aria-live regions, tables that stack on a phone.

import { can } from "./api.js";

/** h("button", {onclick, class: "x"}, "text", child) -> an element. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function notify(message) {
  const region = document.getElementById("notices");
  const note = h("p", { class: "notice" }, message);
  region.append(note);
  setTimeout(() => note.remove(), 4000);
}

/** Show an error (the API's status, type and message) until dismissed. */
export function alertError(error) {
  const region = document.getElementById("alerts");
  const text = error && error.status ? error.toString() : String(error && error.message ? error.message : error);
  const note = h("p", { class: "notice error" }, h("span", {}, text), " ",
    h("button", { type: "button", class: "link", onclick: () => note.remove(), "aria-label": "Dismiss" }, "×"));
  region.append(note);
}

export function clearAlerts() {
  document.getElementById("alerts").replaceChildren();
}

/** A button for an API action: disabled (with a reason) when the role lacks `action`. */
export function actionButton(label, action, onclick, attrs = {}) {
  const allowed = can(action);
  return h("button", {
    type: "button",
    ...attrs,
    "data-action": action,
    disabled: !allowed || attrs.disabled,
    title: allowed ? attrs.title : `your role may not ${action}`,
    onclick: async (event) => {
      const button = event.currentTarget;
      button.setAttribute("aria-busy", "true");
      try {
        await onclick(event);
      } catch (error) {
        alertError(error);
      } finally {
        button.removeAttribute("aria-busy");
      }
    },
  }, label);
}

/** A table whose cells carry their column name, so CSS can stack rows on narrow screens. */
export function table(columns, rows, { caption, empty = "Nothing yet." } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("table", {},
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((cells) =>
      h("tr", {}, cells.map((cell, i) => h("td", { "data-label": columns[i] }, cell))))));
}

export function badge(status) {
  return h("span", { class: `badge s-${status}` }, String(status).replace("_", " "));
}

export function when(epochS) {
  return epochS ? new Date(epochS * 1000).toLocaleTimeString() : "—";
}

export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function section(title, ...children) {
  return h("section", { class: "card", "aria-label": title }, h("h2", {}, title), ...children);
}

export function bytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Run `fn` now and every `ms` until the returned stop() is called; errors are shown once.
 * The page is marked ready (`main[data-ready]`) once the first run has ended. */
export function every(ms, fn) {
  let stopped = false;
  let timer = null;
  let failing = false;
  let first = null; // the first run's promise, once started
  const tick = async () => {
    if (document.hidden && first) {
      timer = setTimeout(tick, ms); // a hidden tab asks nothing of the API
      return;
    }
    try {
      await fn();
      failing = false;
    } catch (error) {
      if (!failing && error.status !== 401) alertError(error);
      failing = true;
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  first = tick().then(() => {
    if (!stopped) document.getElementById("main").dataset.ready = "true";
  });
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
  };
  stop.polling = first;
  return stop;
}
