// Jego Call web client: the entry module. Sign-in, the tabs (Chats, Calls, Phone, Me), the
// connection bar, and the "Me" screen; everything else lives in its own module:
//   api.js (HTTP, signed media links, reason words)   socket.js (the signalling WebSocket)
//   contacts.js (people, presence, blocks)             chat.js (conversations and messages)
//   calls.js (the call state machine and overlays)     dialpad.js (the "Call phones" tab)
//   history.js (the "Calls" tab)                       i18n.js (zh-CN and en)   ui.js (DOM helpers)
//   credit.js (prepaid credit on the "Call phones" tab)
// Protocol: docs/signalling.md. No framework, no build step.
import { api, ApiError, clearSession, loadReasons, saveSession, session, setDisplayName } from "./api.js";
import { updateButtons } from "./calls.js";
import { closeChat, openChat, renderList } from "./chat.js";
import { people } from "./contacts.js";
import { loadCredit } from "./credit.js";
import { loadHistory, markSeen } from "./history.js";
import { apply, getLang, onLangChange, setLang, t } from "./i18n.js";
import { socket } from "./socket.js";
import { $, announce, banner, clearBanner, el, fillAvatar } from "./ui.js";
import "./dialpad.js";
import "./groupcall.js";

const TABS = ["chats", "calls", "phone", "me"];
let signedIn = false;
let everOnline = false;

// ---- language -------------------------------------------------------------------------------------
function syncLangSelects() {
  for (const id of ["login-lang", "lang-select"]) $(id).value = getLang();
}

for (const id of ["login-lang", "lang-select"]) {
  $(id).addEventListener("change", (ev) => setLang(ev.target.value));
}
onLangChange(() => {
  syncLangSelects();
  showConnection(socket.state);
  renderMe();
  renderBlocked();
});

// ---- sign-in ---------------------------------------------------------------------------------------------
const LOGIN_ERRORS = {
  auth_failed: "err_wrong_password", username_taken: "err_username_taken", invalid_username: "err_invalid_username",
  weak_password: "err_weak_password", invalid_display_name: "err_invalid_display_name", network: "err_network",
  rate_limited: "err_rate_limited",
};

async function authenticate(kind) {
  const username = $("login-username").value.trim();
  const password = $("login-password").value;
  const body = { username, password };
  if (kind === "register" && $("login-display-name").value.trim()) body.display_name = $("login-display-name").value;
  if (!username || !password) {
    showLoginError(t("err_fill_in"));
    ($("login-username").value.trim() ? $("login-password") : $("login-username")).focus();
    return;
  }
  setBusy(true);
  try {
    const data = await api("POST", kind === "register" ? "/api/register" : "/api/login", body);
    saveSession(data);
    showLoginError("");
    await enter();
  } catch (e) {
    showLoginError(t(LOGIN_ERRORS[e.code] || "err_generic"));
  } finally {
    setBusy(false);
  }
}

function setBusy(on) {
  $("login-submit").disabled = on;
  $("register-submit").disabled = on;
}

function showLoginError(text) {
  $("login-error").textContent = text;
  $("login-error").hidden = !text;
}

async function enter() {
  $("login-view").hidden = true;
  $("main-view").hidden = false;
  signedIn = true;
  document.body.classList.add("signed-in");
  renderMe();
  showTab("chats");
  loadReasons();
  try {
    await people.load();
  } catch (e) {
    if (e.status === 401) { logout(); showLoginError(t("err_session_expired")); return; }
    if (e.code === "network") banner(t("err_network"), "network");
  }
  loadHistory();
  loadCredit();
  socket.connect();
}

function logout() {
  clearSession();
  socket.close();
  location.reload();
}

socket.on("error", (msg) => { if (msg.code === "auth_failed") logout(); });

// ---- connection state ------------------------------------------------------------------------------------
function showConnection(state) {
  $("conn").textContent = t(`conn_${state}`);
  $("conn").dataset.state = state;
  $("reconnecting").hidden = !signedIn || state === "online" || !everOnline;
  $("main-view").classList.toggle("offline", state !== "online");
}

socket.onState((state) => {
  if (state === "online") {
    everOnline = true;
    clearBanner("network");
    people.load().catch(() => {});
    loadHistory();
    loadCredit();
  }
  showConnection(state);
  updateButtons();
  renderList();
});

