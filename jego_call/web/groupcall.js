// Group calls (docs/signalling.md "## Group calls"): your audio goes to the server's conference
// on one RTCPeerConnection and comes back as the mix of everyone else (phones included); video
// is a mesh between the browsers, at most 4, one RTCPeerConnection per pair (the member whose
// username sorts first makes the offer). The overlay shows every member and phone with their
// state; mute, camera, add a phone number, leave. A group call ringing is a modal with Join and
// Decline; a running call shows a "Join" bar in the group's chat.
import { reasonWords, session } from "./api.js";
import { currentPeer, isGroupKey, onHeader } from "./chat.js";
import { people } from "./contacts.js";
import { groupStore } from "./groups.js";
import { onLangChange, t } from "./i18n.js";
import { socket } from "./socket.js";
import { $, avatar, closeModal, el, openModal } from "./ui.js";

let iceServers = [];
let current = null;     // {id, group, media, pc, stream, mesh: Map, muted, videoOn, state, participants, phones}
let ringing = null;     // the group_call_ring shown in the modal

const me = () => session.username;

function newId() {
  const a = new Uint8Array(16);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

function gathered(pc, ms = 1500) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, ms);
  });
}

export function liveGroupCall() { return current; }

// ---- joining -------------------------------------------------------------------------------------
async function begin(groupId, wantVideo, callId) {
  if (current || !socket.online) return;
  const g = groupStore.get(groupId);
  const call = {
    id: callId || newId(), group: groupId, name: g ? g.name : "", media: wantVideo ? ["audio", "video"] : ["audio"],
    pc: null, stream: null, mesh: new Map(), muted: false, videoOn: wantVideo, state: "joining",
    participants: [], phones: [], starting: !callId,
  };
  current = call;
  showOverlay();
  try {
    call.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: wantVideo });
  } catch (e) {
    finish(call, "media_denied");
    return;
  }
  const pc = new RTCPeerConnection({ iceServers });
  call.pc = pc;
  for (const track of call.stream.getAudioTracks()) pc.addTrack(track, call.stream);
  pc.ontrack = (ev) => { $("group-audio").srcObject = ev.streams[0] || new MediaStream([ev.track]); };
  pc.onicecandidate = (ev) => { if (call.sent && ev.candidate) socket.send({ type: "group_call_ice", call_id: call.id, candidate: ev.candidate.toJSON() }); };
  pc.onconnectionstatechange = () => { if (pc.connectionState === "failed" && current === call) leave(); };
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  if (current !== call) return;
  const sdp = pc.localDescription.sdp;
  call.sent = true;
  if (callId) socket.send({ type: "group_call_join", call_id: call.id, sdp, video: wantVideo });
  else socket.send({ type: "group_call_start", call_id: call.id, group: groupId, media: call.media, sdp });
  call.offer = sdp;
  render();
}

export function startGroupCall(groupId, video) {
  const g = groupStore.get(groupId);
  if (g && g.call) begin(groupId, video, g.call.call_id);
  else begin(groupId, video, null);
}

function leave() {
  const call = current;
  if (!call) return;
  socket.send({ type: "group_call_leave", call_id: call.id });
  finish(call, "left");
}

function finish(call, reason) {
  if (current !== call) return;
  current = null;
  for (const pc of call.mesh.values()) pc.close();
  call.mesh.clear();
  if (call.pc) call.pc.close();
  if (call.stream) for (const tr of call.stream.getTracks()) tr.stop();
  $("group-audio").srcObject = null;
  $("group-video-grid").replaceChildren();
  closeModal($("group-call"));
  const words = reasonWords(reason) || t("group_call_over");
  const toast = $("group-outcome");
  $("group-outcome-text").textContent = words;
  toast.dataset.reason = reason;
  toast.hidden = false;
  clearTimeout(finish.timer);
  finish.timer = setTimeout(() => { toast.hidden = true; }, 8000);
}

