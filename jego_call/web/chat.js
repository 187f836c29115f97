// Conversations: the list on the left (contacts with presence, last message, unread count and
// time; requests from people who are not contacts yet, with Add and Block), and the open
// conversation on the right (header with name, presence and call buttons; messages with
// delivered/read ticks; a composer with text, voice, photo and file). Protocol:
// docs/signalling.md "## Messaging". Messages not yet acknowledged are resent with the same
// client_id after a reconnect; each message reaches the screen exactly once. Groups are
// conversations too, keyed "group:ID" (docs/signalling.md "## Groups"): system lines for
// membership changes, and receipts per member shown as "delivered to 5 · read by 3".
import { api, ApiError, mediaLink, session, upload } from "./api.js";
import { people } from "./contacts.js";
import { groupStore, onGroupCreated, onGroupLeft, showMembers, showReceipts, systemText } from "./groups.js";
import { fmt, onLangChange, t } from "./i18n.js";
import { socket } from "./socket.js";
import { $, announce, avatar, closeModal, el, fillAvatar, icon, openModal, presenceWord, sizeText } from "./ui.js";

const MAX_VOICE_S = 120;
const chats = new Map();              // peer -> chat record (chatFor)
const pendingReceipts = new Map();    // peer -> {delivered, read}
const callers = new Set();            // non-contacts who called (requests)
const headerListeners = [];
let openPeer = null;
let receiptTimer = null;
let recording = null;                 // {chat, recorder, stream, started, timer}

const me = () => session.username;
const visible = () => document.visibilityState === "visible";
const GROUP = "group:";
export const isGroupKey = (peer) => typeof peer === "string" && peer.startsWith(GROUP);
const groupIdOf = (peer) => peer.slice(GROUP.length);
// The conversation a wire message names: {to}/{with} for a person, {group} for a group.
function target(peer, field) { return isGroupKey(peer) ? { group: groupIdOf(peer) } : { [field]: peer }; }

