// Jego Call chat: one pane per contact with history, text, voice messages (MediaRecorder),
// photos and files, delivery/read ticks and unread counts. Protocol: docs/signalling.md,
// "## Messaging". Uses app.js only through window.jegoHooks (send, api, onMessage, token...).
"use strict";

(() => {
  const hooks = window.jegoHooks;
  const $ = (id) => document.getElementById(id);
  const MAX_VOICE_S = 120;
  const chats = new Map();       // peer -> chat record (see chatFor)
  const pendingReceipts = new Map();  // peer -> {state, seq} waiting for flushReceipts
  let openPeer = null;
  let receiptTimer = null;
  let recording = null;          // {chat, recorder, stream, started, timer}

  const me = () => hooks.username;
  const visible = () => document.visibilityState === "visible";

  function newId() {
    const a = new Uint8Array(16);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "testid") e.setAttribute("data-testid", v);
      else if (k === "text") e.textContent = v;
      else if (k === "className") e.className = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    e.append(...children);
    return e;
  }

  function mediaUrl(id, thumb = false) {
    return `/api/media/${id}${thumb ? "/thumbnail" : ""}?token=${encodeURIComponent(hooks.token)}`;
  }

  function sizeText(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function clock(s) {
    const t = Math.round(s || 0);
    return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, "0")}`;
  }

  // ---- chat records ---------------------------------------------------------------------
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
        unread: 0,
        unreadSeqs: new Set(), // incoming seqs not yet read
        myReadSeq: 0,          // what I have reported read
        serverLastSeq: 0,      // last_seq when GET /api/conversations counted `unread`
        extraUnread: 0,        // unread messages the server counted that are not in memory
        pane: null,
      };
      chats.set(peer, chat);
    }
    return chat;
  }

  function peerOf(msg) { return msg.from === me() ? msg.to : msg.from; }

  // ---- panes ----------------------------------------------------------------------------
  function paneFor(chat) {
    if (chat.pane) return chat.pane;
    const list = el("ol", { className: "message-list", testid: "message-list" });
    const older = el("button", { type: "button", className: "older", testid: "load-older", text: "Older messages", hidden: true });
    const input = el("input", { testid: "message-input", placeholder: `Message ${chat.peer}`, autocomplete: "off", maxlength: "4000" });
    const sendBtn = el("button", { type: "submit", testid: "message-send", text: "Send" });
    const voice = el("button", { type: "button", testid: "voice-record", "aria-pressed": "false", text: "Record voice" });
    const file = el("input", { type: "file", testid: "file-input" });
    const attach = el("label", { className: "attach" }, "Photo or file ", file);
    const form = el("form", { className: "composer row" }, input, sendBtn, voice, attach);
    const error = el("div", { className: "chat-error", testid: "chat-error", role: "alert" });
    const pane = el("div", { className: "chat", testid: `chat-${chat.peer}`, "data-peer": chat.peer, hidden: true },
      el("h3", { text: `Chat with ${chat.peer}` }), older, list, form, error);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const text = input.value;
      if (!text.trim()) { showError(chat, "Type a message first"); return; }
      input.value = "";
      sendText(chat, text);
    });
    voice.addEventListener("click", () => toggleRecording(chat));
    file.addEventListener("change", () => {
      const f = file.files && file.files[0];
      file.value = "";
      if (f) sendMedia(chat, f, null, f.name);
    });
    older.addEventListener("click", () => loadHistory(chat, true));
    $("chat-pane").append(pane);
    chat.pane = { root: pane, list, older, input, voice, error };
    for (const item of [...chat.items.values()].sort((a, b) => a.msg.seq - b.msg.seq)) place(chat, item);
    return chat.pane;
  }

  function showError(chat, text) {
    const pane = paneFor(chat);
    pane.error.textContent = text || "";
  }

  async function openChat(peer) {
    if (!peer) return;
    openPeer = peer;
    const chat = chatFor(peer);
    const pane = paneFor(chat);
    for (const c of chats.values()) if (c.pane) c.pane.root.hidden = c !== chat;
    $("chat-empty").hidden = true;
    if (!chat.loaded) await loadHistory(chat, false);
    markRead(chat);
    pane.list.scrollTop = pane.list.scrollHeight;
    pane.input.focus();
  }

  async function loadHistory(chat, older) {
    const first = Math.min(...[...chat.items.keys()], Infinity);
    const q = older && first !== Infinity ? `?before_seq=${first}` : "";
    try {
      const page = await hooks.api("GET", `/api/conversations/${encodeURIComponent(chat.peer)}/messages${q}`);
      for (const m of page.messages) addMessage(m, { history: true });
      applyWatermarks(chat, page.delivered_seq, page.read_seq);
      chat.hasMore = page.has_more;
      chat.loaded = true;
      paneFor(chat).older.hidden = !chat.hasMore;
    } catch (e) {
      showError(chat, `Could not load messages: ${e.message}`);
    }
  }

  // ---- rendering ------------------------------------------------------------------------
  function receiptState(chat, msg) {
    if (msg.seq <= chat.readSeq || msg.state === "read") return "read";
    if (msg.seq <= chat.deliveredSeq || msg.state === "delivered") return "delivered";
    return "sent";
  }

  function body(msg) {
    const m = msg.media;
    if (msg.kind === "text") return el("span", { className: "text", text: msg.text || "" });
    if (msg.kind === "photo") {
      const img = el("img", { testid: "photo-thumb", alt: m.filename || "photo", src: mediaUrl(m.id, m.thumbnail), loading: "lazy" });
      img.addEventListener("click", () => showPhoto(m));
      return el("span", { className: "photo" }, img);
    }
    if (msg.kind === "voice") {
      const audio = el("audio", { testid: "voice-audio", controls: true, preload: "metadata", src: mediaUrl(m.id) });
      return el("span", { className: "voice" }, audio, el("span", { className: "duration", text: clock(m.duration_s) }));
    }
    const name = m.filename || "file";
    return el("a", { testid: "file-link", href: mediaUrl(m.id), download: name, text: `${name} (${sizeText(m.size)})` });
  }

  function itemFor(chat, msg, pendingText) {
    const out = msg.from === me();
    const li = el("li", {
      testid: "message-item", className: out ? "out" : "in", "data-kind": msg.kind || "text",
      "data-seq": msg.seq || null, "data-client-id": msg.client_id,
    });
    const meta = el("span", { className: "meta" });
    const when = msg.ts ? new Date(msg.ts * 1000) : new Date();
    meta.append(el("time", { text: when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) }));
    if (out && msg.seq) {
      const state = receiptState(chat, msg);
      meta.append(el("span", { testid: "receipt", className: `receipt ${state}`, "data-state": state, text: state }));
    } else if (out) {
      meta.append(el("span", { className: "pending", text: pendingText || "sending" }));
    }
    li.append(msg.seq || msg.kind === "text" ? body(msg) : el("span", { className: "text muted", text: msg.label || "" }), meta);
    return li;
  }

  function place(chat, item) {
    const pane = chat.pane;
    if (!pane) return;
    // keep seq order; pending ones (no seq) stay at the bottom
    let before = null;
    for (const li of pane.list.children) {
      const s = Number(li.dataset.seq || Infinity);
      if (s > item.msg.seq) { before = li; break; }
    }
    pane.list.insertBefore(item.li, before);
    if (openPeer === chat.peer) pane.list.scrollTop = pane.list.scrollHeight;
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
        r.textContent = state;
      }
    }
  }

  function applyWatermarks(chat, delivered, read) {
    chat.deliveredSeq = Math.max(chat.deliveredSeq, delivered || 0, read || 0);
    chat.readSeq = Math.max(chat.readSeq, read || 0);
    refreshReceipts(chat);
  }

  function showPhoto(media) {
    const v = $("photo-viewer");
    v.textContent = "";
    v.append(el("img", { testid: "photo-full", src: mediaUrl(media.id), alt: media.filename || "photo" }));
    v.hidden = false;
  }
  $("photo-viewer").addEventListener("click", () => { $("photo-viewer").hidden = true; $("photo-viewer").textContent = ""; });

  // ---- unread counts --------------------------------------------------------------------
  function renderBadges() {
    for (const li of $("contacts").querySelectorAll("li[data-testid^='contact-']")) {
      const peer = li.getAttribute("data-testid").slice("contact-".length);
      let badge = li.querySelector(".unread");
      if (!badge) {
        badge = el("span", { className: "unread", testid: `unread-${peer}` });
        li.firstChild.after(badge);
      }
      const n = chats.has(peer) ? chats.get(peer).unread : 0;
      badge.textContent = String(n);
      badge.hidden = n === 0;
    }
    // conversations with people who are not (yet) in my contacts
    const others = $("chat-others");
    const contacts = new Set(hooks.contacts);
    const strangers = [...chats.values()].filter((c) => !contacts.has(c.peer) && (c.items.size || c.unread));
    others.textContent = "";
    for (const c of strangers) {
      const li = el("li", { testid: `conversation-${c.peer}`, text: `${c.peer} ` },
        el("span", { className: "unread", testid: `unread-${c.peer}`, text: String(c.unread), hidden: c.unread === 0 }));
      li.addEventListener("click", () => openChat(c.peer));
      others.append(li);
    }
    others.hidden = strangers.length === 0;
  }

  new MutationObserver(renderBadges).observe($("contacts"), { childList: true });
  $("contacts").addEventListener("click", (ev) => {
    const li = ev.target.closest("li[data-testid^='contact-']");
    if (li) openChat(li.getAttribute("data-testid").slice("contact-".length));
  });

  function markRead(chat) {
    if (openPeer !== chat.peer || !visible()) return;
    const before = chat.unread;
    const maxIn = Math.max(0, ...[...chat.items.values()].filter((i) => i.msg.from === chat.peer).map((i) => i.msg.seq));
    if (maxIn > chat.myReadSeq) queueReceipt(chat.peer, "read", maxIn);
    chat.myReadSeq = Math.max(chat.myReadSeq, maxIn);
    chat.unreadSeqs.clear();
    chat.extraUnread = 0;
    chat.unread = 0;
    if (before) renderBadges();
  }

  document.addEventListener("visibilitychange", () => { if (openPeer) markRead(chatFor(openPeer)); });

  // ---- receipts (batched: one per conversation, cumulative) ------------------------------
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
      if (r.read) hooks.send({ type: "receipt", with: peer, state: "read", up_to_seq: r.read });
      if (r.delivered > r.read) hooks.send({ type: "receipt", with: peer, state: "delivered", up_to_seq: r.delivered });
    }
    pendingReceipts.clear();
  }

  // ---- incoming -------------------------------------------------------------------------
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
    if (msg.from === chat.peer) {
      if (!history) queueReceipt(chat.peer, "delivered", msg.seq);
      if (msg.state !== "read" && msg.seq > chat.myReadSeq && !chat.unreadSeqs.has(msg.seq)) {
        chat.unreadSeqs.add(msg.seq);
        if (msg.seq <= chat.serverLastSeq && chat.extraUnread > 0) chat.extraUnread -= 1;
      }
      chat.unread = chat.unreadSeqs.size + chat.extraUnread;
    }
    place(chat, item);
    if (openPeer === chat.peer) markRead(chat);
    renderBadges();
    return chat;
  }

  async function loadConversations() {
    try {
      const data = await hooks.api("GET", "/api/conversations");
      for (const c of data.conversations) {
        const chat = chatFor(c.with);
        // messages the server counts as unread that are not in memory yet
        const known = [...chat.unreadSeqs].filter((s) => s <= c.last_seq).length;
        chat.extraUnread = Math.max(0, c.unread - known);
        chat.serverLastSeq = c.last_seq;
        chat.unread = chat.unreadSeqs.size + chat.extraUnread;
        applyWatermarks(chat, c.delivered_seq, c.read_seq);
        if (openPeer === chat.peer) markRead(chat);
      }
      renderBadges();
    } catch (e) { /* the chat still works; counts come with the messages */ }
  }

  function sync() {
    const conversations = [...chats.values()].filter((c) => c.loaded).map((c) => ({ with: c.peer, after_seq: c.lastSeq }));
    hooks.send({ type: "sync", conversations });
  }

  function resendPending() {
    for (const chat of chats.values()) {
      for (const [clientId, p] of chat.pending) {
        if (p.failed || (p.text === undefined && !p.mediaId)) continue;
        transmit(chat.peer, clientId, p);
      }
    }
  }

  hooks.onMessage(async (msg) => {
    switch (msg.type) {
      case "auth_ok":
        await loadConversations();
        sync();
        resendPending();
        break;
      case "message": addMessage(msg.message); break;
      case "message_ack": addMessage(msg.message); break;
      case "receipt": {
        const chat = chatFor(msg.with);
        if (msg.by === me()) {  // another device of mine read or received them
          if (msg.state === "read") {
            chat.myReadSeq = Math.max(chat.myReadSeq, msg.up_to_seq);
            for (const s of [...chat.unreadSeqs]) if (s <= msg.up_to_seq) chat.unreadSeqs.delete(s);
            chat.extraUnread = 0;
            chat.unread = chat.unreadSeqs.size;
            renderBadges();
          }
        } else if (msg.state === "read") applyWatermarks(chat, 0, msg.up_to_seq);
        else applyWatermarks(chat, msg.up_to_seq, 0);
        break;
      }
      case "sync_done":
        if (msg.more) { flushReceipts(); sync(); }
        break;
      case "presence": renderBadges(); break;
      case "error": failPending(msg); break;
      default: break;
    }
  });

  // ---- sending --------------------------------------------------------------------------
  function addPending(chat, clientId, fields) {
    const msg = { client_id: clientId, from: me(), to: chat.peer, kind: fields.kind || "text", text: fields.text, label: fields.label };
    const li = itemFor(chat, msg, fields.label ? "uploading" : "sending");
    li.dataset.pending = "true";
    const p = { msg, li, text: fields.text, mediaId: null, failed: false };
    chat.pending.set(clientId, p);
    paneFor(chat);
    chat.pane.list.append(li);
    chat.pane.list.scrollTop = chat.pane.list.scrollHeight;
    showError(chat, "");
    return p;
  }

  function transmit(peer, clientId, p) {
    const msg = { type: "send_message", id: clientId, client_id: clientId, to: peer };
    if (p.mediaId) msg.media_id = p.mediaId; else msg.text = p.text;
    hooks.send(msg);  // not open: resent on the next auth_ok with the same client_id
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
    if (pend) pend.textContent = "not sent";
    showError(chat, text);
  }

  function failPending(err) {
    if (!err.ref) return;
    for (const chat of chats.values()) {
      if (chat.pending.has(err.ref)) fail(chat, err.ref, `Not sent: ${err.message}`);
    }
  }

  async function sendMedia(chat, blob, kind, filename) {
    const clientId = newId();
    const label = kind === "voice" ? "Voice message" : `${filename || "file"} (${sizeText(blob.size)})`;
    const p = addPending(chat, clientId, { kind: kind || "file", label });
    const q = new URLSearchParams();
    if (kind) q.set("kind", kind);
    if (filename) q.set("filename", filename);
    try {
      const res = await fetch(`/api/media?${q}`, {
        method: "POST", body: blob,
        headers: { Authorization: `Bearer ${hooks.token}`, "Content-Type": "application/octet-stream" },
      });
      const data = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error((data.error && data.error.message) || res.statusText);
      p.mediaId = data.id;
    } catch (e) {
      fail(chat, clientId, `Upload failed: ${e.message}`);
      return;
    }
    transmit(chat.peer, clientId, p);
  }

  // ---- voice messages -------------------------------------------------------------------
  function recordButton(chat, on, text) {
    const b = paneFor(chat).voice;
    b.setAttribute("aria-pressed", String(on));
    b.textContent = text;
    b.classList.toggle("recording", on);
  }

  async function toggleRecording(chat) {
    if (recording) { stopRecording(); return; }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (e) {
      showError(chat, `Microphone unavailable: ${e.message}`);
      return;
    }
    const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm"].find((t) => MediaRecorder.isTypeSupported(t));
    const recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
    const chunks = [];
    const rec = { chat, recorder, stream, started: Date.now(), timer: null };
    recording = rec;
    recorder.ondataavailable = (ev) => { if (ev.data && ev.data.size) chunks.push(ev.data); };
    recorder.onstop = () => {
      clearInterval(rec.timer);
      for (const t of stream.getTracks()) t.stop();
      recording = null;
      recordButton(chat, false, "Record voice");
      const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
      if (blob.size) sendMedia(chat, blob, "voice", recorder.mimeType.includes("ogg") ? "voice.ogg" : "voice.webm");
    };
    recorder.start(250);
    recordButton(chat, true, "Stop 0:00");
    rec.timer = setInterval(() => {
      const s = (Date.now() - rec.started) / 1000;
      recordButton(chat, true, `Stop ${clock(s)}`);
      if (s >= MAX_VOICE_S - 0.5) stopRecording();
    }, 250);
  }

  function stopRecording() {
    if (recording && recording.recorder.state !== "inactive") recording.recorder.stop();
  }

  // For tests and debugging.
  window.jegoChat = {
    open: openChat,
    chats,
    unread: (peer) => (chats.has(peer) ? chats.get(peer).unread : 0),
  };
})();
