"""The dashboard's files as shipped: it loads nothing from another origin (it must work
without internet access), every module is preloaded (one round trip, not one per
import), and the vendored library is the pinned one its README names."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

UI = Path(__file__).resolve().parents[2] / "services" / "registry" / "ui"
STATIC = UI / "static"
OURS = sorted(p for p in STATIC.rglob("*") if p.suffix in (".js", ".css")
              and "vendor" not in p.parts)


def test_the_page_and_our_scripts_load_nothing_from_another_origin():
    page = (UI / "index.html").read_text()
    for url in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert url.startswith(("/ui/", "#", "data:")), url
    for path in OURS:
        code = [line for line in path.read_text().splitlines()
                if not line.lstrip().startswith(("//", "/*", "*"))]  # comments may cite URLs
        text = "\n".join(code)
        assert not re.search(r"https?://|url\(\s*['\"]?//", text), path.name
        for module in re.findall(r"from '([^']+)'", text):
            assert module.startswith(("./", "../")), (path.name, module)
        for url in re.findall(r"(?:fetch|EventSource|optional|read)\(\s*'([^']+)'", text):
            assert url.startswith("/v1/"), (path.name, url)


def test_every_module_is_preloaded_by_the_page():
    page = (UI / "index.html").read_text()
    preloaded = set(re.findall(r'rel="modulepreload" href="/ui/static/([^"]+)"', page))
    assert preloaded == {str(p.relative_to(STATIC)) for p in OURS if p.suffix == ".js"}


def test_the_vendored_library_is_the_pinned_file_its_readme_names():
    readme = (STATIC / "vendor" / "README.md").read_text()
    pinned = re.search(r"`cytoscape\.min\.js`.*?`([0-9a-f]{64})`", readme, re.S)
    assert pinned, "the README names no sha256 for cytoscape.min.js"
    library = (STATIC / "vendor" / "cytoscape.min.js").read_bytes()
    assert hashlib.sha256(library).hexdigest() == pinned[1]
    assert "3.35.0" in readme and "MIT" in (STATIC / "vendor" / "cytoscape.LICENSE").read_text()
