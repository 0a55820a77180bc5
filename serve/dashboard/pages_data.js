// Messages (an inbox's, topic's or channel's history, paged) and data (objects, paged; backups).

import { api, can } from "./api.js";
import { h, table, section, when, actionButton, notify, alertError } from "./ui.js";

const PAGE = 20;

/** A list with a "Next page" button that follows the API's `next_cursor`. */
function pager(load, renderRows) {
  const body = h("div");
  const next = h("button", { type: "button", hidden: true }, "Next page");
  const show = async (cursor) => {
    const page = await load(cursor);
    body.replaceChildren(renderRows(page));
    next.hidden = !page.next_cursor;
    next.onclick = async () => {
      await show(page.next_cursor).catch(alertError);
    };
  };
  return { node: h("div", {}, body, h("p", {}, next)), show };
}

export async function messagesPage(main) {
  const kind = h("select", { id: "msg-kind", name: "kind" },
    ["topic", "channel", "inbox"].map((k) => h("option", { value: k }, k)));
  const name = h("input", { id: "msg-name", name: "name", required: true, placeholder: "name or id" });
  const newest = h("input", { id: "msg-newest", type: "checkbox", checked: true });
  const { node, show } = pager(
    (cursor) => {
      const params = new URLSearchParams({ target: `${kind.value}:${name.value}`, limit: PAGE, newest_first: newest.checked });
      if (cursor) params.set("cursor", cursor);
      return api(`/v1/messages/history?${params}`);
    },
    (page) => table(["Time", "Sender", "Type", "Payload"],
      page.messages.map((m) => [when(m.created_at), m.sender, m.type, h("code", {}, JSON.stringify(m.payload))]),
      { empty: "No messages." }));
  const form = h("form", { class: "inline wrap", "aria-label": "Message history" },
    h("label", { for: "msg-kind" }, "Stream"), kind,
    h("label", { for: "msg-name" }, "Name"), name,
    h("label", { for: "msg-newest" }, newest, " newest first"),
    h("button", { type: "submit", class: "primary" }, "Show"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    show(null).catch(alertError);
  });
  main.replaceChildren(h("h1", {}, "Messages"), section("History", form, node));
}

function objectsCard() {
  const { node, show } = pager(
    (cursor) => api(`/v1/data?limit=${PAGE}&include_data=false${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`),
    (page) => table(["Object", "Name", "Kind", "Version", "Format", "Tags", "Updated"],
      page.items.map((o) => [h("code", {}, o.id.slice(0, 12)), o.metadata.name, o.metadata.kind, o.version,
        o.format, o.metadata.tags.join(", "), when(o.updated_at)]),
      { empty: "No data objects." }));
  return { card: section("Data objects", node), show };
}

async function backupsCard() {
  const body = h("div");
  const refresh = async () => {
    const { backups } = await api("/v1/backups");
    body.replaceChildren(table(["Backup", "Label", "Created", "Keys", "Checksum"],
      backups.map((b) => [h("code", {}, b.backup_id), b.label || "", when(b.created_at),
        b.counts ? b.counts.keys : 0,
        h("code", {}, String(b.checksum).slice(0, 20))]),
      { empty: "No backups." }));
  };
  if (!can("backups:manage")) {
    body.append(h("p", { class: "empty" }, "Your role may not list or make backups."));
  } else {
    await refresh();
  }
  const create = actionButton("Back up now", "backups:manage", async () => {
    const made = await api("/v1/backups", { method: "POST", body: {} });
    notify(`backup ${made.info ? made.info.backup_id : ""} made`);
    await refresh();
  });
  return section("Backups", h("p", {}, create), body);
}

export async function dataPage(main) {
  const objects = objectsCard();
  await objects.show(null);
  main.replaceChildren(h("h1", {}, "Data"), h("div", { class: "grid wide" }, objects.card, await backupsCard()));
}
