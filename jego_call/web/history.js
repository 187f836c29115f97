// The "Calls" tab: call history (GET /api/calls) with missed calls marked from the callee's
// side, the outcome in plain words, what a paid phone call cost, and a call-back button on every entry.
import { api, checkNumber, isMissed, loadReasons, reasonWords, session } from "./api.js";
import { placeCall } from "./calls.js";
import { noteCaller } from "./chat.js";
import { people } from "./contacts.js";
import { fmt, onLangChange, t } from "./i18n.js";
import { $, avatar, banner, clock, el, icon, phoneNumber } from "./ui.js";

const ANSWERED = new Set(["hangup", "max_duration", "media_timeout"]);
let calls = [];

// "Outgoing · 02:13" for answered calls, else the outcome's words from the callee's or the
// caller's side ("Missed call", "No answer").
function outcome(c) {
  const phone = c.peer_kind === "phone";
  const incoming = c.direction === "incoming";
  const span = el("span", { className: "h-outcome" });
  if (ANSWERED.has(c.outcome) && c.answered_at) {
    span.append(el("span", { text: t(incoming ? "history_incoming" : "history_outgoing") }), " · ",
      el("span", { translate: "no", className: "timer", text: clock(c.duration_s) }));
    if (c.quality && c.mos != null) {
      // the call's E-model score (ITU-T G.107), stored when it ended: "Good connection · MOS 4.4"
      span.append(" · ", el("span", {
        className: "h-quality", testid: "call-history-quality", "data-quality": c.quality,
        "data-mos": String(c.mos), text: t("history_quality", { quality: t(`quality_${c.quality}`), mos: c.mos.toFixed(1) }),
      }));
    }
  } else {
    span.textContent = reasonWords(c.outcome, { phone, callee: incoming }) || c.outcome;
  }
  return span;
}

function itemFor(c) {
  const phone = c.peer_kind === "phone";
  const incoming = c.direction === "incoming";
  const missed = incoming && isMissed(c.outcome);
  const name = phone ? null : (c.display_name || people.nameOf(c.peer));
  const who = el("span", { className: "h-name" });
  if (phone) {
    who.append(phoneNumber(null, c.peer));
    checkNumber(c.peer).then((k) => { if (k.international) who.replaceChildren(phoneNumber(k.international, c.peer)); }).catch(() => {});
  } else {
    who.append(el("span", { translate: "no", text: name }));
  }
  const arrow = icon(missed ? "missed" : incoming ? "incoming" : "outgoing", `icon dir ${missed ? "missed" : ""}`);
  const sub = el("span", { className: "h-sub" }, arrow,
    outcome(c),
    el("time", { datetime: new Date(c.started_at * 1000).toISOString(), text: fmt.when(c.started_at) }));
  if (c.cost !== null && c.cost !== undefined && c.cost_text) {  // a paid phone call: what it cost
    sub.append(el("span", { className: "h-cost", testid: "call-cost", "data-cost": String(c.cost),
      text: t("history_cost", { amount: fmt.amount(c.cost_text.split(" ")[0], c.currency) }) }));
  }
  const back = el("button", {
    type: "button", className: "icon-btn call-back", testid: "call-back",
    "aria-label": t("call_back", { name: phone ? c.peer : name }),
  }, icon(c.media && c.media.includes("video") ? "video" : "phone"));
  back.addEventListener("click", () => {
    if (phone) placeCall("audio", c.peer, { phone: true });
    else placeCall(c.media && c.media.includes("video") ? "video" : "audio", c.peer);
  });
  const av = phone ? el("span", { className: "avatar phone", "aria-hidden": "true" }, icon("phone")) : avatar(name, c.peer);
  return el("li", {
    testid: "call-history-item", className: missed ? "missed" : "", "data-call-id": c.call_id,
    "data-outcome": c.outcome, "data-missed": String(missed), "data-direction": c.direction,
  }, av, el("div", { className: "h-main" }, who, sub), back);
}

function render() {
  const ul = $("call-history");
  ul.replaceChildren(...calls.map(itemFor));
  $("history-empty").hidden = calls.length > 0;
  const seen = Number(localStorage.getItem(`jego.calls_seen.${session.username || ""}`) || 0);
  const missed = calls.filter((c) => c.direction === "incoming" && isMissed(c.outcome) && c.started_at > seen).length;
  const badge = $("tab-calls-badge");
  badge.textContent = String(missed);
  badge.hidden = missed === 0 || !$("panel-calls").hidden;
}

export async function loadHistory() {
  try {
    await loadReasons();
    const data = await api("GET", "/api/calls?limit=50");
    calls = data.calls;
    for (const c of calls) {
      if (c.peer_kind === "user" && c.display_name) people.learn(c.peer, c.display_name);
      if (c.peer_kind === "user" && c.direction === "incoming") noteCaller(c.peer);
    }
    render();
    window.dispatchEvent(new CustomEvent("jego:history", { detail: { calls } }));
  } catch (e) {
    if (e.code === "network") banner(t("err_network"), "network");
  }
}

// Opening the Calls tab clears its missed-call badge.
export function markSeen() {
  const newest = calls.reduce((m, c) => Math.max(m, c.started_at), 0);
  if (newest) localStorage.setItem(`jego.calls_seen.${session.username || ""}`, String(newest));
  $("tab-calls-badge").hidden = true;
}

export function resetHistory() { calls = []; $("call-history").replaceChildren(); }

window.addEventListener("jego:call-ended", () => loadHistory());
$("history-refresh").addEventListener("click", loadHistory);
onLangChange(render);
