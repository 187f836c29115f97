// Calls: one RTCPeerConnection and one CallMachine per call, shown as overlays above every
// screen. An incoming call is a modal with ringtone, caller name, Answer/Decline, a flashing tab
// title and a desktop notification when the tab is in the background. In a call: full-size
// remote video with a corner self-view (video calls) or an avatar with the timer (audio and
// phone calls); mute, camera, speaker, keypad (phone calls) and hang up; one quality word, the
// figures behind "details". How a call ended is said once, in the page's language, from the
// server's reason table; codes sit behind "details".
//
// The browser waits for ICE gathering to complete before it sends its SDP (aiortc does not
// trickle) and trickles anything later.
import { checkNumber, isMissed, loadReasons, reasonWords, session } from "./api.js";
import { currentPeer, noteCaller, onHeader } from "./chat.js";
import { people } from "./contacts.js";
import { getLang, onLangChange, t } from "./i18n.js";
import { socket } from "./socket.js";
import { $, announce, buildKeypad, clock, closeModal, el, fillAvatar, isPhone, openModal, phoneNumber } from "./ui.js";

// ---- the call state machine (mirrors the server's: docs/signalling.md "Calls") ----------------------
const TRANSITIONS = {
  idle: { dial: "calling", invite: "incoming" },
  calling: { ringing: "ringing", accept: "connected", end: "ended" },
  ringing: { ringing: "ringing", accept: "connected", end: "ended" },
  incoming: { answer: "connected", end: "ended" },
  connected: { end: "ended" },
  ended: {},
};

export class CallMachine {
  constructor() { this.state = "idle"; }
  can(event) { return event in TRANSITIONS[this.state]; }
  apply(event) {
    const next = TRANSITIONS[this.state][event];
    if (!next) throw new Error(`call: no move from ${this.state} on ${event}`);
    this.state = next;
    return next;
  }
}

const LIVE = new Set(["calling", "ringing", "incoming", "connected"]);

class Call {
  constructor(fields) {
    Object.assign(this, {
      id: newCallId(), peer: null, name: null, direction: "out", media: ["audio"], phone: false, pc: null,
      stream: null, offer: null, pendingIce: [], connectedAt: null, lastBytes: 0, lastStamp: 0, sent: false,
      earlyMedia: false, dtmf: "", stats: null, creditEndsAt: null,
    }, fields);
    this.machine = new CallMachine();
  }

  get state() { return this.machine.state; }
  get live() { return LIVE.has(this.state); }
}

