"""The dashboard (`/ui/`) in a real Chromium against the real stack: every page renders
and goes live, changes made where operators make them (a file in git, an instance
registering or falling silent) reach an open page without a reload, and every control
is reachable by keyboard. The DOM hooks used are the contract in
services/registry/ui/README.md."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser.stack import (
    HEARTBEAT_TIMEOUT,
    REMOVAL_TIMEOUT,
    Keepalive,
    Stack,
    manifest_like,
)
from tests.conftest import wait_for

LIVE = 10_000  # ms: page loaded, first reads done, change stream open
CHANGE = 8_000  # ms: a change on disk or in etcd shown (the sync debounces file events)
REAL = "chora.devex.registry"  # one of the eight manifests in capabilities/
PAGES = {
    "overview": "/ui/",
    "capabilities": "/ui/capabilities",
    "capability": f"/ui/capabilities/{REAL}",
    "services": "/ui/services",
    "graph": "/ui/graph",
    "sync": "/ui/sync",
}
FOCUSABLE = 'a[href], button, input, select, textarea, [tabindex="0"]'


def open_live(page: Page, stack: Stack, path: str) -> None:
    """Load ``path``, wait for its title and its change stream, and mark the document
    so a later ``assert_not_reloaded`` can tell a live update from a reload."""
    page.goto(stack.url + path)
    expect(page.locator("main#main h1")).to_be_visible(timeout=LIVE)
    expect(page.locator("#live")).to_have_attribute("data-state", "open", timeout=LIVE)
    page.evaluate("window.__marker = 1")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__marker") == 1, f"{page.url} was reloaded"


def status_cell(row: Locator, status: str) -> Locator:
    """The row's cell that says the status in words (an icon beside it allowed): the
    row's whole text runs cells together ("✓ up1.0.0"), so it is matched cell by cell."""
    return row.get_by_role("cell", name=re.compile(rf"^\W*{status}$"))


def capability_row(page: Page, namespace: str) -> Locator:
    return page.locator(
        f'table[data-testid=capabilities] tbody tr[data-namespace="{namespace}"]')


@pytest.mark.parametrize("path", PAGES.values(), ids=PAGES.keys())
def test_every_page_loads_shows_its_title_and_goes_live(stack: Stack, page: Page,
                                                        path: str) -> None:
    open_live(page, stack, path)
    expect(page.locator("main#main h1")).not_to_have_text("")
    expect(page.locator("#live")).to_contain_text(re.compile(r"\w"))  # said in words too
    assert page.locator('nav[aria-label="Main"] a').count() >= 5  # one link per page
    # console errors and page errors: checked by the `page` fixture at teardown


def test_a_manifest_added_on_disk_appears_in_the_table_and_the_graph_without_reload(
        stack: Stack, page: Page) -> None:
    namespace = "chora.test.added_on_disk"
    open_live(page, stack, "/ui/capabilities")
    graph = page.context.new_page()
    open_live(graph, stack, "/ui/graph")
    expect(capability_row(page, namespace)).to_have_count(0)

    stack.write_manifest("added-on-disk.yaml",
                         manifest_like("chora.devex.gitops_sync.yaml", namespace))

    expect(capability_row(page, namespace)).to_have_count(1, timeout=CHANGE)
    graph.wait_for_function("ns => window.chora?.graph()?.getElementById(ns).length === 1",
                            arg=namespace, timeout=CHANGE)
    assert_not_reloaded(page)
    assert_not_reloaded(graph)


def test_a_registered_instance_is_up_then_unhealthy_then_gone_without_reload(
        stack: Stack, page: Page) -> None:
    name = "browser-probe"
    open_live(page, stack, "/ui/services")
    instance = stack.register(name)
    row = page.locator(f'table[data-testid=services] tbody '
                       f'tr[data-service="{name}"][data-id="{instance}"]')
    # Kept alive only until the page has shown it up: a loaded machine must not turn
    # a slow first paint into a missed 2-second window.
    with Keepalive(stack, [(name, instance)]):
        expect(row).to_have_attribute("data-status", "up", timeout=CHANGE)
        expect(status_cell(row, "up")).to_have_count(1)
    # From here no heartbeat: unhealthy after HEARTBEAT_TIMEOUT, removed after
    # REMOVAL_TIMEOUT (the lease's TTL).
    expect(row).to_have_attribute("data-status", "unhealthy",
                                  timeout=int(HEARTBEAT_TIMEOUT * 1000) + CHANGE)
    expect(status_cell(row, "unhealthy")).to_have_count(1)
    expect(row).to_have_count(0, timeout=REMOVAL_TIMEOUT * 1000 + CHANGE)
    assert_not_reloaded(page)


