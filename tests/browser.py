"""Headless Chromium for the tests, with the network cut off (every host unresolvable, every
request sent to a dead proxy): a page that needs anything from outside fails to render."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         "--disable-extensions", "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--hide-scrollbars", "--virtual-time-budget=10000", "--window-size=1400,4000"]
SKIP = "install Debian's chromium (apt-get install chromium) to render the report"


def find_chromium() -> Optional[str]:
    return next((path for path in map(shutil.which, NAMES) if path), None)


def require_chromium() -> str:
    """The browser's path; without one, skip, or fail where RAGOPT_REQUIRE_BROWSER=1 (CI installs it)."""
    found = find_chromium()
    if found:
        return found
    if os.environ.get("RAGOPT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"RAGOPT_REQUIRE_BROWSER=1 but none of {', '.join(NAMES)} is on PATH: {SKIP}")
    pytest.skip(SKIP)


def inspect(browser: str, page: Path, script: str, png: Path) -> dict[str, Any]:
    """Load a copy of `page` with `script` appended, which must write JSON into <pre id="verdict">,
    screenshot it into `png` (1400 x 4000 px) and return that JSON from the DOM once the page settled;
    one browser start for both, as loading plotly.js alone takes seconds."""
    text = page.read_text(encoding="utf-8")
    checked = png.parent / f"checked-{page.name}"
    checked.write_text(text.replace("</body>", f"<script>{script}</script>\n</body>"), encoding="utf-8")
    result = subprocess.run([browser, *FLAGS, f"--user-data-dir={png.parent / 'profile'}", f"--screenshot={png}",
                             "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="verdict"[^>]*>(.*?)</pre>', result.stdout, re.S)
    assert found, f"the check script wrote no verdict; the page ends with: {result.stdout[-1000:]}"
    return json.loads(html.unescape(found.group(1)))
