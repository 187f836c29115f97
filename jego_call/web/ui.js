// DOM helpers shared by every screen: element builder, icons, avatars, banners, the live
// regions screen readers hear, modal focus handling and the phone-number rendering.
import { onLangChange, t } from "./i18n.js";

export const $ = (id) => document.getElementById(id);

// el("button", {testid: "x", text: "Hi", className: "a", onclick: fn}, child, ...)
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "testid") e.setAttribute("data-testid", v);
    else if (k === "text") e.textContent = v;
    else if (k === "className") e.className = v;
    else if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  e.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return e;
}

const SVG = "http://www.w3.org/2000/svg";

// An inline icon from the <symbol>s in index.html; decorative (the button carries the label).
export function icon(name, cls = "icon") {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", cls);
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const use = document.createElementNS(SVG, "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

// Avatar colours: white text on each meets WCAG AA (>= 4.5:1).
const AVATAR_COLOURS = ["#0b6e4f", "#1f5fa8", "#8a3ea8", "#a8432a", "#2b6f7a", "#6a5acd", "#8b5e00", "#b0305c"];

function hash(s) {
  let h = 0;
  for (const ch of s) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return h;
}

// The first character people would write for this name (a whole emoji or CJK character).
function initial(name) {
  const seg = typeof Intl.Segmenter === "function"
    ? [...new Intl.Segmenter(undefined, { granularity: "grapheme" }).segment(name.trim())][0]
    : null;
  const first = seg ? seg.segment : [...name.trim()][0] || "?";
  return first.toLocaleUpperCase();
}

export function avatar(name, key, size = "") {
  const a = el("span", { className: `avatar ${size}`.trim(), "aria-hidden": "true", translate: "no" });
  fillAvatar(a, name, key);
  return a;
}

export function fillAvatar(a, name, key, phone = false) {
  a.textContent = "";
  a.setAttribute("translate", "no");
  if (phone) a.append(icon("phone"));
  else a.textContent = initial(name || key || "?");
  a.style.background = AVATAR_COLOURS[hash(key || name || "") % AVATAR_COLOURS.length];
}

// Phone numbers: shown grouped ("+86 138 0013 8000") while the text stays the E.164 digits, so
// copying gives a number any phone can dial. `grouped` is the server's formatted form.
export function phoneNumber(grouped, e164) {
  const span = el("span", { className: "phone-number", translate: "no" });
  const parts = (grouped || e164 || "").split(/\s+/).filter(Boolean);
  if (!grouped || parts.join("") !== (e164 || "").replace(/[^+\d]/g, "")) {
    span.textContent = e164 || grouped || "";
    return span;
  }
  for (const p of parts) span.append(el("span", { text: p }));
  return span;
}

export const isPhone = (peer) => typeof peer === "string" && /^\+?[0-9][0-9 ()\-.]{1,30}$/.test(peer);

// ---- banners: one line at the top, cleared when what caused it is gone --------------------
let bannerCause = null;

export function banner(text, cause = "error", kind = "error") {
  const b = $("banner");
  if (!text) { b.hidden = true; $("banner-text").textContent = ""; bannerCause = null; return; }
  $("banner-text").textContent = text;
  b.className = `banner ${kind}`;
  b.hidden = false;
  bannerCause = cause;
}

export function clearBanner(cause) {
  if (cause === undefined || bannerCause === cause) banner(null);
}

// ---- screen reader announcements -------------------------------------------------------------
export function announce(text, region = "sr-status") {
  const r = $(region);
  r.textContent = "";
  setTimeout(() => { r.textContent = text; }, 30);
}

// A status said in the old language is not left behind when the language changes.
onLangChange(() => { $("sr-status").textContent = ""; });

// ---- modals: the rest of the page is inert, focus stays inside, and comes back after ---------
const openModals = [];

export function openModal(node, focusEl) {
  if (!openModals.some((m) => m.node === node)) {
    openModals.push({ node, returnTo: document.activeElement });
  }
  node.hidden = false;
  syncInert();
  if (focusEl) setTimeout(() => focusEl.focus(), 0);
}

export function closeModal(node) {
  const i = openModals.findIndex((m) => m.node === node);
  node.hidden = true;
  if (i < 0) return;
  const [m] = openModals.splice(i, 1);
  syncInert();
  const top = openModals[openModals.length - 1];
  if (top) {
    const f = top.node.querySelector("button:not([disabled]):not([hidden])");
    if (f) f.focus();
  } else if (m.returnTo && document.contains(m.returnTo) && !m.returnTo.closest("[inert]")) {
    m.returnTo.focus();
  }
}

function syncInert() {
  const top = openModals[openModals.length - 1];
  for (const id of ["main-view", "login-view", "call-overlay", "incoming", "photo-viewer", "call-outcome", "group-dialog",
    "sheet", "group-call", "group-incoming", "group-outcome"]) {
    const n = $(id);
    if (n) n.inert = !!top && top.node !== n;
  }
}

export function focusable(root) {
  return [...root.querySelectorAll("button, a[href], input, select, textarea, [tabindex]:not([tabindex='-1'])")]
    .filter((e) => !e.disabled && !e.closest("[hidden]") && e.getClientRects().length);
}

// Tab and Shift+Tab cycle inside the open modal.
document.addEventListener("keydown", (ev) => {
  const top = openModals[openModals.length - 1];
  if (!top || ev.key !== "Tab") return;
  const items = focusable(top.node);
  if (!items.length) return;
  const first = items[0];
  const last = items[items.length - 1];
  if (ev.shiftKey && (document.activeElement === first || !top.node.contains(document.activeElement))) {
    ev.preventDefault();
    last.focus();
  } else if (!ev.shiftKey && (document.activeElement === last || !top.node.contains(document.activeElement))) {
    ev.preventDefault();
    first.focus();
  }
});

// ---- sizes and durations -----------------------------------------------------------------------
export function sizeText(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function clock(s) {
  const v = Math.max(0, Math.round(s || 0));
  const h = Math.floor(v / 3600);
  const mm = String(Math.floor((v % 3600) / 60)).padStart(2, "0");
  const ss = String(v % 60).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

export function presenceWord(p) {
  return t(`presence_${p || "offline"}`);
}

// ---- a phone keypad: 1-9, *, 0, # with their letters ------------------------------------------------
const KEYS = [["1", ""], ["2", "ABC"], ["3", "DEF"], ["4", "GHI"], ["5", "JKL"], ["6", "MNO"], ["7", "PQRS"],
  ["8", "TUV"], ["9", "WXYZ"], ["*", ""], ["0", "+"], ["#", ""]];

export function buildKeypad(container, onKey, prefix) {
  container.replaceChildren();
  for (const [d, letters] of KEYS) {
    const b = el("button", { type: "button", className: "key", testid: `${prefix}-${d}` },
      el("span", { className: "digit", text: d }),
      el("span", { className: "letters", "aria-hidden": "true", translate: "no", text: letters }));
    b.addEventListener("click", () => onKey(d));
    container.append(b);
  }
}