function newCallId() {
  const a = new Uint8Array(16);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

let current = null;          // the Call on screen (a new one for every call)
let timer = null;
let statsTimer = null;
let ringtone = null;
let titleTimer = null;
let notification = null;
let outcomeTimer = null;
const baseTitle = () => t("app_title");

export function liveCall() { return current && current.live ? current : null; }

// ---- the overlay ------------------------------------------------------------------------------------
function move(call, event) {
  call.machine.apply(event);
  if (call !== current) return;
  const s = call.state;
  $("call-state").textContent = t(`state_${s}`);
  $("call-state").dataset.state = s;
  $("call-overlay").dataset.state = s;
  $("call-overlay").classList.toggle("connected", s === "connected");
  $("mute").disabled = s !== "connected";
  $("camera").disabled = !(s === "connected" && call.media.includes("video"));
  $("speaker").disabled = s !== "connected";
  $("keypad-toggle").disabled = s !== "connected";
  $("call-timer").hidden = s !== "connected";
  $("call-quality-line").hidden = s !== "connected";
  if (s === "connected" && call.phone) setKeypad(true);
  announce(t(`state_${s}`));
  updateButtons();
}

// Every call starts from a clean overlay: no timer, stats, quality or pressed buttons of the last one.
function resetOverlay(call) {
  stopTimer();
  $("call-timer").textContent = "00:00";
  $("call-stats").textContent = "";
  delete $("call-stats").dataset.dtmf;
  $("call-quality").textContent = "";
  $("call-quality").dataset.quality = "";
  $("call-quality").dataset.source = "";
  setDetails(false);
  $("early-media").hidden = true;
  $("call-credit-low").hidden = true;
  for (const [id, key] of [["mute", "mute"], ["camera", "camera_off"], ["speaker", "speaker"]]) {
    $(id).setAttribute("aria-pressed", "false");
    $(id).querySelector(".label").textContent = t(key);
  }
  $("remote-audio").muted = false;
  const video = call.media.includes("video");
  $("call-overlay").classList.toggle("video", video);
  $("remote-video").hidden = !video;
  $("local-video").hidden = !video;
  $("camera").hidden = !video;
  $("keypad-toggle").hidden = !call.phone;
  $("call-keypad-digits").textContent = "";
  setKeypad(false);
  const peerEl = $("call-peer");
  peerEl.replaceChildren();
  if (call.phone) {
    peerEl.append(phoneNumber(null, call.peer));
    checkNumber(call.peer).then((c) => { if (current === call && c.international) peerEl.replaceChildren(phoneNumber(c.international, call.peer)); })
      .catch(() => {});
  } else {
    peerEl.append(el("span", { translate: "no", text: call.name || call.peer }));
  }
  $("call-kind").textContent = t(call.phone ? "kind_phone" : video ? "kind_video" : "kind_audio");
  fillAvatar($("call-avatar"), call.name || call.peer, call.peer, call.phone);
}

function showCallOverlay(call) {
  resetOverlay(call);
  hideOutcome();
  openModal($("call-overlay"), $("hangup"));
}

function setDetails(open) {
  $("call-details-toggle").setAttribute("aria-expanded", String(open));
  $("call-stats").hidden = !open;
}

function setKeypad(open) {
  $("keypad-toggle").setAttribute("aria-pressed", String(open));
  $("call-keypad").hidden = !open;
}

export function updateButtons() {
  const busy = !!liveCall();
  const ok = socket.online && !busy && !!session.token;
  const peer = currentPeer();
  $("call-audio").disabled = !ok || !peer;
  $("call-video").disabled = !ok || !peer;
  $("call-phone").disabled = !ok;
}

// ---- incoming ---------------------------------------------------------------------------------------
function showIncoming(call) {
  const from = $("incoming-from");
  from.replaceChildren();
  if (call.phone) {
    from.append(phoneNumber(null, call.peer));
    checkNumber(call.peer).then((c) => { if (current === call && c.international) from.replaceChildren(phoneNumber(c.international, call.peer)); })
      .catch(() => {});
  } else {
    from.append(el("span", { translate: "no", text: call.name || call.peer }));
  }
  $("incoming-username").textContent = call.phone || (call.name || call.peer) === call.peer ? "" : call.peer;
  $("incoming-kind").textContent = t(call.phone ? "incoming_phone" : call.media.includes("video") ? "incoming_video" : "incoming_audio");
  $("incoming-request").hidden = call.phone || people.isContact(call.peer);
  fillAvatar($("incoming-avatar"), call.name || call.peer, call.peer, call.phone);
  openModal($("incoming"), $("answer"));
  startRingtone();
  flashTitle(call);
  notify(call);
}

function hideIncoming() {
  closeModal($("incoming"));
  stopRingtone();
  stopTitle();
  if (notification) { notification.close(); notification = null; }
}

function flashTitle(call) {
  stopTitle();
  let on = false;
  const text = t("title_incoming", { name: call.name || call.peer });
  document.title = text;
  titleTimer = setInterval(() => { on = !on; document.title = on ? baseTitle() : text; }, 1000);
}

function stopTitle() {
  clearInterval(titleTimer);
  titleTimer = null;
  document.title = baseTitle();
}

function notify(call) {
  if (!document.hidden || typeof Notification === "undefined" || Notification.permission !== "granted") return;
  try {
    notification = new Notification(t("notify_title"), {
      body: t("title_incoming", { name: call.name || call.peer }), tag: call.id, requireInteraction: true,
      icon: "/static/icon-192.png",
    });
    notification.onclick = () => { window.focus(); $("answer").focus(); };
  } catch (e) { /* some browsers only allow notifications from a service worker */ }
}

function startRingtone() {
  stopRingtone();
  try {
    const ctx = new AudioContext();
    const gain = ctx.createGain();
    gain.gain.value = 0;
    gain.connect(ctx.destination);
    for (const f of [440, 480]) {
      const osc = ctx.createOscillator();
      osc.frequency.value = f;
      osc.connect(gain);
      osc.start();
    }
    let on = false;
    const iv = setInterval(() => { on = !on; gain.gain.value = on ? 0.12 : 0; }, 1000);
    ringtone = { ctx, iv };
  } catch (e) { /* no audio output: the screen still shows the call */ }
}

function stopRingtone() {
  if (!ringtone) return;
  clearInterval(ringtone.iv);
  ringtone.ctx.close();
  ringtone = null;
}

// ---- the outcome, said once ---------------------------------------------------------------------------
async function showOutcome(call, reason, msg = {}) {
  await loadReasons();
  const callee = call.direction === "in";
  const words = reasonWords(reason, { phone: call.phone, callee }) || t("call_ended");
  const out = $("call-end-reason");
  out.dataset.reason = reason || "";
  out.dataset.missed = String(callee && isMissed(reason));
  out.textContent = words;
  const dur = call.connectedAt ? clock((Date.now() - call.connectedAt) / 1000) : "";
  $("call-end-duration").textContent = dur;
  $("call-end-duration").hidden = !dur;
  const codes = [];
  if (reason) codes.push(reason);
  if (msg.sip_code) codes.push(`SIP ${msg.sip_code}`);
  if (msg.q850_cause) codes.push(`Q.850 ${msg.q850_cause}`);
  if (msg.detail) codes.push(msg.detail);
  // a billing refusal or cut comes with its own plain words in both languages (detail, detail_zh)
  const said = $("call-end-words");
  said.dataset.en = msg.detail_zh ? msg.detail || "" : "";
  said.dataset.zh = msg.detail_zh || "";
  renderEndWords();
  $("call-end-details").textContent = codes.join(" · ");
  $("call-end-details").hidden = true;
  $("call-end-details-toggle").setAttribute("aria-expanded", "false");
  $("call-outcome").hidden = false;
  $("call-outcome").dataset.reason = reason || "";
  announce(words);
  clearTimeout(outcomeTimer);
  outcomeTimer = setTimeout(() => { if (!$("call-outcome").contains(document.activeElement)) hideOutcome(); }, 12000);
}

function renderEndWords() {
  const said = $("call-end-words");
  said.textContent = getLang() === "zh-CN" ? said.dataset.zh || "" : said.dataset.en || "";
  said.hidden = !said.textContent;
}

// credit_low: the server's warning before a paid phone call is cut (docs/signalling.md), with a
// countdown to the cut.
function renderCreditLow(call) {
  if (call !== current || call.creditEndsAt === null) return;
  const s = Math.max(0, Math.ceil((call.creditEndsAt - Date.now()) / 1000));
  $("call-credit-low").textContent = t("call_credit_low", { s });
  $("call-credit-low").hidden = call.state !== "connected";
}

function hideOutcome() {
  clearTimeout(outcomeTimer);
  $("call-outcome").hidden = true;
}

// A refusal before anything was dialled (the dial pad's number check): no call, same words.
export function refuse(peer, reason, detail) {
  if (liveCall()) return;
  const call = new Call({ peer, phone: true });
  current = call;
  call.machine.apply("dial");
  call.machine.apply("end");
  $("call-state").textContent = t("state_ended");
  $("call-state").dataset.state = "ended";
  showOutcome(call, reason, { detail });
}

// ---- media --------------------------------------------------------------------------------------------
async function getMedia(media) {
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true, video: media.includes("video") });
  } catch (e) {
    const denied = e && (e.name === "NotAllowedError" || e.name === "SecurityError");
    throw Object.assign(new Error(e.message), { reason: denied ? "media_denied" : "media_failed" });
  }
}

