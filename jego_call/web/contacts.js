// People: your contacts with presence and display names, who you blocked, and the names of
// anyone else who wrote or called (for requests). One store; screens subscribe with onChange.
import { api, ApiError } from "./api.js";
import { socket } from "./socket.js";

const contacts = new Map();   // username -> {username, display_name, presence}
const blocked = new Map();    // username -> {username, display_name}
const names = new Map();      // username -> display name, for anyone we have heard of
const lookups = new Map();    // username -> Promise of /api/users/{name}
const listeners = [];

export const people = {
  contacts,
  blocked,

  onChange(fn) { listeners.push(fn); },

  isContact: (name) => contacts.has(name),
  isBlocked: (name) => blocked.has(name),

  // What people see for `name`: the display name when we know it, else the username.
  nameOf(name) { return names.get(name) || name; },

  // Our own connection decides what presence means: offline, nobody's is known.
  presenceOf(name) {
    const c = contacts.get(name);
    if (!c || !socket.online) return "offline";
    return c.presence;
  },

  learn(username, displayName) {
    if (!username || !displayName || names.get(username) === displayName) return;
    names.set(username, displayName);
    const c = contacts.get(username);
    if (c) c.display_name = displayName;
    changed();
  },

  // The display name of someone who is not a contact (a request), fetched once.
  lookup(name) {
    if (names.has(name)) return Promise.resolve(names.get(name));
    if (!lookups.has(name)) {
      const p = api("GET", `/api/users/${encodeURIComponent(name)}`)
        .then((u) => { people.learn(u.username, u.display_name); return u.display_name; })
        .catch(() => { lookups.delete(name); return name; });
      lookups.set(name, p);
    }
    return lookups.get(name);
  },

  async load() {
    const data = await api("GET", "/api/contacts");
    contacts.clear();
    blocked.clear();
    for (const c of data.contacts) { contacts.set(c.username, { ...c }); names.set(c.username, c.display_name); }
    for (const b of data.blocked || []) { blocked.set(b.username, b); names.set(b.username, b.display_name); }
    changed();
  },

  async add(name) {
    const data = await api("POST", "/api/contacts", { username: name });
    contacts.set(data.username, { username: data.username, display_name: data.display_name, presence: data.presence });
    names.set(data.username, data.display_name);
    blocked.delete(data.username);
    changed();
    return data;
  },

  async remove(name) {
    try {
      await api("DELETE", `/api/contacts/${encodeURIComponent(name)}`);
    } catch (e) {
      if (!(e instanceof ApiError) || e.code !== "not_contact") throw e;
    }
    contacts.delete(name);
    changed();
  },

  async block(name) {
    const data = await api("POST", "/api/blocks", { username: name });
    contacts.delete(data.username);
    blocked.set(data.username, data);
    changed();
  },

  async unblock(name) {
    try {
      await api("DELETE", `/api/blocks/${encodeURIComponent(name)}`);
    } catch (e) {
      if (!(e instanceof ApiError) || e.code !== "not_found") throw e;
    }
    blocked.delete(name);
    changed();
  },

  clear() { contacts.clear(); blocked.clear(); names.clear(); lookups.clear(); changed(); },
};

function changed() {
  for (const fn of listeners) { try { fn(); } catch (e) { console.error(e); } }
}

socket.on("presence", (msg) => {
  if (msg.display_name) names.set(msg.username, msg.display_name);
  const c = contacts.get(msg.username);
  if (c) {
    c.presence = msg.presence;
    if (msg.display_name) c.display_name = msg.display_name;
  }
  changed();
});

socket.onState(() => changed());
