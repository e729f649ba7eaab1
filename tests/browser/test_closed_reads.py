"""The dashboard against a registry whose reads need a token (``--require-read-token``):
a browser's EventSource cannot send one, so the page must say why it shows nothing,
not spin on "starting" forever."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, expect

from services.core.localcluster import LocalCluster
from services.registry import tokens
from tests.browser.conftest import VIEWPORT
from tests.integration.registry_server import serving


def test_a_registry_whose_reads_need_a_token_is_said_so_on_the_page(
        browser: Browser, etcd: LocalCluster, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.yaml"
    token_file.write_text(tokens.entry_line("ops", tokens.mint(), ["admin"]) + "\n")
    with serving(etcd.endpoints, tokens=token_file, require_read_token=True) as reg:
        context = browser.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.goto(reg.url + "/ui/capabilities")
            expect(page.locator("#notice")).to_contain_text("--require-read-token",
                                                            timeout=10_000)
            expect(page.locator("#notice")).to_be_visible()
            expect(page.locator("#live")).to_have_attribute("data-state", "connecting")
        finally:
            context.close()