function makePeer(call) {
  const pc = new RTCPeerConnection({ iceServers: iceServers, iceTransportPolicy: icePolicy });
  pc.onicecandidate = (ev) => {
    if (call.sent) socket.send({ type: "ice", call_id: call.id, candidate: ev.candidate ? ev.candidate.toJSON() : null });
  };
  pc.ontrack = (ev) => {
    if (call !== current) return;
    const stream = ev.streams[0] || new MediaStream([ev.track]);
    if (ev.track.kind === "video") {
      $("remote-video").srcObject = stream;
      $("remote-video").muted = true;  // the sound plays once, through remote-audio
    } else {
      $("remote-audio").srcObject = stream;
    }
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed" && current === call) hangup();
  };
  for (const track of call.stream.getTracks()) pc.addTrack(track, call.stream);
  if (call.phone) preferRed(pc);
  if (call.media.includes("video")) $("local-video").srcObject = call.stream;
  return pc;
}

// Phone calls: RFC 2198 redundancy first (red/48000/2 carrying Opus with the frames before it),
// so the browser sends it and the bridge rebuilds lost frames from the copies (issue 15); Opus
// and the rest follow. Chromium sends the first codec of its own preference list.
function preferRed(pc) {
  const caps = RTCRtpReceiver.getCapabilities && RTCRtpReceiver.getCapabilities("audio");
  if (!caps) return;
  const red = caps.codecs.filter((c) => c.mimeType.toLowerCase() === "audio/red");
  if (!red.length) return;
  const rest = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== "audio/red");
  for (const t of pc.getTransceivers()) {
    if (t.sender.track && t.sender.track.kind === "audio" && t.setCodecPreferences) {
      try { t.setCodecPreferences([...red, ...rest]); } catch (e) { /* keep the browser's order */ }
    }
  }
}

