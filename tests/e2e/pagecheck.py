"""Checks of a page as people meet it: the visible text against the locale table, axe-core's
accessibility rules, sideways scrolling, screenshots kept as test artefacts, keyboard focus.

axe-core is vendored in tests/data/axe-core (from its npm package) and injected from disk: no
network at test time. Screenshots go to $JEGO_TEST_ARTIFACTS (default tests/artifacts/screens,
ignored by git).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

from ..conftest import ROOT

AXE = ROOT / "tests" / "data" / "axe-core" / "axe.min.js"
ARTIFACTS = Path(os.environ.get("JEGO_TEST_ARTIFACTS", ROOT / "tests" / "artifacts")) / "screens"
LATIN = re.compile(r"[A-Za-z]")
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")

# Walks the visible text of the page (text nodes, placeholders, accessible labels) and returns
# what is neither in the page's locale table nor in the server's reason words for the language.
# User content and names are marked translate="no"; text localised by the server (operator and
# city names) carries data-l10n="server" and is judged by its script only; <time> is Intl's.
WALK_JS = r"""
async () => {
  const lang = document.documentElement.lang;
  const { STRINGS } = await import("/static/i18n.js");
  const reasons = await (await fetch("/api/reasons")).json();
  const short = lang === "zh-CN" ? "zh" : "en";
  const table = [...Object.values(STRINGS[lang])];
  for (const r of Object.values(reasons)) table.push(r[short], r[`phone_${short}`], r[`callee_${short}`]);
  const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const norm = (s) => s.replace(/\s+/g, " ").trim();
  const pats = table.map((s) => new RegExp("^" + esc(norm(s)).replace(/\\\{\w+\\\}/g, "([\\s\\S]+?)") + "$"));
  const visible = (e) => e.checkVisibility({ checkOpacity: true, checkVisibilityCSS: true });
  const skip = (e) => e.closest("[translate=no], script, style, svg, option");
  const found = [];
  const judge = (text, where, e) => {
    text = norm(text);
    if (!text || !/\p{L}/u.test(text)) return;
    if (e.closest("time, [data-l10n=server]")) {
      found.push({ text, where, script_only: true });
      return;
    }
    // a template's {name} is whoever it names: only the table's own words are judged by script
    for (const p of pats) {
      const m = p.exec(text);
      if (!m) continue;
      let literal = text;
      for (const part of m.slice(1)) literal = literal.replace(part, "");
      found.push({ text, where, known: true, literal });
      return;
    }
    found.push({ text, where, known: false });
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const n = walker.currentNode;
    const e = n.parentElement;
    if (!e || skip(e) || !visible(e)) continue;
    judge(n.textContent, "text", e);
  }
  for (const e of document.body.querySelectorAll("[placeholder], [aria-label], [alt], [title]")) {
    if (skip(e) || !visible(e) || e.closest("[aria-hidden=true]")) continue;
    for (const a of ["placeholder", "aria-label", "alt", "title"]) if (e.hasAttribute(a)) judge(e.getAttribute(a), a, e);
  }
  return { lang, found };
}
"""


def untranslated(page: Page) -> list[str]:
    """Visible strings that are not in the page language's tables, or in the other script."""
    result: dict[str, Any] = page.evaluate(WALK_JS)
    lang = result["lang"]
    wrong_script = LATIN if lang == "zh-CN" else CJK
    bad = []
    for item in result["found"]:
        text = item["text"]
        if wrong_script.search(item.get("literal", text)):
            bad.append(f"{item['where']}: {text!r} (wrong script)")
        elif not item.get("script_only") and not item.get("known"):
            bad.append(f"{item['where']}: {text!r} (not in the locale table)")
    return bad


def axe_violations(page: Page, impacts: tuple[str, ...] = ("serious", "critical")) -> list[str]:
    """axe-core's violations of the given impact on the page as it is now."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    result: list[dict[str, Any]] = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' ') + ': ' + n.failureSummary)}))")
    return [f"{v['id']} ({v['impact']}): {v['help']} -> {v['nodes']}" for v in result if v["impact"] in impacts]


def sideways(page: Page) -> tuple[int, int]:
    """(document.documentElement.scrollWidth, innerWidth): no sideways scrolling when the first <= the second."""
    w: list[int] = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    return w[0], w[1]


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


# Leftovers of a developer page: the browser's raw file control, monospace counters, and any
# element of the page that sticks out of the viewport (the self-view cut off at 390 px).
LEFTOVERS_JS = r"""
() => {
  const out = [];
  const seen = (e) => e.checkVisibility({ checkOpacity: true, checkVisibilityCSS: true });
  for (const e of document.querySelectorAll("input[type=file]")) if (seen(e)) out.push("a raw file input is visible");
  for (const e of document.querySelectorAll("pre, code")) if (seen(e)) out.push("a monospace block is visible");
  for (const e of document.querySelectorAll("video, .avatar, button, input")) {
    if (!seen(e) || e.closest(".message-scroll, .panel")) continue;  // lists scroll inside themselves
    const r = e.getBoundingClientRect();
    if (r.width && (r.left < -1 || r.right > innerWidth + 1 || r.top < -1 || r.bottom > innerHeight + 1)) {
      out.push(`${e.getAttribute("data-testid") || e.id || e.className} is cut off at ${JSON.stringify([r.left, r.top, r.right, r.bottom])}`);
    }
  }
  if (window.scrollY !== 0 || document.scrollingElement.scrollTop !== 0) out.push("the page itself scrolled");
  return out;
}
"""


def check_screen(page: Page, name: str, *, axe: bool = True) -> list[str]:
    """Everything a main screen must satisfy; returns the problems (empty: fine)."""
    problems = []
    width, inner = sideways(page)
    if width > inner:
        problems.append(f"{name}: scrolls sideways ({width} > {inner})")
    problems += [f"{name}: {p}" for p in page.evaluate(LEFTOVERS_JS)]
    problems += [f"{name}: {p}" for p in untranslated(page)]
    if axe:
        problems += [f"{name}: {p}" for p in axe_violations(page)]
    screenshot(page, name)
    return problems


def focused_testid(page: Page) -> str | None:
    value: str | None = page.evaluate("document.activeElement && document.activeElement.getAttribute('data-testid')")
    return value


def tab_to(page: Page, testid: str, limit: int = 60, back: bool = False) -> None:
    """Press Tab (or Shift+Tab) until the element with `testid` has the focus."""
    for _ in range(limit):
        if focused_testid(page) == testid:
            return
        page.keyboard.press("Shift+Tab" if back else "Tab")
    raise AssertionError(f"{testid} is not reachable with the keyboard (focus on {focused_testid(page)})")


def focus_ring_visible(page: Page) -> bool:
    """The focused element (or its icon) draws a focus outline."""
    return bool(page.evaluate("""() => {
        const e = document.activeElement;
        if (!e || e === document.body) return false;
        const on = (x) => { const s = getComputedStyle(x); return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0; };
        return on(e) || [...e.querySelectorAll('*')].some(on) || (e.parentElement && on(e.parentElement));
    }"""))
