// Jego Call web client: accounts, contacts with presence, audio/video calls over WebRTC.
// Protocol: docs/signalling.md. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);

// Plain words for every end reason, from the server's one table (GET /api/reasons,
// jego_call/call/reasons.py); the reason itself is shown until it has loaded.
const REASONS = {};
fetch("/api/reasons").then((r) => r.json()).then((table) => Object.assign(REASONS, table)).catch(() => {});
const reasonWords = (reason, phone) => {
  const info = REASONS[reason];
  return info ? (phone ? info.phone_en : info.en) : reason;
};
const isPhone = (peer) => typeof peer === "string" && /^\+?[0-9][0-9 ()\-.]{1,30}$/.test(peer);

const state = {
  token: localStorage.getItem("jego.token"),
  username: localStorage.getItem("jego.username"),
  ws: null,
  wsBackoff: 500,
  iceServers: [],
  contacts: new Map(),       // username -> presence
  selected: null,
  call: null,                // the current call (see newCall)
  timer: null,
  statsTimer: null,
  ringtone: null,
};

function newCall(fields) {
  return Object.assign({
    id: null, peer: null, direction: null, media: ["audio"], pc: null, stream: null,
    offer: null, state: "idle", pendingIce: [], connectedAt: null, lastBytes: 0, lastStamp: 0,
    sent: false,
  }, fields);
}