// Wait until ICE gathering completes (at most `ms`), so the SDP carries the candidates even for
// peers that do not trickle (aiortc); later candidates still trickle.
function gathered(pc, ms = 1500) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, ms);
  });
}

let iceServers = [];
let icePolicy = "all";  // "relay": TURN relay candidates only (auth_ok.ice_transport_policy)
socket.on("auth_ok", (msg) => {
  iceServers = msg.ice_servers || [];
  icePolicy = msg.ice_transport_policy === "relay" ? "relay" : "all";
  updateButtons();
});
// fresh TURN credentials before the old ones expire (docs/signalling.md, TURN credentials)
socket.on("ice_servers", (msg) => { iceServers = msg.ice_servers || iceServers; });

// ---- placing, answering, ending -------------------------------------------------------------------------
// Call `target` (a username, or an E.164 number with phone=true). Nothing happens unless signed
// in and connected, and not in another call.
export async function placeCall(kind, target, { phone = false } = {}) {
  const peer = target || currentPeer();
  if (!peer || !session.token || !socket.online || liveCall()) return;
  const media = kind === "video" && !phone ? ["audio", "video"] : ["audio"];
  const call = new Call({ peer, name: phone ? null : people.nameOf(peer), direction: "out", media, phone });
  current = call;
  showCallOverlay(call);
  move(call, "dial");
  try {
    call.stream = await getMedia(media);
    call.pc = makePeer(call);
    await call.pc.setLocalDescription(await call.pc.createOffer());
    await gathered(call.pc);
  } catch (e) {
    endCall(call, e.reason || "media_failed", { detail: e.reason ? null : e.message });
    return;
  }
  if (current !== call || call.state === "ended") return;
  if (!socket.send({ type: "invite", call_id: call.id, to: call.peer, media, sdp: call.pc.localDescription.sdp })) {
    endCall(call, "connection_lost");
    return;
  }
  call.sent = true;
}

function onInvite(msg) {
  if (liveCall()) {
    socket.send({ type: "decline", call_id: msg.call_id, reason: "busy" });
    return;
  }
  const phone = isPhone(msg.from);
  if (msg.display_name) people.learn(msg.from, msg.display_name);
  const call = new Call({
    id: msg.call_id, peer: msg.from, name: phone ? null : (msg.display_name || people.nameOf(msg.from)),
    direction: "in", media: msg.media, offer: msg.sdp, phone,
  });
  current = call;
  hideOutcome();
  move(call, "invite");
  if (!phone) noteCaller(msg.from);
  socket.send({ type: "ringing", call_id: msg.call_id });
  showIncoming(call);
}

