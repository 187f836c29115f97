// The JSON API (docs/signalling.md "HTTP API"): the token goes in an Authorization header, never
// in a URL; <img>/<audio> get short-lived signed links from GET /api/media/{id}/link.
// The end-reason words come from the server's one table, GET /api/reasons.
import { getLang } from "./i18n.js";

export const session = {
  token: localStorage.getItem("jego.token"),
  username: localStorage.getItem("jego.username"),
  displayName: localStorage.getItem("jego.display_name"),
};

export function saveSession(data) {
  session.token = data.token;
  session.username = data.username;
  session.displayName = data.display_name || data.username;
  localStorage.setItem("jego.token", session.token);
  localStorage.setItem("jego.username", session.username);
  localStorage.setItem("jego.display_name", session.displayName);
}

export function setDisplayName(name) {
  session.displayName = name;
  localStorage.setItem("jego.display_name", name);
}

export function clearSession() {
  for (const k of ["jego.token", "jego.username", "jego.display_name"]) localStorage.removeItem(k);
  session.token = session.username = session.displayName = null;
}

// An error the server answered (`code` from the protocol's table) or "network" when it could
// not be reached at all.
export class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

export async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  let res;
  try {
    res = await fetch(path, { method, headers, body: body !== undefined ? JSON.stringify(body) : undefined });
  } catch (e) {
    throw new ApiError("network", e.message, 0);
  }
  const data = res.status === 204 ? {} : await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = data.error || {};
    throw new ApiError(err.code || `http_${res.status}`, err.message || res.statusText, res.status);
  }
  return data;
}

export async function upload(blob, kind, filename) {
  const q = new URLSearchParams();
  if (kind) q.set("kind", kind);
  if (filename) q.set("filename", filename);
  let res;
  try {
    res = await fetch(`/api/media?${q}`, {
      method: "POST", body: blob,
      headers: { Authorization: `Bearer ${session.token}`, "Content-Type": "application/octet-stream" },
    });
  } catch (e) {
    throw new ApiError("network", e.message, 0);
  }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = data.error || {};
    throw new ApiError(err.code || `http_${res.status}`, err.message || res.statusText, res.status);
  }
  return data;
}

// ---- signed media links ----------------------------------------------------------------------
const links = new Map();  // media id -> Promise<{url, thumbnail_url, expires_at}>

export function mediaLink(id, fresh = false) {
  const cached = links.get(id);
  if (cached && !fresh) {
    return cached.then((l) => (l.expires_at - Date.now() / 1000 > 60 ? l : mediaLink(id, true)));
  }
  const p = api("GET", `/api/media/${encodeURIComponent(id)}/link`);
  links.set(id, p);
  p.catch(() => links.delete(id));
  return p;
}

// ---- end reasons: one vocabulary, served by the server ---------------------------------------------
let reasons = null;
let reasonsLoading = null;

export function loadReasons() {
  if (!reasonsLoading) {
    reasonsLoading = fetch("/api/reasons").then((r) => r.json()).then((table) => { reasons = table; return table; })
      .catch(() => { reasonsLoading = null; return null; });
  }
  return reasonsLoading;
}

// Words for `reason` in the page's language: `phone` when the far end is a phone number,
// `callee` for the side that was called ("Missed call"). Null until the table has loaded.
export function reasonWords(reason, { phone = false, callee = false } = {}) {
  const info = reasons && reasons[reason];
  if (!info) return null;
  const lang = getLang() === "zh-CN" ? "zh" : "en";
  if (callee) return info[`callee_${lang}`];
  return phone ? info[`phone_${lang}`] : info[lang];
}

export function isMissed(reason) {
  return !!(reasons && reasons[reason] && reasons[reason].missed);
}

// ---- the dial pad's number check ------------------------------------------------------------
const checks = new Map();

export function checkNumber(typed) {
  if (checks.has(typed)) return checks.get(typed);
  const p = api("GET", `/api/numbers/check?number=${encodeURIComponent(typed)}`);
  checks.set(typed, p);
  p.catch(() => checks.delete(typed));
  if (checks.size > 200) checks.delete(checks.keys().next().value);
  return p;
}