// ---- tabs ---------------------------------------------------------------------------------------------------
function showTab(name) {
  for (const tab of TABS) {
    $(`panel-${tab}`).hidden = tab !== name;
    const btn = $(`tab-${tab}`);
    if (tab === name) btn.setAttribute("aria-current", "page"); else btn.removeAttribute("aria-current");
  }
  document.body.dataset.tab = name;
  if (name === "calls") markSeen();
  if (name === "phone") loadCredit();
  if (name !== "chats") closeChat();
}

for (const tab of TABS) $(`tab-${tab}`).addEventListener("click", () => showTab(tab));

// ---- contacts ----------------------------------------------------------------------------------------------------
const ADD_ERRORS = {
  unknown_user: "err_unknown_user", self_contact: "err_self_contact", invalid_username: "err_invalid_username",
  network: "err_network",
};

async function addContact(ev) {
  ev.preventDefault();
  const name = $("contact-add-input").value.trim().toLowerCase();
  const error = $("contact-add-error");
  if (!name) { error.textContent = t("err_type_username"); $("contact-add-input").focus(); return; }
  try {
    const data = await people.add(name);
    $("contact-add-input").value = "";
    error.textContent = "";
    announce(t("added", { name: data.display_name }));
    renderList();
  } catch (e) {
    if (e.code === "network") { error.textContent = ""; banner(t("err_network"), "network"); return; }
    error.textContent = t(ADD_ERRORS[e.code] || "err_generic", { name });
  }
}

$("contact-add-form").addEventListener("submit", addContact);

// ---- Me -------------------------------------------------------------------------------------------------------------
function renderMe() {
  if (!session.username) return;
  const shown = session.displayName || session.username;
  $("me").textContent = session.username;
  $("me-name").textContent = shown;
  $("me-card-name").textContent = shown;
  fillAvatar($("me-avatar"), shown, session.username);
  fillAvatar($("me-card-avatar"), shown, session.username);
  if (document.activeElement !== $("me-display-name")) $("me-display-name").value = shown;
  const perm = typeof Notification === "undefined" ? "unsupported" : Notification.permission;
  $("notify-state").textContent = t(`notify_${perm}`);
  $("notify-enable").hidden = perm !== "default";
}

function renderBlocked() {
  const ul = $("blocked-list");
  const names = [...people.blocked.keys()].sort();
  ul.replaceChildren(...names.map((n) => el("li", {},
    el("span", { className: "b-name", translate: "no", text: people.nameOf(n) === n ? n : `${people.nameOf(n)} (${n})` }),
    el("button", { type: "button", className: "small", testid: `unblock-${n}`, text: t("unblock"),
      onclick: async () => {
        try { await people.unblock(n); announce(t("unblocked_done", { name: n })); } catch (e) { banner(t("err_generic")); }
      } }))));
  $("blocked-empty").hidden = names.length > 0;
}

people.onChange(renderBlocked);

$("me-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = $("me-status");
  try {
    const data = await api("PATCH", "/api/me", { display_name: $("me-display-name").value });
    setDisplayName(data.display_name);
    $("me-display-name").value = data.display_name;
    renderMe();
    status.textContent = t("saved");
  } catch (e) {
    status.textContent = t(e instanceof ApiError && e.code === "invalid_display_name" ? "err_invalid_display_name"
      : e.code === "network" ? "err_network" : "err_generic");
  }
});

$("notify-enable").addEventListener("click", async () => {
  try { await Notification.requestPermission(); } catch (e) { /* refused */ }
  renderMe();
});

$("logout").addEventListener("click", logout);
$("login-form").addEventListener("submit", (ev) => { ev.preventDefault(); authenticate("login"); });
$("register-submit").addEventListener("click", () => authenticate("register"));
$("banner-close").addEventListener("click", () => banner(null));

// ---- start ------------------------------------------------------------------------------------------------------------
apply(document);
syncLangSelects();
showConnection("offline");
if (session.token) enter();
else setTimeout(() => $("login-username").focus(), 0);

// For tests and debugging.
window.jegoApp = { openChat, showTab, get lang() { return getLang(); } };