function callId() {
  const a = new Uint8Array(16);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- UI helpers -------------------------------------------------------------------------
function banner(text, kind = "error") {
  const b = $("banner");
  if (!text) { b.hidden = true; b.textContent = ""; return; }
  b.textContent = text;
  b.className = kind;
  b.hidden = false;
}

function setCallState(s) {
  $("call-state").textContent = s;
  if (state.call) state.call.state = s;
  const live = ["calling", "ringing", "connected"].includes(s);
  $("hangup").disabled = !live;
  $("mute").disabled = s !== "connected";
  $("camera").disabled = !(s === "connected" && state.call && state.call.media.includes("video"));
  $("incoming").hidden = s !== "incoming";
  updateCallButtons();
}

function setEndReason(reason, detail) {
  const el = $("call-end-reason");
  el.dataset.reason = reason || "";
  const words = reasonWords(reason, state.call && isPhone(state.call.peer));
  el.textContent = reason ? words + (detail && detail !== words ? ` (${detail})` : "") : "";
}

function updateCallButtons() {
  const busy = state.call && ["calling", "ringing", "incoming", "connected"].includes(state.call.state);
  const ok = !!state.selected && !busy && state.ws && state.ws.readyState === WebSocket.OPEN;
  $("call-audio").disabled = !ok;
  $("call-video").disabled = !ok;
}

function renderContacts() {
  const ul = $("contacts");
  ul.textContent = "";
  for (const [name, presence] of [...state.contacts.entries()].sort()) {
    const li = document.createElement("li");
    li.dataset.testid = `contact-${name}`;
    li.setAttribute("data-testid", `contact-${name}`);
    li.dataset.presence = presence;
    if (name === state.selected) li.classList.add("selected");
    const n = document.createElement("span");
    n.textContent = name;
    const p = document.createElement("span");
    p.className = `presence presence-${presence}`;
    p.setAttribute("data-testid", `presence-${name}`);
    p.textContent = presence.replace("_", " ");
    li.append(n, p);
    li.onclick = () => { state.selected = name; $("selected").textContent = name; renderContacts(); updateCallButtons(); };
    ul.append(li);
  }
}

function startTimer() {
  const t0 = Date.now();
  stopTimer();
  state.timer = setInterval(() => {
    const s = Math.floor((Date.now() - t0) / 1000);
    $("call-timer").textContent = `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
  }, 250);
}

function stopTimer() { if (state.timer) clearInterval(state.timer); state.timer = null; }

function startRingtone() {
  stopRingtone();
  try {
    const ctx = new AudioContext();
    const gain = ctx.createGain();
    gain.gain.value = 0;
    gain.connect(ctx.destination);
    const osc = ctx.createOscillator();
    osc.frequency.value = 440;
    osc.connect(gain);
    osc.start();
    let on = false;
    const iv = setInterval(() => { on = !on; gain.gain.value = on ? 0.2 : 0; }, 1000);
    state.ringtone = { ctx, iv };
  } catch (e) { /* no audio output: the screen still shows the call */ }
}

function stopRingtone() {
  if (!state.ringtone) return;
  clearInterval(state.ringtone.iv);
  state.ringtone.ctx.close();
  state.ringtone = null;
}

// ---- HTTP API ---------------------------------------------------------------------------
async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const res = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const data = res.status === 204 ? {} : await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error((data.error && data.error.message) || res.statusText);
    err.code = data.error && data.error.code;
    err.status = res.status;
    throw err;
  }
  return data;
}

async function authenticate(kind) {
  const username = $("login-username").value.trim();
  const password = $("login-password").value;
  try {
    const data = await api("POST", kind === "register" ? "/api/register" : "/api/login", { username, password });
    state.token = data.token;
    state.username = data.username;
    localStorage.setItem("jego.token", data.token);
    localStorage.setItem("jego.username", data.username);
    banner(null);
    await enter();
  } catch (e) {
    banner(e.message);
  }
}

async function enter() {
  $("login-view").hidden = true;
  $("main-view").hidden = false;
  $("logout").hidden = false;
  $("me").textContent = state.username;
  try {
    const data = await api("GET", "/api/contacts");
    state.contacts = new Map(data.contacts.map((c) => [c.username, c.presence]));
    renderContacts();
  } catch (e) {
    if (e.status === 401) { logout(); banner("Your session expired: log in again"); return; }
    banner(e.message);
  }
  loadHistory();
  connect();
}

function logout() {
  localStorage.removeItem("jego.token");
  localStorage.removeItem("jego.username");
  state.token = null;
  if (state.ws) { state.ws.onclose = null; state.ws.close(); }
  state.ws = null;
  location.reload();
}

async function addContact(ev) {
  ev.preventDefault();
  const name = $("contact-add-input").value.trim();
  if (!name) return;
  try {
    const data = await api("POST", "/api/contacts", { username: name });
    state.contacts.set(data.username, data.presence);
    $("contact-add-input").value = "";
    banner(null);
    renderContacts();
  } catch (e) {
    banner(e.message);
  }
}

// ---- WebSocket --------------------------------------------------------------------------
function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws`);
  state.ws = ws;
  ws.onopen = () => send({ type: "auth", token: state.token });
  ws.onmessage = (ev) => { const msg = JSON.parse(ev.data); onMessage(msg); window.jegoHooks.dispatch(msg); };
  ws.onclose = () => {
    $("conn").textContent = "offline";
    updateCallButtons();
    if (state.call && state.call.state !== "ended" && state.call.state !== "idle") endCall("connection_lost");
    if (state.token) setTimeout(connect, state.wsBackoff);
    state.wsBackoff = Math.min(state.wsBackoff * 2, 10000);
  };
}

function onMessage(msg) {
  const call = state.call;
  const mine = call && msg.call_id === call.id;
  switch (msg.type) {
    case "auth_ok":
      state.iceServers = msg.ice_servers || [];
      state.wsBackoff = 500;
      $("conn").textContent = "online";
      updateCallButtons();
      break;
    case "presence":
      if (state.contacts.has(msg.username)) { state.contacts.set(msg.username, msg.presence); renderContacts(); }
      break;
    case "invite": onInvite(msg); break;
    case "ringing":
      if (mine && call.state === "calling") setCallState("ringing");
      if (mine && msg.sdp) onEarlyMedia(msg);
      break;
    case "call_state": if (mine && msg.state === "ringing" && call.state === "calling") setCallState("ringing"); break;
    case "accept": if (mine) onAccept(msg); break;
    case "ice":
      if (mine && call.pc) {
        if (call.pc.remoteDescription) call.pc.addIceCandidate(msg.candidate || null).catch(() => {});
        else call.pendingIce.push(msg.candidate);
      }
      break;
    case "call_ended": if (mine) endCall(msg.reason, msg.detail); break;
    case "error":
      if (msg.code === "auth_failed") { logout(); return; }
      if (mine && call.state !== "connected") endCall("failed", msg.message);
      else banner(`${msg.message} (${msg.code})`);
      break;
    default: break;
  }
}

// ---- calls ------------------------------------------------------------------------------
async function getMedia(media) {
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true, video: media.includes("video") });
  } catch (e) {
    const denied = e && (e.name === "NotAllowedError" || e.name === "SecurityError");
    throw Object.assign(new Error(e.message), { reason: denied ? "media_denied" : "media_failed" });
  }
}