function newId() {
  const a = new Uint8Array(16);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

function voiceClock(s) {
  const v = Math.round(s || 0);
  return `${Math.floor(v / 60)}:${String(v % 60).padStart(2, "0")}`;
}

// ---- chat records ---------------------------------------------------------------------------
function chatFor(peer) {
  let chat = chats.get(peer);
  if (!chat) {
    chat = {
      peer,
      items: new Map(),      // seq -> {msg, li}
      pending: new Map(),    // client_id -> {msg, li, text, mediaId, failed}
      lastSeq: 0,            // highest seq held (for sync after_seq)
      loaded: false,         // history fetched: include in sync
      hasMore: false,
      deliveredSeq: 0,       // the peer's watermarks for my messages
      readSeq: 0,
      unreadSeqs: new Set(), // incoming seqs not yet read
      myReadSeq: 0,          // what I have reported read
      serverLastSeq: 0,      // last_seq when GET /api/conversations counted `unread`
      extraUnread: 0,        // unread messages the server counted that are not in memory
      unread: 0,
      last: null,            // newest message (for the list's preview and time)
      pane: null,
      marks: new Map(),      // groups: member -> {delivered, read} (their receipt watermarks)
    };
    chats.set(peer, chat);
  }
  return chat;
}

function peerOf(msg) {
  if (msg.group) return GROUP + msg.group;
  return msg.from === me() ? msg.to : msg.from;
}

function noteLast(chat, msg) {
  if (!chat.last || (msg.seq || 0) >= (chat.last.seq || 0)) chat.last = msg;
}

// ---- the conversation list -------------------------------------------------------------------
function preview(msg) {
  if (!msg) return "";
  if (msg.kind === "system") return systemText(msg.event || {});
  if (msg.group && msg.kind === "text") return `${people.nameOf(msg.from)}: ${msg.text || ""}`;
  if (msg.kind === "text") return msg.text || "";
  if (msg.kind === "photo") return t("preview_photo");
  if (msg.kind === "voice") return t("preview_voice");
  return (msg.media && msg.media.filename) || t("preview_file");
}

function isRequest(peer) {
  if (isGroupKey(peer) || people.isContact(peer) || people.isBlocked(peer) || peer === me()) return false;
  const c = chats.get(peer);
  return callers.has(peer) || !!(c && (c.items.size || c.unread || c.pending.size));
}

function entryFor(peer, request) {
  const chat = chats.get(peer);
  const name = people.nameOf(peer);
  const presence = people.presenceOf(peer);
  const unread = chat ? chat.unread : 0;
  const last = chat && chat.last;
  const id = request ? `conversation-${peer}` : `contact-${peer}`;
  const wrap = el("span", { className: "avatar-wrap" }, avatar(name, peer));
  if (!request) wrap.append(el("span", { className: `dot ${presence}` }));
  const top = el("span", { className: "conv-top" }, el("span", { className: "conv-name", translate: "no", text: name }));
  if (last && last.ts) top.append(el("time", { className: "conv-time", datetime: new Date(last.ts * 1000).toISOString(), text: fmt.when(last.ts) }));
  const sub = last ? el("span", { className: "conv-preview", translate: "no", text: preview(last) })
    : el("span", { className: "conv-preview", translate: "no", text: peer });
  const badge = el("span", { className: "unread", testid: `unread-${peer}`, text: String(unread), hidden: unread === 0 });
  const bottom = el("span", { className: "conv-bottom" }, sub, badge);
  const main = el("span", { className: "conv-main" }, top, bottom);
  if (!request) main.append(el("span", { className: "sr-only", testid: `presence-${peer}`, text: presenceWord(presence) }));
  else main.append(el("span", { className: "sr-only", text: t("request_note") }));
  const btn = el("button", {
    type: "button", className: "conv", testid: id, "data-presence": presence,
    "aria-current": peer === openPeer ? "true" : null, onclick: () => openChat(peer),
  }, wrap, main);
  const li = el("li", {}, btn);
  if (request) {
    li.append(el("div", { className: "request-actions" },
      el("button", { type: "button", className: "small primary", testid: `request-add-${peer}`, text: t("add"),
        onclick: () => addBack(peer) }),
      el("button", { type: "button", className: "small", testid: `request-block-${peer}`, text: t("block"),
        onclick: () => blockPeer(peer) })));
  }
  return li;
}

function groupEntry(g) {
  const peer = GROUP + g.id;
  const chat = chats.get(peer);
  const unread = chat ? chat.unread : 0;
  const last = (chat && chat.last) || g.last_message;
  const wrap = el("span", { className: "avatar-wrap" }, avatar(g.name, g.id));
  const top = el("span", { className: "conv-top" }, el("span", { className: "conv-name", translate: "no", text: g.name }));
  if (last && last.ts) top.append(el("time", { className: "conv-time", datetime: new Date(last.ts * 1000).toISOString(), text: fmt.when(last.ts) }));
  const sub = el("span", { className: "conv-preview", translate: last && last.kind !== "system" ? "no" : null,
    text: last ? preview(last) : t("group_members_n", { n: g.members.length }) });
  const badge = el("span", { className: "unread", testid: `unread-group-${g.id}`, text: String(unread), hidden: unread === 0 });
  const main = el("span", { className: "conv-main" }, top, el("span", { className: "conv-bottom" }, sub, badge));
  if (g.call) main.append(el("span", { className: "tag call-tag", testid: `group-call-live-${g.id}`, text: t("group_call_live") }));
  const btn = el("button", { type: "button", className: "conv", testid: `group-${g.id}`,
    "aria-current": peer === openPeer ? "true" : null, onclick: () => openChat(peer) }, wrap, main);
  return el("li", { className: "group-entry" }, btn);
}

function activityOf(peer) {
  const c = chats.get(peer);
  if (c && c.last && c.last.ts) return c.last.ts;
  if (isGroupKey(peer)) {
    const g = groupStore.get(groupIdOf(peer));
    return (g && ((g.last_message && g.last_message.ts) || g.created_at)) || 0;
  }
  return 0;
}

function byActivity(a, b) {
  const ta = activityOf(a);
  const tb = activityOf(b);
  if (ta !== tb) return tb - ta;
  return people.nameOf(a).localeCompare(people.nameOf(b));
}

export function renderList() {
  const focused = document.activeElement && document.activeElement.getAttribute("data-testid");
  const list = $("contacts");
  const names = [...people.contacts.keys(), ...[...groupStore.groups.keys()].map((id) => GROUP + id)].sort(byActivity);
  list.replaceChildren(...names.map((p) => (isGroupKey(p) ? groupEntry(groupStore.get(groupIdOf(p))) : entryFor(p, false))));
  list.classList.toggle("stale", !socket.online);
  const requests = [...new Set([...chats.keys(), ...callers])].filter(isRequest).sort(byActivity);
  $("contacts-empty").hidden = names.length > 0 || requests.length > 0;
  $("chat-others").replaceChildren(...requests.map((p) => entryFor(p, true)));
  $("requests").hidden = requests.length === 0;
  const total = [...chats.values()].filter((c) => !people.isBlocked(c.peer) && (!isGroupKey(c.peer)
    || groupStore.get(groupIdOf(c.peer)))).reduce((n, c) => n + c.unread, 0);
  const badge = $("tab-chats-badge");
  badge.textContent = String(total);
  badge.hidden = total === 0;
  if (focused && !document.activeElement.getAttribute("data-testid")) {
    const again = document.querySelector(`[data-testid="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
  renderHeader();
}

// ---- the open conversation's header ----------------------------------------------------------
export function currentPeer() { return openPeer; }

export function onHeader(fn) { headerListeners.push(fn); }

function renderHeader() {
  const peer = openPeer;
  $("chat-header").hidden = !peer;
  $("chat-empty").hidden = !!peer;
  if (!peer) { $("chat-request").hidden = true; $("group-call-bar").hidden = true; return; }
  const group = isGroupKey(peer) ? groupStore.get(groupIdOf(peer)) : null;
  document.body.classList.toggle("group-open", isGroupKey(peer));
  if (isGroupKey(peer)) { renderGroupHeader(peer, group); return; }
  $("group-call-bar").hidden = true;
  const name = people.nameOf(peer);
  $("selected").textContent = name;
  $("chat-username").textContent = peer;
  fillAvatar($("chat-avatar"), name, peer);
  const contact = people.isContact(peer);
  const presence = people.presenceOf(peer);
  $("chat-presence").textContent = contact ? presenceWord(presence) : t("not_a_contact");
  $("chat-presence").dataset.presence = presence;
  $("chat-header").classList.toggle("stale", !socket.online);
  $("contact-remove").hidden = !contact;
  $("contact-add-back").hidden = contact;
  const request = !contact && !people.isBlocked(peer);
  $("chat-request").hidden = !request;
  if (request) $("chat-request-text").textContent = t("request_text", { name });
  for (const fn of headerListeners) fn(peer);
}

function renderGroupHeader(peer, g) {
  const name = g ? g.name : t("group_gone");
  $("selected").textContent = name;
  $("chat-username").textContent = g ? t("group_members_n", { n: g.members.length }) : "";
  fillAvatar($("chat-avatar"), name, groupIdOf(peer));
  const names = g ? g.members.map((m) => (m.username === me() ? t("you") : people.nameOf(m.username))) : [];
  $("chat-presence").textContent = names.slice(0, 6).join(t("list_sep")) + (names.length > 6 ? t("list_more") : "");
  $("chat-presence").dataset.presence = "group";
  $("chat-header").classList.toggle("stale", !socket.online);
  $("chat-request").hidden = true;
  const call = g && g.call;
  $("group-call-bar").hidden = !call;
  if (call) $("group-call-bar-text").textContent = t("group_call_running", { n: (call.in_call || []).length });
  for (const fn of headerListeners) fn(peer);
}

// ---- panes --------------------------------------------------------------------------------------
function paneFor(chat) {
  if (chat.pane) return chat.pane;
  const list = el("ol", { className: "message-list", testid: "message-list" });
  const older = el("button", { type: "button", className: "older small", testid: "load-older", text: t("older"), hidden: true });
  const inputId = `msg-${newId()}`;
  const input = el("input", { id: inputId, testid: "message-input", autocomplete: "off", maxlength: "4000",
    placeholder: t("message_placeholder"), enterkeyhint: "send" });
  const sendBtn = el("button", { type: "submit", className: "icon-btn send", testid: "message-send", "aria-label": t("send") }, icon("send"));
  const voice = el("button", { type: "button", className: "icon-btn", testid: "voice-record", "aria-pressed": "false",
    "aria-label": t("record_voice") }, icon("mic"), el("span", { className: "rec-time", hidden: true }));
  const photo = el("input", { type: "file", accept: "image/*", className: "file-hidden", testid: "photo-input" });
  const file = el("input", { type: "file", className: "file-hidden", testid: "file-input" });
  const photoLabel = el("label", { className: "icon-btn attach", title: t("send_photo") }, icon("image"),
    el("span", { className: "sr-only", text: t("send_photo") }), photo);
  const fileLabel = el("label", { className: "icon-btn attach", title: t("send_file") }, icon("clip"),
    el("span", { className: "sr-only", text: t("send_file") }), file);
  const inputLabel = el("label", { className: "sr-only", for: inputId, text: t("message_label") });
  const form = el("form", { className: "composer" }, voice, photoLabel, fileLabel, inputLabel, input, sendBtn);
  const error = el("div", { className: "chat-error", testid: "chat-error", role: "alert" });
  const scroller = el("div", { className: "message-scroll", tabindex: "0", role: "log", "aria-live": "off",
    "aria-label": t("messages_label") }, older, list);
  const root = el("section", { className: "chat", testid: `chat-${chat.peer}`, "data-peer": chat.peer, hidden: true,
    "aria-label": t("chat_with", { name: chatName(chat.peer) }) }, scroller, error, form);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value;
    if (!text.trim()) { showError(chat, t("type_first")); return; }
    input.value = "";
    sendText(chat, text);
  });
  voice.addEventListener("click", () => toggleRecording(chat));
  for (const inp of [photo, file]) {
    inp.addEventListener("change", () => {
      const f = inp.files && inp.files[0];
      inp.value = "";
      if (f) sendMedia(chat, f, null, f.name);
    });
  }
  older.addEventListener("click", () => loadHistory(chat, true));
  $("chat-pane").append(root);
  chat.pane = { root, list, scroller, older, input, voice, error };
  for (const item of [...chat.items.values()].sort((a, b) => a.msg.seq - b.msg.seq)) place(chat, item);
  for (const p of chat.pending.values()) list.append(p.li);
  return chat.pane;
}

function chatName(peer) {
  if (!isGroupKey(peer)) return people.nameOf(peer);
  const g = groupStore.get(groupIdOf(peer));
  return g ? g.name : t("group_gone");
}

function showError(chat, text) {
  paneFor(chat).error.textContent = text || "";
}

export async function openChat(peer) {
  if (!peer) return;
  openPeer = peer;
  const chat = chatFor(peer);
  const pane = paneFor(chat);
  for (const c of chats.values()) if (c.pane) c.pane.root.hidden = c !== chat;
  document.body.classList.add("show-conversation");
  renderList();
  if (!isGroupKey(peer) && !people.isContact(peer) && !people.isBlocked(peer)) people.lookup(peer);
  if (!chat.loaded) await loadHistory(chat, false);
  markRead(chat);
  pane.scroller.scrollTop = pane.scroller.scrollHeight;
  if (openPeer === peer && !document.querySelector("[aria-modal='true']:not([hidden])")) pane.input.focus({ preventScroll: true });
}

export function closeChat() {
  document.body.classList.remove("show-conversation");
  const peer = openPeer;
  if (peer) {
    const again = document.querySelector(`[data-testid="contact-${CSS.escape(peer)}"], [data-testid="conversation-${CSS.escape(peer)}"]`);
    if (again) again.focus();
  }
}

async function loadHistory(chat, older) {
  const first = Math.min(...[...chat.items.keys()], Infinity);
  const q = older && first !== Infinity ? `?before_seq=${first}` : "";
  const path = isGroupKey(chat.peer) ? `/api/groups/${groupIdOf(chat.peer)}/messages`
    : `/api/conversations/${encodeURIComponent(chat.peer)}/messages`;
  try {
    const page = await api("GET", `${path}${q}`);
    for (const m of page.messages) addMessage(m, { history: true });
    applyWatermarks(chat, page.delivered_seq, page.read_seq);
    chat.hasMore = page.has_more;
    chat.loaded = true;
    paneFor(chat).older.hidden = !chat.hasMore;
  } catch (e) {
    showError(chat, t("err_load_messages"));
  }
}

// ---- rendering -------------------------------------------------------------------------------------
// A group message of mine: how many of the members who could see it have it, and have read it.
function groupCounts(chat, msg) {
  const g = groupStore.get(groupIdOf(chat.peer));
  let delivered = 0;
  let read = 0;
  let others = 0;
  for (const m of (g && g.members) || []) {
    if (m.username === me() || m.joined_seq > msg.seq) continue;
    others += 1;
    const mark = chat.marks.get(m.username) || { delivered: m.delivered_seq || 0, read: m.read_seq || 0 };
    if (Math.max(mark.delivered, mark.read) >= msg.seq) delivered += 1;
    if (mark.read >= msg.seq) read += 1;
  }
  return { delivered, read, others };
}

function receiptState(chat, msg) {
  if (isGroupKey(chat.peer)) {
    const c = groupCounts(chat, msg);
    if (c.others && c.read === c.others) return "read";
    if (c.others && c.delivered === c.others) return "delivered";
    return "sent";
  }
  if (msg.seq <= chat.readSeq || msg.state === "read") return "read";
  if (msg.seq <= chat.deliveredSeq || msg.state === "delivered") return "delivered";
  return "sent";
}

// Media need a signed link first: the element appears once its source is known.
function body(msg) {
  const m = msg.media;
  if (msg.kind === "text") return el("span", { className: "text", translate: "no", text: msg.text || "" });
  const holder = el("span", { className: msg.kind });
  const duration = msg.kind === "voice" ? el("span", { className: "duration", text: voiceClock(m.duration_s) }) : null;
  if (duration) holder.append(duration);
  mediaLink(m.id).then((link) => {
    if (msg.kind === "photo") {
      const img = el("img", { testid: "photo-thumb", alt: m.filename || t("preview_photo"), src: link.thumbnail_url || link.url,
        loading: "lazy", translate: m.filename ? "no" : null });
      img.addEventListener("error", () => refresh(img, m.id, link.thumbnail_url ? "thumbnail_url" : "url"), { once: true });
      const open = el("button", { type: "button", className: "photo-open", "aria-label": t("open_photo") }, img);
      open.addEventListener("click", () => showPhoto(m));
      holder.append(open);
    } else if (msg.kind === "voice") {
      const audio = el("audio", { testid: "voice-audio", controls: true, preload: "metadata", src: link.url,
        "aria-label": t("preview_voice") });
      audio.addEventListener("error", () => refresh(audio, m.id, "url"), { once: true });
      holder.insertBefore(audio, duration);
    } else {
      const name = m.filename || t("preview_file");
      holder.append(el("a", { testid: "file-link", href: link.url, download: name, className: "file-link" },
        icon("clip"), el("span", { translate: "no", text: `${name} (${sizeText(m.size)})` })));
    }
  }).catch(() => holder.append(el("span", { className: "muted", text: t("err_media") })));
  return holder;
}

// A signed link expired (a tab left open): fetch a fresh one and retry once.
function refresh(node, id, field) {
  mediaLink(id, true).then((link) => { if (link[field]) node.src = link[field]; }).catch(() => {});
}

function groupReceiptText(chat, msg) {
  const c = groupCounts(chat, msg);
  return t("group_receipts", { delivered: c.delivered, read: c.read });
}

function itemFor(chat, msg, pendingKey) {
  if (msg.kind === "system") {
    return el("li", { testid: "system-line", className: "system", "data-kind": "system", "data-seq": msg.seq || null },
      el("span", { text: systemText(msg.event || {}) }));
  }
  const out = msg.from === me();
  const li = el("li", {
    testid: "message-item", className: out ? "out" : "in", "data-kind": msg.kind || "text",
    "data-seq": msg.seq || null, "data-client-id": msg.client_id,
  });
  const meta = el("span", { className: "meta" });
  const when = msg.ts || Date.now() / 1000;
  meta.append(el("time", { datetime: new Date(when * 1000).toISOString(), text: fmt.stamp(when) }));
  if (out && msg.seq) {
    const state = receiptState(chat, msg);
    meta.append(el("span", { testid: "receipt", className: `receipt ${state}`, "data-state": state },
      el("span", { className: "sr-only", text: t(`receipt_${state}`) })));
    if (msg.group) {
      meta.append(el("button", { type: "button", className: "link group-receipts", testid: "group-receipts",
        text: groupReceiptText(chat, msg), onclick: () => showReceipts(msg.group, msg.seq) }));
    }
  } else if (out) {
    meta.append(el("span", { className: "pending", "data-key": pendingKey || "sending", text: t(pendingKey || "sending") }));
  }
  const content = msg.seq || msg.kind === "text" ? body(msg) : el("span", { className: "text muted", translate: "no", text: msg.label || "" });
  const bubble = el("div", { className: "bubble" }, content, meta);
  if (msg.group && !out) bubble.prepend(el("span", { className: "sender", translate: "no", text: people.nameOf(msg.from) }));
  li.append(bubble);
  return li;
}

function place(chat, item) {
  const pane = chat.pane;
  if (!pane) return;
  let before = null;
  for (const li of pane.list.children) {
    const s = Number(li.dataset.seq || Infinity);
    if (s > item.msg.seq) { before = li; break; }
  }
  const atBottom = pane.scroller.scrollHeight - pane.scroller.scrollTop - pane.scroller.clientHeight < 80;
  pane.list.insertBefore(item.li, before);
  if (openPeer === chat.peer && (atBottom || item.msg.from === me())) pane.scroller.scrollTop = pane.scroller.scrollHeight;
}

function refreshReceipts(chat) {
  for (const item of chat.items.values()) {
    if (item.msg.from !== me()) continue;
    const r = item.li.querySelector("[data-testid=receipt]");
    if (!r) continue;
    const state = receiptState(chat, item.msg);
    if (r.dataset.state !== state) {
      r.dataset.state = state;
      r.className = `receipt ${state}`;
      r.firstChild.textContent = t(`receipt_${state}`);
    }
    const counts = item.li.querySelector("[data-testid=group-receipts]");
    if (counts) counts.textContent = groupReceiptText(chat, item.msg);
  }
}

function applyWatermarks(chat, delivered, read) {
  chat.deliveredSeq = Math.max(chat.deliveredSeq, delivered || 0, read || 0);
  chat.readSeq = Math.max(chat.readSeq, read || 0);
  refreshReceipts(chat);
}

function showPhoto(media) {
  const v = $("photo-viewer");
  v.replaceChildren();
  mediaLink(media.id).then((link) => {
    const close = el("button", { type: "button", className: "icon-btn viewer-close", testid: "photo-close",
      "aria-label": t("close") }, icon("close"));
    v.append(el("img", { testid: "photo-full", src: link.url, alt: media.filename || t("preview_photo"),
      translate: media.filename ? "no" : null }), close);
    openModal(v, close);
  });
}

function closePhoto() {
  const v = $("photo-viewer");
  closeModal(v);
  v.replaceChildren();
}
$("photo-viewer").addEventListener("click", closePhoto);
$("photo-viewer").addEventListener("keydown", (ev) => { if (ev.key === "Escape") closePhoto(); });

// ---- unread counts and read receipts --------------------------------------------------------------
function markRead(chat) {
  if (openPeer !== chat.peer || !visible()) return;
  const before = chat.unread;
  const maxIn = Math.max(0, ...[...chat.items.values()].filter((i) => i.msg.from !== me()).map((i) => i.msg.seq));
  if (maxIn > chat.myReadSeq) queueReceipt(chat.peer, "read", maxIn);
  chat.myReadSeq = Math.max(chat.myReadSeq, maxIn);
  chat.unreadSeqs.clear();
  chat.extraUnread = 0;
  chat.unread = 0;
  if (before) renderList();
}

document.addEventListener("visibilitychange", () => { if (openPeer) markRead(chatFor(openPeer)); });

function queueReceipt(peer, state, seq) {
  const cur = pendingReceipts.get(peer) || { delivered: 0, read: 0 };
  cur[state] = Math.max(cur[state], seq);
  pendingReceipts.set(peer, cur);
  if (!receiptTimer) receiptTimer = setTimeout(flushReceipts, 50);
}

function flushReceipts() {
  clearTimeout(receiptTimer);
  receiptTimer = null;
  for (const [peer, r] of pendingReceipts) {
    if (r.read) socket.send({ type: "receipt", ...target(peer, "with"), state: "read", up_to_seq: r.read });
    if (r.delivered > r.read) socket.send({ type: "receipt", ...target(peer, "with"), state: "delivered", up_to_seq: r.delivered });
  }
  pendingReceipts.clear();
}

// ---- incoming --------------------------------------------------------------------------------------
function addMessage(msg, { history = false } = {}) {
  const chat = chatFor(peerOf(msg));
  let item = chat.items.get(msg.seq);
  if (item) return chat;  // seen already (sync after a reconnect): exactly once on screen
  const pend = msg.from === me() ? chat.pending.get(msg.client_id) : null;
  if (pend) {
    chat.pending.delete(msg.client_id);
    pend.li.remove();
  }
  item = { msg, li: itemFor(chat, msg) };
  chat.items.set(msg.seq, item);
  chat.lastSeq = Math.max(chat.lastSeq, msg.seq);
  noteLast(chat, msg);
  if (msg.from !== me()) {
    if (!history) queueReceipt(chat.peer, "delivered", msg.seq);
    if (msg.kind !== "system" && msg.state !== "read" && msg.seq > chat.myReadSeq && !chat.unreadSeqs.has(msg.seq)) {
      chat.unreadSeqs.add(msg.seq);
      if (msg.seq <= chat.serverLastSeq && chat.extraUnread > 0) chat.extraUnread -= 1;
    }
    chat.unread = chat.unreadSeqs.size + chat.extraUnread;
    const group = isGroupKey(chat.peer);
    if (!history && !group && !people.isContact(chat.peer)) people.lookup(chat.peer).then(() => renderList());
    if (!history && (group || !people.isBlocked(chat.peer))) {
      announce(t("new_message_from", { name: group ? chatName(chat.peer) : people.nameOf(chat.peer) }), "sr-messages");
    }
  }
  if (chat.pane) place(chat, item);
  if (openPeer === chat.peer) markRead(chat);
  renderList();
  return chat;
}

async function loadConversations() {
  try {
    const data = await api("GET", "/api/conversations");
    for (const c of data.conversations) {
      const chat = chatFor(c.with);
      if (c.display_name) people.learn(c.with, c.display_name);
      const known = [...chat.unreadSeqs].filter((s) => s <= c.last_seq).length;
      chat.extraUnread = Math.max(0, c.unread - known);
      chat.serverLastSeq = c.last_seq;
      chat.unread = chat.unreadSeqs.size + chat.extraUnread;
      if (c.last_message) noteLast(chat, c.last_message);
      applyWatermarks(chat, c.delivered_seq, c.read_seq);
      if (openPeer === chat.peer) markRead(chat);
    }
    await groupStore.load();
    for (const g of groupStore.groups.values()) {
      const chat = chatFor(GROUP + g.id);
      const known = [...chat.unreadSeqs].filter((s) => s <= g.last_seq).length;
      chat.extraUnread = Math.max(0, (g.unread || 0) - known);
      chat.serverLastSeq = g.last_seq;
      chat.unread = chat.unreadSeqs.size + chat.extraUnread;
      if (g.last_message) noteLast(chat, g.last_message);
      for (const m of g.members) chat.marks.set(m.username, { delivered: m.delivered_seq, read: m.read_seq });
    }
    renderList();
  } catch (e) { /* the chat still works; counts come with the messages */ }
}

function sync() {
  const conversations = [...chats.values()].filter((c) => c.loaded).map((c) => ({ ...target(c.peer, "with"), after_seq: c.lastSeq }));
  socket.send({ type: "sync", conversations });
}

function resendPending() {
  for (const chat of chats.values()) {
    for (const [clientId, p] of chat.pending) {
      if (p.failed || (p.text === undefined && !p.mediaId)) continue;
      transmit(chat.peer, clientId, p);
    }
  }
}

socket.on("auth_ok", async () => {
  await loadConversations();
  sync();
  resendPending();
});
socket.on("message", (msg) => addMessage(msg.message));
socket.on("message_ack", (msg) => addMessage(msg.message));
socket.on("receipt", (msg) => {
  if (msg.group) {
    const chat = chatFor(GROUP + msg.group);
    const mark = chat.marks.get(msg.by) || { delivered: 0, read: 0 };
    mark[msg.state] = Math.max(mark[msg.state], msg.up_to_seq);
    if (msg.state === "read") mark.delivered = Math.max(mark.delivered, msg.up_to_seq);
    chat.marks.set(msg.by, mark);
    if (msg.by === me() && msg.state === "read") {
      chat.myReadSeq = Math.max(chat.myReadSeq, msg.up_to_seq);
      for (const s of [...chat.unreadSeqs]) if (s <= msg.up_to_seq) chat.unreadSeqs.delete(s);
      chat.extraUnread = 0;
      chat.unread = chat.unreadSeqs.size;
      renderList();
    }
    refreshReceipts(chat);
    return;
  }
  const chat = chatFor(msg.with);
  if (msg.by === me()) {  // another device of mine read or received them
    if (msg.state === "read") {
      chat.myReadSeq = Math.max(chat.myReadSeq, msg.up_to_seq);
      for (const s of [...chat.unreadSeqs]) if (s <= msg.up_to_seq) chat.unreadSeqs.delete(s);
      chat.extraUnread = 0;
      chat.unread = chat.unreadSeqs.size;
      renderList();
    }
  } else if (msg.state === "read") applyWatermarks(chat, 0, msg.up_to_seq);
  else applyWatermarks(chat, msg.up_to_seq, 0);
});
socket.on("sync_done", (msg) => { if (msg.more) { flushReceipts(); sync(); } });
socket.on("error", (msg) => failPending(msg));
people.onChange(() => renderList());
groupStore.onChange(() => renderList());
onGroupCreated((id) => openChat(GROUP + id));
onGroupLeft((id) => {
  const peer = GROUP + id;
  if (openPeer === peer) { openPeer = null; for (const c of chats.values()) if (c.pane) c.pane.root.hidden = true; closeChat(); }
  chats.delete(peer);
  renderList();
});
onLangChange(() => {
  for (const c of chats.values()) {
    if (!c.pane) continue;
    c.pane.input.placeholder = t("message_placeholder");
    c.pane.older.textContent = t("older");
    c.pane.root.setAttribute("aria-label", t("chat_with", { name: chatName(c.peer) }));
    for (const item of [...c.items.values(), ...c.pending.values()]) {
      const time = item.li.querySelector("time");
      if (time && item.msg.ts) time.textContent = fmt.stamp(item.msg.ts);
      const pend = item.li.querySelector(".pending");
      if (pend) pend.textContent = t(pend.dataset.key);
    }
    refreshReceiptsText(c);
  }
  renderList();
});

function refreshReceiptsText(chat) {
  for (const r of chat.pane.list.querySelectorAll("[data-testid=receipt]")) r.firstChild.textContent = t(`receipt_${r.dataset.state}`);
}

// A call from someone who is not a contact makes a request too (calls.js / history.js tell us).
export function noteCaller(peer) {
  if (!peer || people.isContact(peer) || people.isBlocked(peer)) return;
  if (callers.has(peer)) return;
  callers.add(peer);
  people.lookup(peer).then(() => renderList());
  renderList();
}

// ---- sending ------------------------------------------------------------------------------------------
function addPending(chat, clientId, fields) {
  const msg = { client_id: clientId, from: me(), to: chat.peer, kind: fields.kind || "text", text: fields.text, label: fields.label };
  if (isGroupKey(chat.peer)) { delete msg.to; msg.group = groupIdOf(chat.peer); }
  const li = itemFor(chat, msg, fields.label ? "uploading" : "sending");
  li.dataset.pending = "true";
  const p = { msg, li, text: fields.text, mediaId: null, failed: false };
  chat.pending.set(clientId, p);
  paneFor(chat);
  chat.pane.list.append(li);
  chat.pane.scroller.scrollTop = chat.pane.scroller.scrollHeight;
  showError(chat, "");
  return p;
}

function transmit(peer, clientId, p) {
  const msg = { type: "send_message", id: clientId, client_id: clientId, ...target(peer, "to") };
  if (p.mediaId) msg.media_id = p.mediaId; else msg.text = p.text;
  socket.send(msg);  // not open: resent on the next auth_ok with the same client_id
}

function sendText(chat, text) {
  const clientId = newId();
  const p = addPending(chat, clientId, { text });
  transmit(chat.peer, clientId, p);
}

function fail(chat, clientId, text) {
  const p = chat.pending.get(clientId);
  if (!p) return;
  p.failed = true;
  p.li.classList.add("failed");
  const pend = p.li.querySelector(".pending");
  if (pend) { pend.dataset.key = "not_sent"; pend.textContent = t("not_sent"); }
  showError(chat, text);
}

const SEND_ERRORS = { unavailable: "err_unavailable", not_contact: "err_not_contact", too_large: "err_too_large",
  forbidden: "group_err_not_member",
  unsupported_media: "err_unsupported", network: "err_network", unknown_user: "err_unknown_user" };

function failPending(err) {
  if (!err.ref) return;
  for (const chat of chats.values()) {
    if (chat.pending.has(err.ref)) fail(chat, err.ref, t(SEND_ERRORS[err.code] || "err_not_sent"));
  }
}

async function sendMedia(chat, blob, kind, filename) {
  const clientId = newId();
  const label = kind === "voice" ? t("preview_voice") : `${filename || t("preview_file")} (${sizeText(blob.size)})`;
  const p = addPending(chat, clientId, { kind: kind || "file", label });
  try {
    const data = await upload(blob, kind, filename);
    p.mediaId = data.id;
  } catch (e) {
    fail(chat, clientId, t(SEND_ERRORS[e.code] || "err_upload"));
    return;
  }
  transmit(chat.peer, clientId, p);
}

// ---- voice messages ----------------------------------------------------------------------------------
function recordButton(chat, on, seconds) {
  const b = paneFor(chat).voice;
  b.setAttribute("aria-pressed", String(on));
  b.setAttribute("aria-label", on ? t("stop_recording") : t("record_voice"));
  const label = b.querySelector(".rec-time");
  label.hidden = !on;
  label.textContent = on ? voiceClock(seconds) : "";
  b.classList.toggle("recording", on);
}

async function toggleRecording(chat) {
  if (recording) { stopRecording(); return; }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    showError(chat, t("err_microphone"));
    return;
  }
  const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm"].find((x) => MediaRecorder.isTypeSupported(x));
  const recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
  const chunks = [];
  const rec = { chat, recorder, stream, started: Date.now(), timer: null };
  recording = rec;
  recorder.ondataavailable = (ev) => { if (ev.data && ev.data.size) chunks.push(ev.data); };
  recorder.onstop = () => {
    clearInterval(rec.timer);
    for (const tr of stream.getTracks()) tr.stop();
    recording = null;
    recordButton(chat, false, 0);
    const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
    if (blob.size) sendMedia(chat, blob, "voice", recorder.mimeType.includes("ogg") ? "voice.ogg" : "voice.webm");
  };
  recorder.start(250);
  recordButton(chat, true, 0);
  rec.timer = setInterval(() => {
    const s = (Date.now() - rec.started) / 1000;
    recordButton(chat, true, s);
    if (s >= MAX_VOICE_S - 0.5) stopRecording();
  }, 250);
}

function stopRecording() {
  if (recording && recording.recorder.state !== "inactive") recording.recorder.stop();
}

// ---- contacts from the header and from requests --------------------------------------------------------
async function addBack(peer) {
  try {
    await people.add(peer);
    callers.delete(peer);
    announce(t("added", { name: people.nameOf(peer) }));
  } catch (e) {
    chatError(peer, e);
  }
}

async function blockPeer(peer) {
  try {
    await people.block(peer);
    callers.delete(peer);
    announce(t("blocked_done", { name: people.nameOf(peer) }));
    if (openPeer === peer) { openPeer = null; for (const c of chats.values()) if (c.pane) c.pane.root.hidden = true; closeChat(); }
    renderList();
  } catch (e) {
    chatError(peer, e);
  }
}

async function removePeer(peer) {
  try {
    await people.remove(peer);
  } catch (e) {
    chatError(peer, e);
  }
}

function chatError(peer, e) {
  const chat = chats.get(peer);
  const text = t(e instanceof ApiError && e.code === "network" ? "err_network" : "err_generic");
  if (chat && chat.pane) showError(chat, text);
}

function setMenu(open) {
  $("contact-menu").setAttribute("aria-expanded", String(open));
  $("contact-menu-list").hidden = !open;
  if (open) $("contact-menu-list").querySelector("button:not([hidden])").focus();
}

$("contact-menu").addEventListener("click", () => {
  if (isGroupKey(openPeer)) { showMembers(groupIdOf(openPeer)); return; }
  setMenu($("contact-menu-list").hidden);
});

$("contact-menu-list").addEventListener("keydown", (ev) => { if (ev.key === "Escape") { setMenu(false); $("contact-menu").focus(); } });
document.addEventListener("click", (ev) => { if (!ev.target.closest(".menu")) setMenu(false); });
$("contact-remove").addEventListener("click", () => { setMenu(false); removePeer(openPeer); });
$("contact-add-back").addEventListener("click", () => { setMenu(false); addBack(openPeer); });
$("contact-block").addEventListener("click", () => { setMenu(false); blockPeer(openPeer); });
$("chat-request-add").addEventListener("click", () => addBack(openPeer));
$("chat-request-block").addEventListener("click", () => blockPeer(openPeer));
$("chat-back").addEventListener("click", closeChat);

export function resetChats() {
  groupStore.clear();
  chats.clear();
  callers.clear();
  openPeer = null;
  $("chat-pane").replaceChildren();
}

// For tests and debugging.
window.jegoChat = {
  open: openChat,
  chats,
  unread: (peer) => (chats.has(peer) ? chats.get(peer).unread : 0),
};