def test_broken_manifests_are_listed_with_a_reason_and_counted_on_the_overview(
        stack: Stack, page: Page) -> None:
    before = len(stack.sync_errors())
    open_live(page, stack, "/ui/")
    count = page.locator("[data-testid=overview-sync-errors]")
    expect(count).to_have_text(str(before), timeout=LIVE)
    problems = page.context.new_page()
    open_live(problems, stack, "/ui/sync")
    broken = {
        "broken-syntax.yaml": ("apiVersion: chora.dev/v1\nkind: Capability\n"
                               "metadata: [unclosed\n", re.compile("yaml", re.I)),
        "missing-type.yaml": (
            "\n".join(line for line in manifest_like(
                "chora.devex.registry.yaml", "chora.test.missing_type").splitlines()
                if "dc_type:" not in line) + "\n", re.compile("dc_type")),
    }
    try:
        for file, (text, _) in broken.items():
            stack.write_manifest(file, text)
        for file, (_, reason) in broken.items():
            row = problems.locator(f'table[data-testid=sync-errors] tbody tr[data-file="{file}"]')
            expect(row).to_have_count(1, timeout=CHANGE)
            expect(row).to_contain_text(file)
            expect(row).to_contain_text(reason)
        expect(count).to_have_text(str(before + len(broken)), timeout=CHANGE)
    finally:
        for file in broken:
            stack.remove_manifest(file)
    # Fixed in git, gone from the page: the list is the sync's current view.
    expect(problems.locator("table[data-testid=sync-errors] tbody tr[data-file]")
           ).to_have_count(before, timeout=CHANGE)
    expect(count).to_have_text(str(before), timeout=CHANGE)
    assert_not_reloaded(page)
    assert_not_reloaded(problems)


FOCUS_PATH = """el => {
    const parts = [];
    for (; el && el.parentElement; el = el.parentElement)
        parts.unshift(el.tagName.toLowerCase() + ':nth-child(' +
                      (Array.prototype.indexOf.call(el.parentElement.children, el) + 1) + ')');
    return parts.join('>');
}"""
REACHABLE = f"""() => {{
    const path = {FOCUS_PATH};
    return Array.from(document.querySelectorAll('{FOCUSABLE}'))
        .filter(el => !el.disabled && el.getClientRects().length > 0 &&
                      getComputedStyle(el).visibility !== 'hidden' && !el.closest('[inert]'))
        .map(el => path(el));
}}"""


@pytest.mark.parametrize("path", PAGES.values(), ids=PAGES.keys())
def test_tab_reaches_every_control_and_the_skip_link_comes_first(stack: Stack, page: Page,
                                                                  path: str) -> None:
    open_live(page, stack, path)
    wanted = set(page.evaluate(REACHABLE))
    skip = page.locator('a[href="#main"]').first.evaluate(FOCUS_PATH)
    assert skip in wanted, f"no visible controls found on {path}: {wanted}"
    focused: list[str] = []
    for _ in range(min(len(wanted) + 10, 400)):  # bounded: a trap would loop forever
        page.keyboard.press("Tab")
        focused.append(page.evaluate(f"({FOCUS_PATH})(document.activeElement)"))
        if wanted <= set(focused):
            break
    assert focused[0] == skip, f"first Tab stop is {focused[0]}, not the skip link"
    missing = wanted - set(focused)
    assert not missing, f"never reached by Tab on {path}: {sorted(missing)}"


# WCAG 2 contrast of every visible text against the first opaque background behind it:
# 4.5:1, or 3:1 for large text (24 px, or 18.66 px bold). The graph's canvas is not DOM:
# its labels sit on white label backgrounds, and the text list below it says the same.
LOW_CONTRAST = """() => {
  const channel = (c) => {
    c /= 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  };
  const luminance = ({ r, g, b }) =>
    0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const rgba = (text) => {
    const inside = (text.match(/rgba?\\(([^)]*)\\)/) || [, ''])[1];
    const p = inside.split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return p.length < 3 ? null : { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const behind = (el) => {
    for (let n = el; n; n = n.parentElement) {
      const c = rgba(getComputedStyle(n).backgroundColor);
      if (c && c.a > 0.5) return c;
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const low = [];
  for (const el of document.querySelectorAll('body *')) {
    const text = [...el.childNodes].filter((n) => n.nodeType === 3)
      .map((n) => n.textContent).join('').trim();
    if (!text || el.getClientRects().length === 0) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden') continue;
    const [a, b] = [luminance(rgba(style.color)), luminance(behind(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize);
    const need = size >= 24 || (Number(style.fontWeight) >= 700 && size >= 18.66) ? 3 : 4.5;
    const what = `${el.tagName.toLowerCase()} "${text.slice(0, 40)}"`;
    if (ratio < need) low.push(`${what}: ${ratio.toFixed(2)}:1`);
  }
  return low;
}"""