function makePeer(call) {
  const pc = new RTCPeerConnection({ iceServers: state.iceServers });
  pc.onicecandidate = (ev) => {
    if (call.sent) send({ type: "ice", call_id: call.id, candidate: ev.candidate ? ev.candidate.toJSON() : null });
  };
  pc.ontrack = (ev) => {
    const stream = ev.streams[0] || new MediaStream([ev.track]);
    if (ev.track.kind === "video") $("remote-video").srcObject = stream;
    else $("remote-audio").srcObject = stream;
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed" && state.call === call) { hangup(); }
  };
  for (const track of call.stream.getTracks()) pc.addTrack(track, call.stream);
  if (call.media.includes("video")) $("local-video").srcObject = call.stream;
  return pc;
}

// Wait until ICE gathering completes (at most `ms`), so the SDP carries the candidates even
// for peers that do not trickle (aiortc); later candidates still trickle.
function gathered(pc, ms = 1500) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, ms);
  });
}

async function placeCall(kind, target) {
  const peer = target || state.selected;
  if (!peer) return;
  const media = kind === "video" ? ["audio", "video"] : ["audio"];
  const call = newCall({ id: callId(), peer, direction: "out", media });
  state.call = call;
  banner(null);
  setEndReason(null);
  $("call-peer").textContent = `with ${call.peer}`;
  setCallState("calling");
  try {
    call.stream = await getMedia(media);
    call.pc = makePeer(call);
    await call.pc.setLocalDescription(await call.pc.createOffer());
    await gathered(call.pc);
  } catch (e) {
    endCall(e.reason || "media_failed", e.reason ? null : e.message);
    return;
  }
  if (state.call !== call || call.state === "ended") return;
  send({ type: "invite", call_id: call.id, to: call.peer, media, sdp: call.pc.localDescription.sdp });
  call.sent = true;
}

async function onAccept(msg) {
  const call = state.call;
  if (!msg.sdp && call.earlyMedia) {  // a phone call: the answer came with the early media
    $("early-media").hidden = true;
    connected(call);
    return;
  }
  try {
    await call.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
    for (const c of call.pendingIce.splice(0)) await call.pc.addIceCandidate(c || null).catch(() => {});
    connected(call);
  } catch (e) {
    hangup();
    setEndReason("media_failed", e.message);
  }
}

// A phone call's `ringing` with an sdp: apply the answer now, so the ringback tone or the
// network's announcement plays before the phone is answered (early media); `accept` follows
// without an sdp.
async function onEarlyMedia(msg) {
  const call = state.call;
  if (call.earlyMedia || !call.pc) return;
  call.earlyMedia = true;
  try {
    await call.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
    for (const c of call.pendingIce.splice(0)) await call.pc.addIceCandidate(c || null).catch(() => {});
    if (state.call === call && call.state !== "connected") $("early-media").hidden = false;
  } catch (e) {
    hangup();
    setEndReason("media_failed", e.message);
  }
}

// ---- phone calls: dial pad, DTMF, call history -----------------------------------------------
const DTMF_KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#"];

function renderDialpad() {
  const pad = $("dialpad-keys");
  pad.textContent = "";
  for (const d of DTMF_KEYS) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = d;
    b.setAttribute("data-testid", `dtmf-${d}`);
    b.addEventListener("click", () => pressKey(d));
    pad.append(b);
  }
}

// During a connected call a key sends DTMF (the bridge passes it to the phone as RFC 4733);
// otherwise it types into the number field.
function pressKey(d) {
  const call = state.call;
  if (call && call.state === "connected") {
    send({ type: "dtmf", call_id: call.id, digits: d });
    $("call-stats").dataset.dtmf = (($("call-stats").dataset.dtmf) || "") + d;
  } else {
    $("dialpad-input").value += d;
  }
}

function callPhone(ev) {
  if (ev) ev.preventDefault();
  const number = $("dialpad-input").value.trim();
  if (!number) { banner("Type a phone number first"); return; }
  if (state.call && ["calling", "ringing", "incoming", "connected"].includes(state.call.state)) return;
  placeCall("audio", number);
}

function describeCall(c) {
  const when = new Date(c.started_at * 1000).toLocaleString();
  const arrow = c.direction === "outgoing" ? "→" : "←";
  const phone = c.peer_kind === "phone";
  const words = reasonWords(c.outcome, phone);
  const dur = c.duration_s ? ` ${Math.round(c.duration_s)} s` : "";
  return `${when} ${arrow} ${c.peer}${phone ? " (phone)" : ""}: ${words}${dur}`;
}

