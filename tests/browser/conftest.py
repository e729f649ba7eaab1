"""Fixtures of the browser tests: the whole stack (module scope: starting it is the
expensive part), Debian's Chromium driven by Playwright (module scope too: Playwright's
sync API keeps an event loop running in this thread until it stops, and later tests
call ``asyncio.run``), and a fresh page per test whose console is watched: any error or
warning the dashboard logs fails the test, because a broken script usually shows there
before anywhere else."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

from tests.browser.stack import Stack, running_stack

VIEWPORT = {"width": 1280, "height": 800}


def chromium_path() -> str | None:
    """$CHROMIUM (only it, when set: a wrong path must not silently test another
    build), else ``chromium`` on PATH, else Debian's path. Playwright's own browser
    download is not used: it is not reachable from every machine that runs the suite."""
    candidates = ([os.environ["CHROMIUM"]] if os.environ.get("CHROMIUM")
                  else [shutil.which("chromium"), "/usr/bin/chromium"])
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    pw = sync_playwright().start()
    yield pw
    pw.stop()


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        pytest.fail("no Chromium: `make test` installs it (or `apt-get install chromium`, "
                    "or set CHROMIUM=/path/to/chromium)", pytrace=False)
    browser = playwright.chromium.launch(executable_path=path, headless=True,
                                         args=["--no-sandbox"])
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("dashboard")) as s:
        yield s


@dataclass
class Console:
    """What the pages of one test logged that a healthy dashboard never logs."""

    problems: list[str] = field(default_factory=list)

    def message(self, msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            where = msg.location.get("url", "")
            self.problems.append(f"console {msg.type}: {msg.text} ({where})")

    def page_error(self, error: Exception) -> None:
        self.problems.append(f"page error: {error}")


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A new context (1280x800) per test; every page opened in it is watched."""
    context = browser.new_context(viewport=VIEWPORT)
    console = Console()
    context.on("console", console.message)
    context.on("weberror", lambda web_error: console.page_error(web_error.error))
    try:
        yield context.new_page()
    finally:
        problems = list(console.problems)
        context.close()
    if problems:
        print("\n".join(problems))
        pytest.fail(f"the dashboard logged {len(problems)} error(s)/warning(s):\n"
                    + "\n".join(problems), pytrace=False)