async function answer() {
  const call = current;
  if (!call || call.state !== "incoming") return;
  hideIncoming();
  showCallOverlay(call);
  $("call-state").textContent = t("state_incoming");
  try {
    call.stream = await getMedia(call.media);
    call.pc = makePeer(call);
    await call.pc.setRemoteDescription({ type: "offer", sdp: call.offer });
    for (const c of call.pendingIce.splice(0)) await call.pc.addIceCandidate(c || null).catch(() => {});
    await call.pc.setLocalDescription(await call.pc.createAnswer());
    await gathered(call.pc);
  } catch (e) {
    socket.send({ type: "decline", call_id: call.id });
    endCall(call, e.reason || "media_failed", { detail: e.reason ? null : e.message });
    return;
  }
  if (current !== call || call.state === "ended") return;
  call.sent = true;
  socket.send({ type: "accept", call_id: call.id, sdp: call.pc.localDescription.sdp });
  connected(call, "answer");
}

function decline() {
  const call = current;
  if (!call || call.state !== "incoming") return;
  socket.send({ type: "decline", call_id: call.id, reason: "declined" });
}

export function hangup() {
  const call = current;
  if (!call || !call.live) return;
  if (call.state === "connected") socket.send({ type: "hangup", call_id: call.id });
  else if (call.direction === "out" && call.sent) socket.send({ type: "cancel", call_id: call.id });
  else if (call.direction === "in") socket.send({ type: "decline", call_id: call.id });
  if (!call.sent && call.direction === "out") endCall(call, "cancelled");
}

async function onAccept(call, msg) {
  if (!msg.sdp && call.earlyMedia) {  // a phone call: the answer came with the early media
    $("early-media").hidden = true;
    connected(call, "accept");
    return;
  }
  try {
    await call.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
    for (const c of call.pendingIce.splice(0)) await call.pc.addIceCandidate(c || null).catch(() => {});
    connected(call, "accept");
  } catch (e) {
    hangup();
    endCall(call, "media_failed", { detail: e.message });
  }
}

// A phone call's `ringing` with an sdp: apply the answer now, so the ringback tone or the
// network's announcement plays before the phone is answered (early media); `accept` follows
// without an sdp.
async function onEarlyMedia(call, msg) {
  if (call.earlyMedia || !call.pc) return;
  call.earlyMedia = true;
  try {
    await call.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
    for (const c of call.pendingIce.splice(0)) await call.pc.addIceCandidate(c || null).catch(() => {});
    if (current === call && call.state !== "connected") $("early-media").hidden = false;
  } catch (e) {
    hangup();
    endCall(call, "media_failed", { detail: e.message });
  }
}

function connected(call, event) {
  if (call.state === "connected" || call.state === "ended") return;
  call.connectedAt = Date.now();
  move(call, event);
  startTimer(call);
  startStats(call);
  renderCreditLow(call);
}

function endCall(call, reason, msg = {}) {
  if (!call || call.state === "ended") return;
  if (call === current) {
    hideIncoming();
    stopTimer();
    clearInterval(statsTimer);
    statsTimer = null;
  }
  if (call.pc) call.pc.close();
  if (call.stream) for (const tr of call.stream.getTracks()) tr.stop();
  move(call, "end");
  if (call !== current) return;
  for (const id of ["remote-video", "local-video", "remote-audio"]) $(id).srcObject = null;
  $("early-media").hidden = true;
  closeModal($("call-overlay"));
  showOutcome(call, reason, msg);
  setTimeout(() => window.dispatchEvent(new CustomEvent("jego:call-ended", { detail: { id: call.id } })), 500);
}

// ---- in-call controls ------------------------------------------------------------------------------
function toggleMute() {
  const call = current;
  if (!call || !call.stream) return;
  const tracks = call.stream.getAudioTracks();
  const muted = tracks.length && tracks[0].enabled;
  for (const tr of tracks) tr.enabled = !muted;
  $("mute").setAttribute("aria-pressed", String(!!muted));
  $("mute").querySelector(".label").textContent = t(muted ? "unmute" : "mute");
}

function toggleCamera() {
  const call = current;
  if (!call || !call.stream) return;
  const tracks = call.stream.getVideoTracks();
  const off = tracks.length && tracks[0].enabled;
  for (const tr of tracks) tr.enabled = !off;
  $("camera").setAttribute("aria-pressed", String(!!off));
  $("camera").querySelector(".label").textContent = t(off ? "camera_on" : "camera_off");
  $("local-video").classList.toggle("off", !!off);
}

