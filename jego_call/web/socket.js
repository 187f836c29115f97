// The signalling WebSocket (docs/signalling.md): authenticate, hand every server message to the
// listeners, and reconnect by itself with jittered back-off. `state` is "offline",
// "connecting" or "online" (after auth_ok); onState(fn) hears every change.
import { session } from "./api.js";

const listeners = new Map();   // type -> [fn]; "*" hears everything
const stateListeners = [];
let ws = null;
let backoff = 500;
let retry = null;
let wanted = false;

export const socket = {
  state: "offline",
  get online() { return this.state === "online"; },

  on(type, fn) {
    if (!listeners.has(type)) listeners.set(type, []);
    listeners.get(type).push(fn);
  },

  onState(fn) { stateListeners.push(fn); },

  // Write one message; false when not connected (the caller decides what that means).
  send(msg) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(msg));
    return true;
  },

  connect() {
    wanted = true;
    clearTimeout(retry);
    if (ws && ws.readyState <= WebSocket.OPEN) return;
    setState("connecting");
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const sock = new WebSocket(`${proto}://${location.host}/ws`);
    ws = sock;
    sock.onopen = () => sock.send(JSON.stringify({ type: "auth", token: session.token }));
    sock.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg.type === "auth_ok") { backoff = 500; setState("online"); }
      dispatch(msg);
    };
    sock.onclose = () => {
      if (ws !== sock) return;
      ws = null;
      setState("offline");
      if (!wanted) return;
      const wait = backoff * (0.75 + Math.random() * 0.5);
      backoff = Math.min(backoff * 2, 10000);
      retry = setTimeout(() => socket.connect(), wait);
    };
  },

  close() {
    wanted = false;
    clearTimeout(retry);
    if (ws) { const s = ws; ws = null; s.close(); }
    setState("offline");
  },
};

function setState(s) {
  if (socket.state === s) return;
  socket.state = s;
  for (const fn of stateListeners) { try { fn(s); } catch (e) { console.error(e); } }
}

function dispatch(msg) {
  for (const fn of [...(listeners.get(msg.type) || []), ...(listeners.get("*") || [])]) {
    try { fn(msg); } catch (e) { console.error(e); }
  }
}

// Reconnect at once when the network comes back or the tab wakes up.
window.addEventListener("online", () => { if (wanted && socket.state === "offline") { backoff = 500; socket.connect(); } });