@pytest.mark.parametrize("path", PAGES.values(), ids=PAGES.keys())
def test_every_text_on_every_page_has_enough_contrast(stack: Stack, page: Page,
                                                     path: str) -> None:
    open_live(page, stack, path)
    page.locator("main#main > :not(h1):visible").first.wait_for()  # the data is shown
    assert page.evaluate(LOW_CONTRAST) == []


def test_the_capability_page_shows_each_dependency_with_its_status_word(
        stack: Stack, page: Page) -> None:
    namespace = "chora.test.dependencies"
    requires = (
        "    - {capability: chora.infrastructure.sap_framework, version: ^1.0.0}\n"  # 1.2.0
        "    - {capability: chora.devex.registry, version: '>=2.0.0'}\n"  # holds 1.0.0
        "    - {capability: chora.test.nowhere, version: ^1.0.0}\n"  # no such capability
    )
    stack.write_manifest("dependencies.yaml", manifest_like(
        "chora.devex.gitops_sync.yaml", namespace, requires=requires))
    wait_for(lambda: stack.capability_present(namespace), timeout=CHANGE / 1000,
             what=f"{namespace} projected:\n{stack.logs()}")
    open_live(page, stack, f"/ui/capabilities/{namespace}")
    for dependency, status in (("chora.infrastructure.sap_framework", "satisfied"),
                               ("chora.devex.registry", "unsatisfied"),
                               ("chora.test.nowhere", "missing")):
        row = page.locator(f'table[data-testid=dependencies] tr[data-capability="{dependency}"]')
        expect(row).to_have_attribute("data-status", status, timeout=CHANGE)
        expect(status_cell(row, status)).to_have_count(1)


def screenshot_dir() -> Path | None:
    """$CHORA_UI_SCREENSHOTS (relative to the repository), or None: not saving."""
    value = os.environ.get("CHORA_UI_SCREENSHOTS")
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute():
        path = Path(__file__).resolve().parents[2] / path
    path.mkdir(parents=True, exist_ok=True)
    return path


SHOWCASE = [("orchestrator", 2), ("indexer", 1), ("gateway", 1)]


def wait_until_rendered(page: Page, name: str, instances: list[tuple[str, str]]) -> None:
    """What "fully rendered" means per page: its data shown, not just its frame."""
    if name == "overview":
        expect(page.locator("[data-testid=overview-instances-up]")
               ).to_have_text(re.compile(r"^[1-9]\d*$"), timeout=CHANGE)
        expect(page.locator("tr[data-member]")).to_have_count(3, timeout=CHANGE)
    elif name == "capabilities":
        expect(page.locator("table[data-testid=capabilities] tbody tr[data-namespace]")
               ).not_to_have_count(0, timeout=CHANGE)
    elif name == "capability":
        expect(page.locator("table[data-testid=dependencies] tr[data-status]")
               ).not_to_have_count(0, timeout=CHANGE)
    elif name == "services":
        for _, instance in instances:
            expect(page.locator(f'table[data-testid=services] tr[data-id="{instance}"]')
                   ).to_have_attribute("data-status", "up", timeout=CHANGE)
    elif name == "graph":
        page.wait_for_function("() => window.chora?.graph()?.nodes().length >= 8",
                               timeout=CHANGE)
    elif name == "sync":
        expect(page.locator('table[data-testid=sync-errors] tr[data-file="example-broken.yaml"]')
               ).to_have_count(1, timeout=CHANGE)


def test_each_page_renders_fully_and_is_saved_as_a_screenshot_when_asked(
        stack: Stack, page: Page) -> None:
    """`make screenshots` sets CHORA_UI_SCREENSHOTS=docs/ui: the README's pictures, taken
    with a few instances kept up and one broken manifest, so no page is empty."""
    out = screenshot_dir()
    instances = [(name, stack.register(name)) for name, n in SHOWCASE for _ in range(n)]
    stack.write_manifest("example-broken.yaml", "metadata:\n  dc_identifier: [oops\n")
    try:
        with Keepalive(stack, instances):
            for name, path in PAGES.items():
                open_live(page, stack, path)
                wait_until_rendered(page, name, instances)
                if out is not None:
                    page.screenshot(path=str(out / f"{name}.png"), animations="disabled")
    finally:
        stack.remove_manifest("example-broken.yaml")
        for name, instance in instances:
            stack.deregister(name, instance)
