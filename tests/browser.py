"""Open an HTML file in headless Chromium (Debian's package) and report what a reader would see:
how many images loaded, which did not, script and console errors, and a screenshot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

PROBE = """
<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(
  e.message ? "script error: " + e.message : "failed to load: " + (e.target.alt || e.target.src)
), true);
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0))
                       .map(i => i.alt || i.src.slice(0, 60));
  const out = document.createElement("pre");
  out.id = "browser-check";
  const run = window.REPORT_RUN || {};
  const unfilled = Array.from(document.querySelectorAll("[data-run]"))
                        .map(e => e.dataset.run).filter(k => !(k in run));
  out.textContent = JSON.stringify({images: images.length, broken, errors: window.__errors,
                                    unfilled, width: document.documentElement.scrollWidth});
  document.body.appendChild(out);
});
</script>
"""


@dataclass
class PageCheck:
    images: int
    broken: list[str]
    errors: list[str]
    console_errors: list[str]
    screenshot: Path
    unfilled: list[str]  # slots for run-dependent values (data-run) the sidecar did not fill
    page_width: int  # the page's scroll width at the 1280 px window: wider means it overflows


PARSED_TO_END = "test-script-parsed"  # marks the injected script: the parser reached it


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("Chromium is not installed (the set-up installs Debian's `chromium` where "
                "apt-get can run as root); the browser check cannot run here")


def _run(browser: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=120)


def check_page(html_file: Path, workdir: Path) -> PageCheck:
    browser = chromium()
    html = html_file.read_text(encoding="utf-8")
    # the probe goes first in <head> so it hears errors from everything after it; the probed
    # copy sits beside the page so the files it loads by relative path are found
    probed = html_file.with_name(f".{html_file.stem}.probed.html")
    probed.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    try:
        dom = _run(browser, "--dump-dom", "--window-size=1280,2400", probed.as_uri())
    finally:
        probed.unlink()
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the page never finished loading:\n{dom.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    console = [line for line in dom.stderr.splitlines()
               if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)]
    screenshot = workdir / "screenshot.png"
    _run(browser, f"--screenshot={screenshot}", "--window-size=1280,2400", html_file.as_uri())
    return PageCheck(result["images"], result["broken"], result["errors"], console, screenshot,
                     result["unfilled"], result["width"])


def dump_dom(html_file: Path, fragment: str = "", script: str = "", attempts: int = 3) -> str:
    """The page's DOM after it loaded (with `#fragment`), `script` run at its end.

    A heavily loaded machine can make headless Chromium dump the DOM before its parser reached
    the end of a multi-megabyte page (the dump then closes the open tags itself); such a dump
    says nothing about the page, so it is taken again, up to `attempts` times."""
    browser = chromium()
    target = html_file
    if script:
        target = html_file.with_name(f".{html_file.stem}.scripted.html")
        html = html_file.read_text(encoding="utf-8")
        assert html.count("</body>") == 1, f"{html_file}: expected one </body>"
        target.write_text(html.replace("</body>", f'<script id="{PARSED_TO_END}">{script}'
                                       "</script></body>", 1), encoding="utf-8")
    try:
        for _ in range(attempts):
            done = _run(browser, "--dump-dom", "--window-size=1280,2400",
                        target.as_uri() + (f"#{fragment}" if fragment else ""))
            if not script or f'id="{PARSED_TO_END}"' in done.stdout:
                break
        else:
            raise AssertionError(f"Chromium never parsed {html_file.name} to its end in "
                                 f"{attempts} tries:\n{done.stderr[-2000:]}")
    finally:
        if target != html_file:
            target.unlink()
    return done.stdout