function toggleSpeaker() {
  const audio = $("remote-audio");
  audio.muted = !audio.muted;
  $("speaker").setAttribute("aria-pressed", String(audio.muted));
  $("speaker").querySelector(".label").textContent = t(audio.muted ? "speaker_on" : "speaker");
}

function pressKey(d) {
  const call = current;
  if (!call || call.state !== "connected") return;
  socket.send({ type: "dtmf", call_id: call.id, digits: d });
  call.dtmf += d;
  $("call-stats").dataset.dtmf = call.dtmf;
  $("call-keypad-digits").textContent = call.dtmf;
}

// ---- timer and connection quality ------------------------------------------------------------------------
function startTimer(call) {
  stopTimer();
  timer = setInterval(() => {
    if (current === call && call.connectedAt) $("call-timer").textContent = clock((Date.now() - call.connectedAt) / 1000);
    if (current === call && call.creditEndsAt !== null) renderCreditLow(call);
  }, 250);
}

function stopTimer() { clearInterval(timer); timer = null; }

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
      const codec = s.codecId && report.get(s.codecId);
      if (codec && codec.mimeType) out.audio.codec = codec.mimeType.split("/")[1].toLowerCase();
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

// One word for people; the figures behind "details".
function qualityOf(loss, rtt, kbps) {
  if (kbps <= 0.5) return "poor";
  if (loss > 5 || (rtt !== null && rtt > 0.6)) return "poor";
  if (loss > 1.5 || (rtt !== null && rtt > 0.3)) return "fair";
  return "good";
}

function startStats(call) {
  clearInterval(statsTimer);
  statsTimer = setInterval(async () => {
    if (!call.pc || current !== call || call.state !== "connected") return;
    const s = await collectStats(call.pc);
    if (current !== call || call.state !== "connected") return;
    const now = Date.now();
    const bytes = s.audio.bytesReceived + s.video.bytesReceived;
    const kbps = call.lastStamp ? ((bytes - call.lastBytes) * 8) / (now - call.lastStamp) : null;
    call.lastBytes = bytes;
    call.lastStamp = now;
    const total = s.audio.packetsReceived + s.audio.packetsLost;
    const loss = total ? (100 * s.audio.packetsLost) / total : 0;
    call.stats = { bytes, kbps, loss, rtt: s.rtt, frames: s.video.framesDecoded };
    renderStats(call);
    call.ticks = (call.ticks || 0) + 1;
    if (call.ticks % 2 === 0) sendCallStats(call, s);
  }, 1000);
}

// Every 2 s what our receiver counted (cumulative); the server answers `call_quality` with the
// E-model's word for the last interval (docs/signalling.md, Call quality).
function sendCallStats(call, s) {
  const msg = {
    type: "call_stats", call_id: call.id, id: "call_stats",
    packets_received: s.audio.packetsReceived, packets_lost: Math.max(0, s.audio.packetsLost),
    jitter_ms: Math.min(60000, (s.audio.jitter || 0) * 1000),
  };
  if (s.audio.codec) msg.codec = s.audio.codec.slice(0, 16);
  if (s.rtt !== null && s.rtt >= 0) msg.rtt_ms = Math.min(60000, s.rtt * 1000);
  socket.send(msg);
}

function renderStats(call) {
  const st = call.stats;
  if (!st) return;
  let text = t("stats_line", {
    bytes: st.bytes, kbps: st.kbps === null ? "-" : st.kbps.toFixed(0), loss: st.loss.toFixed(1),
    rtt: st.rtt === null ? "-" : (st.rtt * 1000).toFixed(0),
  });
  if (call.media.includes("video")) text += t("stats_video", { frames: st.frames });
  $("call-stats").textContent = text;
  // the server's E-model word once it has scored us; our own rough guess until then
  const q = call.serverQuality || (st.kbps !== null ? qualityOf(st.loss, st.rtt, st.kbps) : null);
  if (q) {
    $("call-quality").dataset.quality = q;
    $("call-quality").dataset.source = call.serverQuality ? "e-model" : "local";
    $("call-quality").textContent = t(`quality_${q}`);
  }
}

