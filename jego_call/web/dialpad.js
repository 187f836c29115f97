// The "Call phones" tab: a dial pad that accepts only phone-number characters, formats the
// number as it is typed (phonenumbers' rules, on the server: GET /api/numbers/check), says why a
// number cannot be called before anything is dialled, shows the price per minute when billing
// provides one (and the caller's credit: credit.js), and lists recent numbers.
import { ApiError, checkNumber, reasonWords } from "./api.js";
import { fmt, getLang, onLangChange, t } from "./i18n.js";
import { placeCall, refuse } from "./calls.js";
import { $, banner, buildKeypad, el, icon, phoneNumber } from "./ui.js";

const ALLOWED = /[0-9+*#() .\-\u00a0\u3000０-９＋]/;
const input = $("dialpad-input");
let last = null;     // the latest check result shown
let recent = [];     // E.164 numbers, newest first
let hintKey = null;  // a hint from the page itself (not from a check)
let typing = 0;      // counts input events: an answer for an older one is dropped

const FULL_WIDTH = { "０": "0", "１": "1", "２": "2", "３": "3", "４": "4", "５": "5", "６": "6", "７": "7", "８": "8", "９": "9", "＋": "+" };

function clean(value) {
  let out = "";
  let refused = false;
  for (const ch of value) {
    if (!ALLOWED.test(ch)) { refused = true; continue; }
    out += FULL_WIDTH[ch] || ch;
  }
  return { value: out, refused };
}

function setHint(text, kind = "info") {
  const h = $("dialpad-hint");
  if (Array.isArray(text)) {
    h.replaceChildren();
    text.forEach((part, i) => { if (i) h.append(" · "); h.append(part); });
  } else {
    h.textContent = text || "";
  }
  h.dataset.kind = kind;
}

// "China Mobile · Beijing · mobile": operator and city come localised from the server.
function describe(check) {
  const zh = getLang() === "zh-CN";
  const parts = [];
  const op = zh ? check.operator_zh : check.operator;
  const city = zh ? check.city_zh : check.city;
  if (op) parts.push(el("span", { "data-l10n": "server", text: op }));
  if (city) parts.push(el("span", { "data-l10n": "server", text: city }));
  const kind = { mobile: "kind_mobile", fixed: "kind_fixed", satellite: "kind_satellite", foreign: "kind_foreign" }[check.kind];
  if (kind) parts.push(el("span", { text: t(kind) }));
  return parts;
}

// "0.15 CNY a minute · billed per minute" (每分钟0.15元 · 按分钟计费), before anything is dialled.
function priceWords(p) {
  const code = p.currency || "";
  const parts = [t("price_per_minute", { price: fmt.amount(p.per_minute, code) })];
  const inc = p.increment ? p.increment.split("/").map(Number) : [];
  if (inc.length === 2 && inc[0] === inc[1]) {
    parts.push(inc[0] === 60 ? t("billed_per_minute") : inc[0] === 1 ? t("billed_per_second") : t("billed_per_s", { s: inc[0] }));
  }
  if (p.connection_fee) parts.push(t("connection_fee", { fee: fmt.amount(p.connection_fee, code) }));
  return parts.map((text) => el("span", { text }));
}

function show(check) {
  last = check;
  hintKey = null;
  const price = $("dialpad-price");
  if (check.price && check.price.per_minute) {
    price.replaceChildren();
    priceWords(check.price).forEach((part, i) => { if (i) price.append(" · "); price.append(part); });
    price.hidden = false;
  } else {
    price.hidden = true;
  }
  if (!check.callable && check.complete && check.reason) {
    setHint(reasonWords(check.reason, { phone: true }) || check.words[getLang() === "zh-CN" ? "zh" : "en"], "refusal");
  } else if (check.callable) {
    setHint(describe(check));
  } else {
    setHint("");
  }
}

async function onInput(ev) {
  const mine = ++typing;
  const { value, refused } = clean(input.value);
  if (refused) {
    const at = input.selectionStart;
    input.value = value;
    input.setSelectionRange(Math.max(0, at - 1), Math.max(0, at - 1));
    hintKey = "dial_only_digits";
    setHint(t("dial_only_digits"), "refusal");
  }
  if (!value.trim()) { last = null; if (!refused) setHint(""); $("dialpad-price").hidden = true; return; }
  const deleting = ev && ev.inputType && ev.inputType.startsWith("delete");
  try {
    const check = await checkNumber(value);
    if (mine !== typing || input.value !== value) return;  // typed on meanwhile
    if (!deleting && check.formatted && check.formatted !== value && check.formatted.replace(/\D/g, "") === value.replace(/\D/g, "")) {
      const atEnd = input.selectionStart === value.length;
      input.value = check.formatted;
      if (atEnd) input.setSelectionRange(input.value.length, input.value.length);
    }
    if (!refused) show(check);
  } catch (e) {
    if (e instanceof ApiError && e.code === "network") banner(t("err_network"), "network");
  }
}

function typeKey(d) {
  input.value += d;
  input.dispatchEvent(new InputEvent("input", { inputType: "insertText", data: d }));
}

function backspace() {
  const digits = input.value.replace(/\s+$/, "");
  input.value = digits.slice(0, -1).replace(/\s+$/, "");
  input.dispatchEvent(new InputEvent("input", { inputType: "deleteContentBackward" }));
  input.focus();
}

export async function callPhone(ev) {
  if (ev) ev.preventDefault();
  const typed = clean(input.value).value.trim();
  if (!typed) { setHint(t("dial_type_first"), "refusal"); input.focus(); return; }
  let check;
  try {
    check = await checkNumber(typed);
  } catch (e) {
    banner(t(e instanceof ApiError && e.code === "network" ? "err_network" : "err_generic"), "network");
    return;
  }
  show(check);
  if (!check.callable) {
    refuse(check.e164 || typed, check.reason || "invalid_number", check.detail);
    return;
  }
  remember(check.e164);
  placeCall("audio", check.e164, { phone: true });
}

function remember(e164) {
  recent = [e164, ...recent.filter((n) => n !== e164)].slice(0, 5);
  renderRecent();
}

function renderRecent() {
  const ul = $("recent-numbers");
  ul.replaceChildren(...recent.map((n) => {
    const fill = el("button", { type: "button", className: "recent", testid: "recent-number",
      "aria-label": t("use_number", { number: n }) }, icon("history"), phoneNumber(null, n));
    fill.addEventListener("click", () => { input.value = n; onInput(); input.focus(); });
    checkNumber(n).then((c) => { if (c.international) fill.replaceChildren(icon("history"), phoneNumber(c.international, n)); }).catch(() => {});
    return el("li", {}, fill);
  }));
  $("recent-title").hidden = recent.length === 0;
}

// The call history tells us which numbers were called lately.
window.addEventListener("jego:history", (ev) => {
  const fromHistory = ev.detail.calls.filter((c) => c.peer_kind === "phone" && c.peer.startsWith("+")).map((c) => c.peer);
  recent = [...new Set([...recent, ...fromHistory])].slice(0, 5);
  renderRecent();
});

input.addEventListener("input", onInput);
$("dialpad-form").addEventListener("submit", callPhone);
$("dialpad-backspace").addEventListener("click", backspace);
buildKeypad($("dialpad-keys"), typeKey, "dialkey");
onLangChange(() => {
  if (hintKey) setHint(t(hintKey), "refusal");
  else if (last) show(last);
  renderRecent();
});