// ---- the video mesh ---------------------------------------------------------------------------------
function meshPeer(call, other) {
  let pc = call.mesh.get(other);
  if (pc) return pc;
  pc = new RTCPeerConnection({ iceServers });
  call.mesh.set(other, pc);
  const video = call.stream && call.stream.getVideoTracks()[0];
  if (video) pc.addTrack(video, call.stream);
  else pc.addTransceiver("video", { direction: "recvonly" });
  pc.onicecandidate = (ev) => socket.send({ type: "mesh_ice", call_id: call.id, to: other, candidate: ev.candidate ? ev.candidate.toJSON() : null });
  pc.ontrack = (ev) => { const v = tileVideo(other); v.srcObject = ev.streams[0] || new MediaStream([ev.track]); };
  return pc;
}

async function meshOffer(call, other) {
  const pc = meshPeer(call, other);
  await pc.setLocalDescription(await pc.createOffer());
  socket.send({ type: "mesh_offer", call_id: call.id, to: other, sdp: pc.localDescription.sdp });
}

function syncMesh(call) {
  if (!call.videoOn && !call.meVideo) return;
  const inMesh = new Set(call.participants.filter((p) => p.video && p.state === "joined" && p.username !== me()).map((p) => p.username));
  const mine = call.participants.find((p) => p.username === me());
  if (!mine || !mine.video || mine.state !== "joined") return;
  for (const other of inMesh) {
    if (!call.mesh.has(other) && me() < other) meshOffer(call, other).catch(() => {});
  }
  for (const [other, pc] of call.mesh) {
    if (!inMesh.has(other)) { pc.close(); call.mesh.delete(other); const v = $(`gv-${other}`); if (v) v.remove(); }
  }
}

function tileVideo(user) {
  let v = document.getElementById(`gv-${user}`);
  if (!v) {
    v = el("video", { id: `gv-${user}`, testid: `group-video-${user}`, autoplay: true, playsinline: true, muted: true,
      className: "group-video", "aria-label": people.nameOf(user) });
    v.muted = true;
    $("group-video-grid").append(v);
  }
  return v;
}

// ---- the overlay -------------------------------------------------------------------------------------
function showOverlay() { openModal($("group-call"), $("group-leave")); render(); }

const STATE_KEYS = { idle: "gstate_idle", ringing: "gstate_ringing", joining: "gstate_joining", joined: "gstate_joined",
  declined: "gstate_declined", missed: "gstate_missed", left: "gstate_left", calling: "gstate_calling", ended: "gstate_left" };

function render() {
  const call = current;
  if (!call) return;
  $("group-call-title").textContent = call.name || (groupStore.get(call.group) || {}).name || "";
  $("group-call-state").textContent = t(call.state === "live" ? "gcall_live" : "gcall_joining");
  $("group-call-state").dataset.state = call.state;
  const tiles = call.participants.filter((p) => p.state !== "idle").map((p) => {
    const tile = el("li", { testid: `gtile-${p.username}`, className: `gtile ${p.state}`, "data-state": p.state },
      avatar(p.display_name || people.nameOf(p.username), p.username),
      el("span", { className: "gname", translate: "no", text: p.username === me() ? t("you") : (p.display_name || people.nameOf(p.username)) }),
      el("span", { className: "gstate", text: t(STATE_KEYS[p.state] || "gstate_idle") }));
    if (p.muted) tile.append(el("span", { className: "tag", text: t("muted") }));
    if (p.state === "missed" || p.state === "declined" || p.state === "left") {
      if (p.username !== me()) {
        tile.append(el("button", { type: "button", className: "small", testid: `gring-${p.username}`, text: t("gring"),
          onclick: () => socket.send({ type: "group_call_ring", call_id: call.id, username: p.username }) }));
      }
    }
    return tile;
  });
  const phones = call.phones.map((ph) => {
    const tile = el("li", { testid: `gphone-${ph.number}`, className: `gtile phone ${ph.state}`, "data-state": ph.state },
      el("span", { className: "gname", translate: "no", text: ph.number }),
      el("span", { className: "gstate", text: ph.state === "ended" ? (reasonWords(ph.reason, { phone: true }) || t("gstate_left"))
        : t(STATE_KEYS[ph.state] || "gstate_calling") }));
    if (ph.state !== "ended") {
      tile.append(el("button", { type: "button", className: "small", text: t("ghang_up_phone"),
        onclick: () => socket.send({ type: "group_call_drop_phone", call_id: call.id, leg: ph.leg }) }));
    }
    return tile;
  });
  $("group-tiles").replaceChildren(...tiles, ...phones);
  $("group-mute").setAttribute("aria-pressed", String(call.muted));
  $("group-mute").querySelector(".label").textContent = t(call.muted ? "unmute" : "mute");
  $("group-camera").hidden = !call.videoOn;
  $("group-video-grid").hidden = !call.videoOn;
}