async function loadHistory() {
  try {
    const data = await api("GET", "/api/calls?limit=20");
    const ul = $("call-history");
    ul.textContent = "";
    for (const c of data.calls) {
      const li = document.createElement("li");
      li.setAttribute("data-testid", "call-history-item");
      li.dataset.callId = c.call_id;
      li.dataset.outcome = c.outcome;
      li.textContent = describeCall(c);
      ul.append(li);
    }
  } catch (e) {
    if (e.status !== 401) banner(e.message);
  }
}

function onInvite(msg) {
  if (state.call && ["calling", "ringing", "incoming", "connected"].includes(state.call.state)) {
    send({ type: "decline", call_id: msg.call_id, reason: "busy" });
    return;
  }
  const call = newCall({ id: msg.call_id, peer: msg.from, direction: "in", media: msg.media, offer: msg.sdp });
  state.call = call;
  setEndReason(null);
  $("incoming-from").textContent = msg.from;
  $("incoming-kind").textContent = msg.media.includes("video") ? "video call" : "audio call";
  $("call-peer").textContent = `with ${msg.from}`;
  setCallState("incoming");
  send({ type: "ringing", call_id: msg.call_id });
  startRingtone();
}

async function answer() {
  const call = state.call;
  if (!call || call.state !== "incoming") return;
  stopRingtone();
  try {
    call.stream = await getMedia(call.media);
    call.pc = makePeer(call);
    await call.pc.setRemoteDescription({ type: "offer", sdp: call.offer });
    for (const c of call.pendingIce.splice(0)) await call.pc.addIceCandidate(c || null).catch(() => {});
    await call.pc.setLocalDescription(await call.pc.createAnswer());
    await gathered(call.pc);
  } catch (e) {
    send({ type: "decline", call_id: call.id });
    endCall(e.reason || "media_failed", e.reason ? null : e.message);
    return;
  }
  if (state.call !== call || call.state === "ended") return;
  call.sent = true;
  send({ type: "accept", call_id: call.id, sdp: call.pc.localDescription.sdp });
  connected(call);
}

function decline() {
  const call = state.call;
  if (!call || call.state !== "incoming") return;
  send({ type: "decline", call_id: call.id, reason: "declined" });
}

function hangup() {
  const call = state.call;
  if (!call) return;
  if (call.state === "connected") send({ type: "hangup", call_id: call.id });
  else if (call.direction === "out" && call.sent) send({ type: "cancel", call_id: call.id });
  else if (call.direction === "in") send({ type: "decline", call_id: call.id });
  if (!call.sent) endCall("cancelled");
}

function connected(call) {
  call.connectedAt = Date.now();
  setCallState("connected");
  startTimer();
  startStats(call);
}

function endCall(reason, detail) {
  const call = state.call;
  if (!call || call.state === "ended") return;
  stopRingtone();
  stopTimer();
  if (state.statsTimer) clearInterval(state.statsTimer);
  state.statsTimer = null;
  if (call.pc) call.pc.close();
  if (call.stream) for (const t of call.stream.getTracks()) t.stop();
  $("remote-video").srcObject = null;
  $("local-video").srcObject = null;
  $("remote-audio").srcObject = null;
  setCallState("ended");
  setEndReason(reason, detail);
  $("early-media").hidden = true;
  setTimeout(loadHistory, 500);  // the server has stored the call record by then
  $("mute").textContent = "Mute";
  $("mute").setAttribute("aria-pressed", "false");
  $("camera").textContent = "Camera off";
  $("camera").setAttribute("aria-pressed", "false");
}

function toggleMute() {
  const call = state.call;
  if (!call || !call.stream) return;
  const tracks = call.stream.getAudioTracks();
  const muted = tracks.length && tracks[0].enabled;
  for (const t of tracks) t.enabled = !muted;
  $("mute").textContent = muted ? "Unmute" : "Mute";
  $("mute").setAttribute("aria-pressed", String(!!muted));
}

function toggleCamera() {
  const call = state.call;
  if (!call || !call.stream) return;
  const tracks = call.stream.getVideoTracks();
  const off = tracks.length && tracks[0].enabled;
  for (const t of tracks) t.enabled = !off;
  $("camera").textContent = off ? "Camera on" : "Camera off";
  $("camera").setAttribute("aria-pressed", String(!!off));
}

