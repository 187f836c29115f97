// Groups: the groups you are in (GET /api/groups, kept fresh by the server's "group" pushes),
// and their dialogs: create (a name and members from your contacts), add members, the member
// list (admins remove members and make admins), leave, and who has a message ("delivered to 5 ·
// read by 3" with the list behind it). Protocol: docs/signalling.md "## Groups".
import { api, ApiError, session } from "./api.js";
import { people } from "./contacts.js";
import { t } from "./i18n.js";
import { socket } from "./socket.js";
import { $, avatar, closeModal, el, openModal } from "./ui.js";

const groups = new Map();     // id -> group object from the server
const listeners = [];
const MAX_MEMBERS = 200;

export const groupStore = {
  groups,
  onChange(fn) { listeners.push(fn); },
  get(id) { return groups.get(id); },
  isAdmin(id) {
    const g = groups.get(id);
    const me = g && g.members.find((m) => m.username === session.username);
    return !!(me && me.role === "admin");
  },
  async load() {
    const data = await api("GET", "/api/groups");
    groups.clear();
    for (const g of data.groups) { groups.set(g.id, g); learnNames(g); }
    changed();
  },
  clear() { groups.clear(); changed(); },
  touch() { changed(); },
};

function learnNames(g) {
  for (const m of g.members || []) people.learn(m.username, m.display_name);
}

function changed() {
  for (const fn of listeners) { try { fn(); } catch (e) { console.error(e); } }
}

socket.on("group", (msg) => {
  if (msg.member === false) groups.delete(msg.group.id);
  else {
    const old = groups.get(msg.group.id) || {};
    groups.set(msg.group.id, { unread: old.unread || 0, last_message: old.last_message || null, ...old, ...msg.group });
    learnNames(msg.group);
  }
  changed();
});

// ---- the dialog: create a group, or add members -----------------------------------------------
let dialogMode = null;   // {kind: "create"} or {kind: "add", id}

function contactChoices(exclude) {
  const list = $("group-dialog-people");
  const names = [...people.contacts.keys()].filter((n) => !exclude.has(n)).sort((a, b) =>
    people.nameOf(a).localeCompare(people.nameOf(b)));
  list.replaceChildren(...names.map((n) => {
    const id = `group-pick-${n}`;
    return el("li", {}, el("input", { type: "checkbox", id, value: n, testid: id }),
      el("label", { for: id }, avatar(people.nameOf(n), n), el("span", { translate: "no", text: people.nameOf(n) })));
  }));
  $("group-dialog-none").hidden = names.length > 0;
}

export function openGroupDialog(kind, id) {
  dialogMode = { kind, id };
  const g = id ? groups.get(id) : null;
  $("group-dialog-title").textContent = t(kind === "create" ? "group_new" : "group_add_members");
  $("group-dialog-name-row").hidden = kind !== "create";
  $("group-dialog-name").value = "";
  $("group-dialog-error").textContent = "";
  $("group-dialog-ok").textContent = t(kind === "create" ? "group_create" : "add");
  contactChoices(new Set(g ? g.members.map((m) => m.username) : []));
  openModal($("group-dialog"), kind === "create" ? $("group-dialog-name") : $("group-dialog-people").querySelector("input") || $("group-dialog-cancel"));
}

function closeGroupDialog() { closeModal($("group-dialog")); dialogMode = null; }

const ERRORS = { not_contact: "err_not_contact", unknown_user: "err_unknown_user", group_full: "group_err_full",
  forbidden: "group_err_forbidden", invalid_message: "group_err_name", network: "err_network", unavailable: "err_unavailable" };

function errorText(e) { return t(ERRORS[e instanceof ApiError ? e.code : ""] || "err_generic"); }

async function submitGroupDialog(ev) {
  ev.preventDefault();
  const picked = [...$("group-dialog-people").querySelectorAll("input:checked")].map((i) => i.value);
  const mode = dialogMode;
  if (!mode) return;
  try {
    if (mode.kind === "create") {
      const name = $("group-dialog-name").value;
      if (!name.trim()) { $("group-dialog-error").textContent = t("group_err_name"); return; }
      if (picked.length + 1 > MAX_MEMBERS) { $("group-dialog-error").textContent = t("group_err_full"); return; }
      const g = await api("POST", "/api/groups", { name, members: picked });
      groups.set(g.id, g);
      learnNames(g);
      closeGroupDialog();
      changed();
      for (const fn of openListeners) fn(g.id);
    } else {
      if (!picked.length) { closeGroupDialog(); return; }
      const g = await api("POST", `/api/groups/${mode.id}/members`, { members: picked });
      groups.set(g.id, { ...groups.get(g.id), ...g });
      closeGroupDialog();
      changed();
    }
  } catch (e) {
    $("group-dialog-error").textContent = errorText(e);
  }
}