// ---- messages -----------------------------------------------------------------------------------------
socket.on("auth_ok", (msg) => { iceServers = msg.ice_servers || []; });
socket.on("group_call_state", (msg) => {
  const g = groupStore.get(msg.group);
  if (g) {
    g.call = msg.state === "ended" ? null : { call_id: msg.call_id, state: msg.state,
      in_call: msg.participants.filter((p) => p.state === "joined").map((p) => p.username) };
  }
  if (ringing && ringing.call_id === msg.call_id) {
    const mine = msg.participants.find((p) => p.username === me());
    if (!mine || mine.state !== "ringing") hideRing();
  }
  if (current && current.id === msg.call_id) {
    current.state = msg.state;
    current.participants = msg.participants;
    current.phones = msg.phones;
    const mine = msg.participants.find((p) => p.username === me());
    current.meVideo = !!(mine && mine.video);
    syncMesh(current);
    render();
  }
  groupStore.touch();
  refreshBar();
});
socket.on("group_call_answer", async (msg) => {
  const call = current;
  if (!call || call.id !== msg.call_id) return;
  try { await call.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp }); } catch (e) { leave(); }
  if (!msg.video && call.videoOn) { call.videoOn = false; render(); }
});
socket.on("group_call_notice", (msg) => {
  if (current && current.id === msg.call_id && msg.code === "video_full") {
    current.videoOn = false;
    $("group-call-notice").textContent = t("group_video_full", { n: msg.max_video });
    $("group-call-notice").hidden = false;
    render();
  }
});
socket.on("group_call_ring", (msg) => { if (!current) showRing(msg); });
socket.on("group_call_left", (msg) => { if (current && current.id === msg.call_id) finish(current, msg.reason); });
socket.on("group_call_ended", (msg) => {
  const g = groupStore.get(msg.group);
  if (g) g.call = null;
  if (ringing && ringing.call_id === msg.call_id) hideRing();
  if (current && current.id === msg.call_id) finish(current, msg.reason);
  refreshBar();
});
socket.on("mesh_offer", async (msg) => {
  const call = current;
  if (!call || call.id !== msg.call_id) return;
  const pc = meshPeer(call, msg.from);
  await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
  await pc.setLocalDescription(await pc.createAnswer());
  socket.send({ type: "mesh_answer", call_id: call.id, to: msg.from, sdp: pc.localDescription.sdp });
});
socket.on("mesh_answer", async (msg) => {
  const pc = current && current.id === msg.call_id ? current.mesh.get(msg.from) : null;
  if (pc) await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp }).catch(() => {});
});
socket.on("mesh_ice", (msg) => {
  const pc = current && current.id === msg.call_id ? current.mesh.get(msg.from) : null;
  if (pc) pc.addIceCandidate(msg.candidate || null).catch(() => {});
});
socket.on("error", (msg) => {
  const call = current;
  if (!call || msg.call_id !== call.id) return;
  if (msg.code === "call_exists" && call.starting) {
    // someone started the group's call at the same moment: join theirs
    const g = groupStore.get(call.group);
    const video = call.videoOn;
    finish(call, "left");
    $("group-outcome").hidden = true;
    if (g && g.call) begin(call.group, video, g.call.call_id);
    return;
  }
  if (["call_full", "already_in_call", "unknown_call", "forbidden", "not_party"].includes(msg.code)) {
    finish(call, msg.code === "call_full" ? "congestion" : "failed");
    $("group-outcome-text").textContent = t(`gerr_${msg.code}`);
  }
});
socket.onState((s) => { if (s === "offline" && current) finish(current, "connection_lost"); });

