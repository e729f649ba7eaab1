"""Benchmark the dashboard (/ui/) at scale, beside a naive baseline; prints a markdown table.

    .venv/bin/python scripts/bench_ui.py [--capabilities 1000] [--instances 1000]
                                         [--loads 5] [--changes 20]

Set-up, all on 127.0.0.1: a fresh 3-member etcd cluster on random ports; the sync
(`python -m services.gitops_sync`) over a generated corpus of ~1.6 KB manifests
(scripts/bench_sync.py's write_corpus); the heartbeat daemon with its production TTL
30 s / interval 10 s; the registry (`python -m services.registry`) with its production
timeouts 30 s / 60 s; the instances registered through the API over ten names and kept
alive by one heartbeat PUT each every 20 s from a thread. Debian's Chromium, headless,
driven by Playwright, one fresh context (empty cache) per cold load.

Measured:
  first paint        `first-contentful-paint` (performance.getEntriesByType('paint')) of
                     /ui/capabilities, and the time from navigation start until its table
                     shows every capability (checked each animation frame), and until the
                     overview's counts show every capability and instance. Median of
                     --loads cold loads each.
  change shown       a page open and live; a MutationObserver in it records Date.now()
                     when the new row (or count) appears. Time from time.time() just
                     before the write (same machine, same clock): on the overview, an
                     instance registered through the API (count of instances up + 1); on
                     the capabilities page, a new capability's keys put into etcd as the
                     sync writes them, and, end to end, a manifest file saved (this one
                     includes the sync's file-event debounce). p50/p95 of --changes.
  naive baseline     what an operator without live updates does: write, then reload the
                     page; time from the write until the reloaded page shows the change.
  tab memory         with /ui/capabilities open at full size (the only tab): the RSS of
                     Chromium's renderer process (--type=renderer, found under this
                     process in /proc; the largest), its PSS (shared pages divided
                     among the processes sharing them), and the JS heap (CDP
                     Performance.getMetrics JSHeapUsedSize).

Goals printed beside the figures (not pass/fail): first paint < 1 s, change shown
< 200 ms after the etcd write, tab < 100 MB. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from bench_sync import write_corpus  # noqa: E402
from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

from chora_manifests.parsing import parse  # noqa: E402
from services.core.kv import Put  # noqa: E402
from services.core.localcluster import LocalCluster, free_ports  # noqa: E402
from services.core.store import Store  # noqa: E402
from services.gitops_sync.projection import project  # noqa: E402
from tests.integration.daemon_processes import (  # noqa: E402
    heartbeat_command,
    logs,
    running,
    sync_command,
)

NAMES = [f"bench-svc-{i:02}" for i in range(10)]
KEEPALIVE = 20.0  # s between two heartbeats of one instance (registry timeout: 30 s)
ROWS = "table[data-testid=capabilities] tbody tr[data-namespace]"
TOTAL = """() => {
    const n = id => Number((document.querySelector(`[data-testid=overview-${id}]`)
                            ?.textContent || '').replace(/\\D/g, '') || 0);
    return [n('capabilities'), n('instances-up') + n('instances-unhealthy') +
            n('instances-unknown')];
}"""
COUNTS = f"""([caps, instances]) => {{
    const [c, i] = ({TOTAL})();
    return c >= caps && i >= instances ? performance.now() : false;
}}"""
ALL_ROWS = f"""n => document.querySelectorAll('{ROWS}').length >= n ? performance.now() : false"""
# The change is shown: a row matching ``selector``, or (selector null) the overview's
# instances (up + unhealthy + unknown: heartbeats may move one between them) at ``total``.
HIT = f"(selector, total) => selector === null ? ({TOTAL})()[1] === total" \
      " : document.querySelector(selector) !== null"
SHOWN = f"([selector, total]) => ({HIT})(selector, total) ? Date.now() : false"
ARM = f"""([selector, total]) => {{
    window.__seen = null;
    const observer = new MutationObserver(() => {{
        if (({HIT})(selector, total)) {{ window.__seen = Date.now(); observer.disconnect(); }}
    }});
    observer.observe(document.body, {{childList: true, subtree: true, characterData: true}});
}}"""


@dataclass
class Stack:
    url: str
    http: httpx.Client
    store: Store
    capabilities: Path
    instances: list[tuple[str, str]]


def wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll with a deadline (set-up only; measurements use the page's own clock)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


@contextmanager
def stack(root: Path, n_caps: int) -> Iterator[Stack]:
    corpus = root / "capabilities"
    write_corpus(corpus, n_caps)
    cluster = LocalCluster.ephemeral(root / "etcd").start()
    try:
        endpoints = cluster.endpoints
        heartbeat = heartbeat_command(endpoints)
        heartbeat[heartbeat.index("--ttl") + 1] = "30"
        heartbeat[heartbeat.index("--interval") + 1] = "10"
        port = free_ports(1)[0]
        registry = [sys.executable, "-m", "services.registry", "--endpoints",
                    ",".join(endpoints), "--host", "127.0.0.1", "--port", str(port),
                    "--log-level", "warning"]
        url = f"http://127.0.0.1:{port}"
        with running(sync_command(endpoints, corpus), heartbeat, registry, log_dir=root), \
                httpx.Client(base_url=url, timeout=10) as http, \
                Store(endpoints, timeout=10) as store:
            def projected() -> bool:
                try:
                    return len(http.get("/v1/capabilities").json()) >= n_caps
                except (httpx.HTTPError, ValueError):
                    return False
            wait(projected, 180, f"the sync projecting {n_caps} manifests\n{logs(root)}")
            yield Stack(url, http, store, corpus, [])
    finally:
        cluster.destroy()


def register(http: httpx.Client, name: str) -> str:
    r = http.post("/v1/services", json={"name": name, "version": "1.0.0",
                                        "interfaces": {"REST": "http://127.0.0.1:9000"}})
    r.raise_for_status()
    return str(r.json()["id"])


@contextmanager
def keepalive(s: Stack) -> Iterator[None]:
    """A heartbeat PUT for each instance every ~KEEPALIVE seconds, round-robin, spread
    evenly (at most a second apart): the instances stay up however long registering
    and measuring take, at the load real services would put on the registry."""
    stop = threading.Event()

    def beat() -> None:
        turn = 0
        with httpx.Client(base_url=s.url, timeout=10) as http:
            while not stop.wait(min(1.0, KEEPALIVE / max(1, len(s.instances)))):
                if not s.instances:
                    continue
                name, instance = s.instances[turn % len(s.instances)]
                turn += 1
                try:
                    http.put(f"/v1/services/{name}/{instance}/heartbeat")
                except httpx.HTTPError:
                    continue  # its next turn retries

    thread = threading.Thread(target=beat, daemon=True, name="keepalive")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(15)


def open_live(browser: Browser, url: str) -> Page:
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    page.goto(url)
    try:
        page.wait_for_selector("#live[data-state=open]", timeout=60_000)
    except PlaywrightTimeout:
        state = page.locator("#live").get_attribute("data-state")
        raise SystemExit(f"{url}: change stream not open within 60 s (#live {state})") from None
    return page


def cold_loads(browser: Browser, s: Stack, loads: int, n_caps: int) -> dict[str, list[float]]:
    """Milliseconds from navigation start, per cold load (a new context each)."""
    out: dict[str, list[float]] = {"fcp": [], "rows": [], "counts": []}
    targets = (("/ui/capabilities", "rows", ALL_ROWS, n_caps),
               ("/ui/", "counts", COUNTS, [n_caps, len(s.instances)]))
    for _ in range(loads):
        for path, key, predicate, arg in targets:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.goto(s.url + path, wait_until="commit")
            try:
                out[key].append(page.wait_for_function(predicate, arg=arg, polling="raf",
                                                       timeout=60_000).json_value())
            except PlaywrightTimeout:
                shown = page.locator(ROWS).count()
                print(f"  {path}: not complete within 60 s ({shown} rows shown)",
                      file=sys.stderr)
            if key == "rows":
                fcp = page.evaluate("() => performance.getEntriesByType('paint')"
                                    ".find(e => e.name === 'first-contentful-paint')"
                                    "?.startTime ?? null")
                if fcp is not None:
                    out["fcp"].append(fcp)
            context.close()
    return out


def shown_after(page: Page, write: Callable[[], None], selector: str | None,
                total: int | None, reload: bool) -> float | None:
    """Milliseconds from just before ``write`` until ``page`` shows the change (see HIT):
    live (observed in place) or, for the baseline, after a reload done at once."""
    if not reload:
        page.evaluate(ARM, [selector, total])
    t0 = time.time()
    write()
    try:
        if reload:
            page.reload(wait_until="commit")
            seen = page.wait_for_function(SHOWN, arg=[selector, total], polling="raf",
                                          timeout=30_000).json_value()
        else:
            seen = page.wait_for_function("() => window.__seen", timeout=30_000).json_value()
    except PlaywrightTimeout:
        return None
    return float(seen) - t0 * 1000


def overview_changes(browser: Browser, s: Stack, n: int, reload: bool) -> list[float | None]:
    """Each change: one more instance registered through the API."""
    page = open_live(browser, s.url + "/ui/")
    out = []
    for _ in range(n):
        page.wait_for_selector("#live[data-state=open]", timeout=60_000)
        total = page.evaluate(f"({TOTAL})()")[1] + 1
        name = NAMES[len(s.instances) % len(NAMES)]
        out.append(shown_after(page, lambda name=name: s.instances.append(
            (name, register(s.http, name))), None, total, reload))
    page.context.close()
    return out


def capability_changes(browser: Browser, s: Stack, n: int, via: str,
                       reload: bool) -> list[float | None]:
    """``via`` "etcd": the capability's keys put in one transaction, as the sync writes
    them (without its inventory entry, so the sync leaves them alone); "file": a new
    manifest saved in the directory the sync watches."""
    page = open_live(browser, s.url + "/ui/capabilities")
    out = []
    for i in range(n):
        namespace = f"chora.bench.{via}{'reload' if reload else 'live'}{i:03}"
        text = (ROOT / "capabilities" / "chora.devex.registry.yaml").read_text().replace(
            "chora.devex.registry", namespace)
        out.append(shown_after(page, lambda ns=namespace, text=text: write_capability(
            s, ns, text, via), f'{ROWS}[data-namespace="{namespace}"]', None, reload))
    page.context.close()
    return out


def write_capability(s: Stack, namespace: str, text: str, via: str) -> None:
    if via == "file":
        staged = s.capabilities.parent / f"{namespace}.yaml"
        staged.write_text(text)
        os.replace(staged, s.capabilities / staged.name)
        return
    cap = parse(text, name=f"{namespace}.yaml")
    values = project(cap, hashlib.sha256(text.encode()).hexdigest())
    s.store.txn([], [Put(k, v) for k, v in values.items() if not k.startswith("/chora/sync/")])


def tab_memory(browser: Browser, s: Stack, n_caps: int) -> tuple[str, float]:
    """(the renderer's memory, JS heap used in MB) with the capabilities page the only
    tab, beside an empty tab (about:blank) of the same browser. USS (memory private to
    the renderer, what Chromium's task manager calls its footprint) is the tab's cost;
    PSS shares Chromium's libraries out among its processes; RSS counts them in full."""
    blank = browser.new_context().new_page()
    blank.goto("about:blank")
    empty = renderer_memory()
    blank.context.close()
    page = open_live(browser, s.url + "/ui/capabilities")
    page.wait_for_function(ALL_ROWS, arg=n_caps, timeout=60_000)
    cdp = page.context.new_cdp_session(page)
    cdp.send("HeapProfiler.collectGarbage")
    cdp.send("Performance.enable")
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    full = renderer_memory()
    page.context.close()
    heap = metrics["JSHeapUsedSize"] / 2**20
    if full is None or empty is None:
        return "n/a (no renderer found under this process)", heap
    mb = [f"{v / 1024:.0f}" for v in (*full, *empty)]
    return (f"{mb[2]} MB USS, {mb[1]} MB PSS, {mb[0]} MB RSS (an empty tab: {mb[5]} USS, "
            f"{mb[4]} PSS, {mb[3]} RSS)"), heap


def renderer_memory() -> tuple[int, int, int] | None:
    """(RSS, PSS, USS) in KiB of the largest renderer process under this one."""
    found = [(proc_kb(pid, "status", "VmRSS"), proc_kb(pid, "smaps_rollup", "Pss"),
              proc_kb(pid, "smaps_rollup", "Private_Clean")
              + proc_kb(pid, "smaps_rollup", "Private_Dirty"))
             for pid in descendants(os.getpid()) if is_renderer(pid)]
    return max(found) if found else None


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited while we looked
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.extend(children.get(pid, []))
        todo.extend(children.get(pid, []))
    return found


def is_renderer(pid: int) -> bool:
    try:
        return b"--type=renderer" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def proc_kb(pid: int, file: str, field: str) -> int:
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def ms(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ms" if values else "n/a"


def pct(values: list[float | None]) -> str:
    done = sorted(v for v in values if v is not None)
    if not done:
        return "n/a"
    p95 = done[min(len(done) - 1, round(0.95 * (len(done) - 1)))]
    missed = f" ({len(values) - len(done)} not shown in 30 s)" if len(done) < len(values) else ""
    return f"{statistics.median(done):.0f} / {p95:.0f} ms{missed}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--capabilities", type=int, default=1000, help="manifests in the corpus")
    p.add_argument("--instances", type=int, default=1000, help="instances registered")
    p.add_argument("--loads", type=int, default=5, help="cold loads per page")
    p.add_argument("--changes", type=int, default=20, help="changes per measurement")
    args = p.parse_args()
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp, \
            stack(Path(tmp), args.capabilities) as s, keepalive(s):
        for i in range(args.instances):
            name = NAMES[i % len(NAMES)]
            s.instances.append((name, register(s.http, name)))
        pw = sync_playwright().start()
        try:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox"])
            print(f"stack up: {args.capabilities} capabilities, {len(s.instances)} instances; "
                  f"Chromium {browser.version}; {os.cpu_count()} cores", file=sys.stderr)
            cold = cold_loads(browser, s, args.loads, args.capabilities)
            live_overview = overview_changes(browser, s, args.changes, reload=False)
            naive_overview = overview_changes(browser, s, args.changes, reload=True)
            live_etcd = capability_changes(browser, s, args.changes, "etcd", reload=False)
            naive_etcd = capability_changes(browser, s, args.changes, "etcd", reload=True)
            live_file = capability_changes(browser, s, args.changes, "file", reload=False)
            rss, heap = tab_memory(browser, s, args.capabilities)
            browser.close()
        finally:
            pw.stop()
    n, m = args.capabilities, args.instances
    rows = [
        ("first contentful paint, /ui/capabilities (median)", ms(cold["fcp"]), "", "< 1 s"),
        (f"capabilities table shows all {n} rows (median)", ms(cold["rows"]), "", ""),
        (f"overview counts show {n} capabilities, {m} instances (median)",
         ms(cold["counts"]), "", ""),
        ("change shown: overview, instance registered via the API (p50 / p95)",
         pct(live_overview), pct(naive_overview), "< 200 ms"),
        ("change shown: capabilities page, keys put in etcd (p50 / p95)",
         pct(live_etcd), pct(naive_etcd), "< 200 ms"),
        ("change shown: capabilities page, manifest file saved, via the sync (p50 / p95)",
         pct(live_file), "", ""),
        (f"tab: renderer memory, capabilities page at {n}", rss, "", "< 100 MB"),
        (f"tab: JS heap used, capabilities page at {n}", f"{heap:.1f} MB", "", ""),
    ]
    print(f"\n{n} capabilities, {m} instances; {args.loads} cold loads, {args.changes} "
          "changes each; naive = reload the page after the write\n")
    print("| measure | dashboard (live) | naive (reload) | goal |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(cell or "—" for cell in row) + " |")


if __name__ == "__main__":
    main()