// ---- connection quality -----------------------------------------------------------------
async function collectStats(pc) {
  const out = {
    audio: { bytesReceived: 0, packetsReceived: 0, packetsLost: 0, jitter: 0, bytesSent: 0, packetsSent: 0 },
    video: { bytesReceived: 0, framesDecoded: 0, framesEncoded: 0, bytesSent: 0 },
    rtt: null,
  };
  const report = await pc.getStats();
  report.forEach((s) => {
    const kind = s.kind || s.mediaType;
    if (s.type === "inbound-rtp" && kind === "audio") {
      out.audio.bytesReceived += s.bytesReceived || 0;
      out.audio.packetsReceived += s.packetsReceived || 0;
      out.audio.packetsLost += s.packetsLost || 0;
      out.audio.jitter = s.jitter || 0;
    } else if (s.type === "outbound-rtp" && kind === "audio") {
      out.audio.bytesSent += s.bytesSent || 0;
      out.audio.packetsSent += s.packetsSent || 0;
    } else if (s.type === "inbound-rtp" && kind === "video") {
      out.video.bytesReceived += s.bytesReceived || 0;
      out.video.framesDecoded += s.framesDecoded || 0;
    } else if (s.type === "outbound-rtp" && kind === "video") {
      out.video.bytesSent += s.bytesSent || 0;
      out.video.framesEncoded += s.framesEncoded || 0;
    } else if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
      out.rtt = s.currentRoundTripTime;
    }
  });
  return out;
}

function startStats(call) {
  if (state.statsTimer) clearInterval(state.statsTimer);
  state.statsTimer = setInterval(async () => {
    if (!call.pc || state.call !== call) return;
    const s = await collectStats(call.pc);
    const now = Date.now();
    const bytes = s.audio.bytesReceived + s.video.bytesReceived;
    const kbps = call.lastStamp ? ((bytes - call.lastBytes) * 8) / (now - call.lastStamp) : 0;
    call.lastBytes = bytes;
    call.lastStamp = now;
    const total = s.audio.packetsReceived + s.audio.packetsLost;
    const loss = total ? (100 * s.audio.packetsLost) / total : 0;
    $("call-stats").textContent =
      `received ${bytes} bytes | ${kbps.toFixed(0)} kb/s | loss ${loss.toFixed(1)} % | ` +
      `rtt ${s.rtt === null ? "-" : (s.rtt * 1000).toFixed(0) + " ms"}` +
      (call.media.includes("video") ? ` | video frames ${s.video.framesDecoded}` : "");
  }, 1000);
}

// For tests and debugging: the live call and its stats.
window.jego = {
  get call() { return state.call; },
  stats: () => (state.call && state.call.pc ? collectStats(state.call.pc) : Promise.resolve(null)),
};

// Hooks for features outside the call UI (chat.js): every server message goes to the
// listeners added with onMessage(fn); send(msg) writes to the socket; api() is the JSON API.
window.jegoHooks = {
  listeners: [],
  onMessage(fn) { this.listeners.push(fn); },
  dispatch(msg) {
    for (const fn of this.listeners) { try { fn(msg); } catch (e) { console.error(e); } }
  },
  send: (msg) => send(msg),
  api: (method, path, body) => api(method, path, body),
  get token() { return state.token; },
  get username() { return state.username; },
  get contacts() { return [...state.contacts.keys()]; },
  get online() { return !!state.ws && state.ws.readyState === WebSocket.OPEN; },
};

// ---- wiring -----------------------------------------------------------------------------
$("login-form").addEventListener("submit", (ev) => { ev.preventDefault(); authenticate("login"); });
$("register-submit").addEventListener("click", () => authenticate("register"));
$("logout").addEventListener("click", logout);
$("contact-add-form").addEventListener("submit", addContact);
$("call-audio").addEventListener("click", () => placeCall("audio"));
$("call-video").addEventListener("click", () => placeCall("video"));
$("answer").addEventListener("click", answer);
$("decline").addEventListener("click", decline);
$("hangup").addEventListener("click", hangup);
$("mute").addEventListener("click", toggleMute);
$("camera").addEventListener("click", toggleCamera);
$("dialpad-form").addEventListener("submit", callPhone);
$("history-refresh").addEventListener("click", loadHistory);
renderDialpad();

if (state.token) enter();