const openListeners = [];
export function onGroupCreated(fn) { openListeners.push(fn); }

$("group-dialog-form").addEventListener("submit", submitGroupDialog);
$("group-dialog-cancel").addEventListener("click", closeGroupDialog);
$("group-dialog").addEventListener("keydown", (ev) => { if (ev.key === "Escape") closeGroupDialog(); });
$("group-new").addEventListener("click", () => openGroupDialog("create"));

// ---- members, and who has a message -----------------------------------------------------------
function sheet(title, rows, actions = []) {
  $("sheet-title").textContent = title;
  $("sheet-list").replaceChildren(...rows);
  $("sheet-actions").replaceChildren(...actions);
  openModal($("sheet"), $("sheet-close"));
}

function closeSheet() { closeModal($("sheet")); }
$("sheet-close").addEventListener("click", closeSheet);
$("sheet").addEventListener("keydown", (ev) => { if (ev.key === "Escape") closeSheet(); });

export function showMembers(id) {
  const g = groups.get(id);
  if (!g) return;
  const admin = groupStore.isAdmin(id);
  const rows = g.members.map((m) => {
    const row = el("li", { testid: `member-${m.username}` }, avatar(people.nameOf(m.username), m.username),
      el("span", { className: "member-name", translate: "no", text: people.nameOf(m.username) }));
    if (m.role === "admin") row.append(el("span", { className: "tag", text: t("group_admin") }));
    if (admin && m.username !== session.username) {
      if (m.role !== "admin") {
        row.append(el("button", { type: "button", className: "small", testid: `make-admin-${m.username}`, text: t("group_make_admin"),
          onclick: () => act(() => api("POST", `/api/groups/${id}/admins`, { username: m.username })) }));
      }
      row.append(el("button", { type: "button", className: "small danger-text", testid: `remove-member-${m.username}`,
        text: t("group_remove"), onclick: () => act(() => api("DELETE", `/api/groups/${id}/members/${encodeURIComponent(m.username)}`)) }));
    }
    return row;
  });
  const actions = [];
  if (admin) {
    actions.push(el("button", { type: "button", className: "primary small", testid: "group-add", text: t("group_add_members"),
      onclick: () => { closeSheet(); openGroupDialog("add", id); } }));
  }
  actions.push(el("button", { type: "button", className: "small danger-text", testid: "group-leave", text: t("group_leave"),
    onclick: () => { closeSheet(); leaveGroup(id); } }));
  sheet(`${g.name} · ${t("group_members_n", { n: g.members.length })}`, rows, actions);

  async function act(fn) {
    try {
      const updated = await fn();
      if (updated && updated.id) groups.set(updated.id, { ...groups.get(updated.id), ...updated });
      changed();
      showMembers(id);
    } catch (e) {
      $("sheet-title").textContent = errorText(e);
    }
  }
}

const leaveListeners = [];
export function onGroupLeft(fn) { leaveListeners.push(fn); }

export async function leaveGroup(id) {
  try {
    await api("POST", `/api/groups/${id}/leave`);
  } catch (e) {
    if (!(e instanceof ApiError) || e.code !== "forbidden") throw e;
  }
  groups.delete(id);
  changed();
  for (const fn of leaveListeners) fn(id);
}

export async function showReceipts(id, seq) {
  try {
    const r = await api("GET", `/api/groups/${id}/messages/${seq}/receipts`);
    const row = (p, key) => el("li", { testid: `receipt-${key}-${p.username}` }, avatar(p.display_name, p.username),
      el("span", { className: "member-name", translate: "no", text: p.display_name }),
      el("span", { className: "muted", text: t(`receipt_${key}`) }));
    const readers = new Set(r.read.map((p) => p.username));
    const rows = [...r.read.map((p) => row(p, "read")),
      ...r.delivered.filter((p) => !readers.has(p.username)).map((p) => row(p, "delivered")),
      ...r.waiting.map((p) => row(p, "sent"))];
    sheet(t("group_receipts_title"), rows);
  } catch (e) { /* nothing to show */ }
}

// System lines: membership changes, in the page's language.
export function systemText(ev) {
  const who = (u) => (u ? people.nameOf(u) : "");
  const list = (ev.members || []).map(who).join(t("list_sep"));
  const by = ev.by ? who(ev.by) : "";
  switch (ev.action) {
    case "created": return t("sys_created", { by, name: ev.name || "" });
    case "added": return t("sys_added", { by, who: list });
    case "removed": return t("sys_removed", { by, who: list });
    case "left": return t("sys_left", { who: list });
    case "admin": return by ? t("sys_admin", { by, who: list }) : t("sys_admin_auto", { who: list });
    case "renamed": return t("sys_renamed", { by, name: ev.name || "" });
    default: return "";
  }
}