// ---- server messages --------------------------------------------------------------------------------------
socket.on("invite", onInvite);
socket.on("ringing", (msg) => {
  const call = current;
  if (!call || msg.call_id !== call.id) return;
  if (call.state === "calling") move(call, "ringing");
  if (msg.sdp) onEarlyMedia(call, msg);
});
socket.on("call_state", (msg) => {
  const call = current;
  if (call && msg.call_id === call.id && msg.state === "ringing" && call.state === "calling") move(call, "ringing");
});
socket.on("accept", (msg) => { if (current && msg.call_id === current.id) onAccept(current, msg); });
socket.on("ice", (msg) => {
  const call = current;
  if (!call || msg.call_id !== call.id) return;
  if (call.pc && call.pc.remoteDescription) call.pc.addIceCandidate(msg.candidate || null).catch(() => {});
  else call.pendingIce.push(msg.candidate);
});
socket.on("call_quality", (msg) => {
  const call = current;
  if (!call || msg.call_id !== call.id || !["good", "fair", "poor"].includes(msg.quality)) return;
  call.serverQuality = msg.quality;
  call.mos = msg.mos;
  renderStats(call);
});
socket.on("call_ended", (msg) => { if (current && msg.call_id === current.id) endCall(current, msg.reason, msg); });
socket.on("credit_low", (msg) => {
  const call = current;
  if (!call || msg.call_id !== call.id || !call.live) return;  // shown once the call is connected
  call.creditEndsAt = Date.now() + Math.max(0, Number(msg.remaining_s) || 0) * 1000;
  renderCreditLow(call);
  announce(t("call_credit_low", { s: Math.round(msg.remaining_s) }));
  window.dispatchEvent(new CustomEvent("jego:credit-low", { detail: msg }));
});
socket.on("error", (msg) => {
  const call = current;
  if (msg.ref === "call_stats") return;  // a quality report refused: never a reason to end the call
  if (!call || msg.call_id !== call.id || !call.live) return;
  endCall(call, msg.code === "unknown_user" ? "unavailable" : "failed", { detail: msg.message });
});
// Our own connection dropped: the server has ended our calls (connection_lost).
socket.onState((s) => {
  if (s === "offline" && current && current.live) endCall(current, "connection_lost");
  updateButtons();
});
onHeader(() => updateButtons());

// ---- wiring -------------------------------------------------------------------------------------------------
$("call-audio").addEventListener("click", () => placeCall("audio"));
$("call-video").addEventListener("click", () => placeCall("video"));
$("answer").addEventListener("click", answer);
$("decline").addEventListener("click", decline);
$("hangup").addEventListener("click", hangup);
$("mute").addEventListener("click", toggleMute);
$("camera").addEventListener("click", toggleCamera);
$("speaker").addEventListener("click", toggleSpeaker);
$("keypad-toggle").addEventListener("click", () => setKeypad($("call-keypad").hidden));
$("call-details-toggle").addEventListener("click", () => setDetails($("call-stats").hidden));
$("call-end-details-toggle").addEventListener("click", () => {
  const open = $("call-end-details").hidden;
  $("call-end-details").hidden = !open;
  $("call-end-details-toggle").setAttribute("aria-expanded", String(open));
});
$("call-outcome-close").addEventListener("click", hideOutcome);
$("incoming").addEventListener("keydown", (ev) => { if (ev.key === "Escape") decline(); });
buildKeypad($("call-keypad-keys"), pressKey, "dtmf");
onLangChange(() => {
  const call = current;
  document.title = titleTimer ? document.title : baseTitle();
  if (!call) { $("call-state").textContent = t("state_idle"); return; }
  $("call-state").textContent = t(`state_${call.state}`);
  $("call-kind").textContent = t(call.phone ? "kind_phone" : call.media.includes("video") ? "kind_video" : "kind_audio");
  renderStats(call);
  renderCreditLow(call);
  renderEndWords();
  if (!$("call-outcome").hidden && $("call-end-reason").dataset.reason) {
    const reason = $("call-end-reason").dataset.reason;
    $("call-end-reason").textContent = reasonWords(reason, { phone: call.phone, callee: call.direction === "in" }) || t("call_ended");
  }
});

// For tests and debugging: the live call and its stats.
window.jego = {
  get call() { return current; },
  stats: () => (current && current.pc ? collectStats(current.pc) : Promise.resolve(null)),
};