// ---- the ring modal and the join bar -------------------------------------------------------------------
function showRing(msg) {
  ringing = msg;
  $("group-incoming-title").textContent = msg.name;
  $("group-incoming-from").textContent = t("group_ring_from", { name: msg.display_name || people.nameOf(msg.from) });
  openModal($("group-incoming"), $("group-incoming-join"));
}

function hideRing() {
  ringing = null;
  closeModal($("group-incoming"));
}

$("group-incoming-join").addEventListener("click", () => {
  const r = ringing;
  hideRing();
  if (r) begin(r.group, r.media.includes("video"), r.call_id);
});
$("group-incoming-decline").addEventListener("click", () => {
  const r = ringing;
  hideRing();
  if (r) socket.send({ type: "group_call_decline", call_id: r.call_id });
});
$("group-incoming").addEventListener("keydown", (ev) => { if (ev.key === "Escape") $("group-incoming-decline").click(); });

function refreshBar() {
  const peer = currentPeer();
  if (!isGroupKey(peer)) return;
  const g = groupStore.get(peer.slice(6));
  $("group-call-bar").hidden = !(g && g.call) || !!current;
  if (g && g.call) $("group-call-bar-text").textContent = t("group_call_running", { n: (g.call.in_call || []).length });
}

$("group-call-join").addEventListener("click", () => {
  const peer = currentPeer();
  if (isGroupKey(peer)) startGroupCall(peer.slice(6), false);
});
$("group-call-audio").addEventListener("click", () => { const p = currentPeer(); if (isGroupKey(p)) startGroupCall(p.slice(6), false); });
$("group-call-video").addEventListener("click", () => { const p = currentPeer(); if (isGroupKey(p)) startGroupCall(p.slice(6), true); });
$("group-leave").addEventListener("click", leave);
$("group-mute").addEventListener("click", () => {
  const call = current;
  if (!call) return;
  call.muted = !call.muted;
  if (call.stream) for (const tr of call.stream.getAudioTracks()) tr.enabled = !call.muted;
  socket.send({ type: "group_call_mute", call_id: call.id, muted: call.muted });
  render();
});
$("group-camera").addEventListener("click", () => {
  const call = current;
  if (!call || !call.stream) return;
  const on = $("group-camera").getAttribute("aria-pressed") !== "true";
  $("group-camera").setAttribute("aria-pressed", String(on));
  for (const tr of call.stream.getVideoTracks()) tr.enabled = !on;
});
$("group-phone-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const call = current;
  const number = $("group-phone-input").value.trim();
  if (!call || !number) return;
  socket.send({ type: "group_call_add_phone", call_id: call.id, number });
  $("group-phone-input").value = "";
});
$("group-outcome-close").addEventListener("click", () => { $("group-outcome").hidden = true; });
onHeader(() => refreshBar());
onLangChange(() => render());

// For the end-to-end tests: what the conference leg and the mesh carry.
window.jegoGroup = {
  call: () => current,
  remoteAudio: () => $("group-audio").srcObject,
  async stats() {
    const call = current;
    if (!call || !call.pc) return null;
    const out = { state: call.state, audio: {}, video: {} };
    for (const r of (await call.pc.getStats()).values()) {
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        out.audio.packetsReceived = r.packetsReceived;
        out.audio.totalAudioEnergy = r.totalAudioEnergy;
      }
      if (r.type === "outbound-rtp" && r.kind === "audio") out.audio.packetsSent = r.packetsSent;
    }
    for (const [user, pc] of call.mesh) {
      for (const r of (await pc.getStats()).values()) {
        if (r.type === "inbound-rtp" && r.kind === "video") out.video[user] = r.framesDecoded || 0;
      }
    }
    return out;
  },
};
