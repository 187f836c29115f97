// Prepaid credit on the "Call phones" tab (GET /api/credit, docs/signalling.md "Credit and
// rates"): the available balance in the page's language, a warning under `billing.low_balance`,
// and why phone calls are suspended when they are. Loaded at sign-in, when the socket comes
// back, after every call and when a call's credit runs low (calls.js).
import { api, session } from "./api.js";
import { fmt, getLang, onLangChange, t } from "./i18n.js";
import { $ } from "./ui.js";

let last = null;  // the latest GET /api/credit answer

function render() {
  const line = $("credit-line");
  const low = $("credit-low");
  const susp = $("credit-suspended");
  if (!last || !last.enabled) {
    line.hidden = low.hidden = susp.hidden = true;
    return;
  }
  const money = (minor) => fmt.money(minor, last.currency, last.minor_units);
  $("credit-balance").textContent = t("credit_balance", { amount: money(last.available) });
  line.dataset.available = String(last.available);
  line.hidden = false;
  low.textContent = t("credit_low", { amount: money(last.low_balance) });
  low.hidden = !last.low || !!last.suspended;
  susp.textContent = last.suspended ? (getLang() === "zh-CN" ? last.suspended.zh : last.suspended.en) : "";
  susp.hidden = !last.suspended;
}

export async function loadCredit() {
  if (!session.token) return;
  try {
    last = await api("GET", "/api/credit?limit=1");
  } catch (e) {
    return;  // the tab keeps what it showed; the connection banner speaks for the network
  }
  render();
}

export function resetCredit() { last = null; render(); }

window.addEventListener("jego:call-ended", () => loadCredit());
window.addEventListener("jego:credit-low", () => loadCredit());
onLangChange(render);
