"""The report of a real run opens in headless Chromium (Debian's ``chromium``, installed by ``make browser``):
no console errors, every image decodes, the expected sections are there; a full-page screenshot is saved
as a test artifact (``$SYNTHGEN_TEST_ARTIFACTS``, default ``.cache/test-artifacts/report/``)."""

from __future__ import annotations

import html as htmllib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipelines.report import build as R

from .conftest import ROOT
from .test_report import SECTIONS, published_dataset, toy_reference

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--enable-logging=stderr", "--v=0"]

# Injected into a copy of the page only: records JS errors, failed resources and console.error calls,
# then, on load, checks every image (also those inside closed <details>) and writes the result into the DOM.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  __errors.push(t && t.tagName ? 'resource ' + t.tagName + ' ' + (t.alt || '') : 'js ' + e.message);
}, true);
var __ce = console.error;
console.error = function () { __errors.push('console.error ' + Array.from(arguments).join(' ')); __ce.apply(console, arguments); };
window.addEventListener('load', function () {
  // the load event waits for every <img> (data: URIs included), so each has either decoded its size or failed
  var imgs = Array.from(document.images);
  var bad = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                .map(function (i) { return 'not-decoded ' + i.alt; });
  var out = {images: imgs.length, broken: bad, errors: __errors,
             sections: Array.from(document.querySelectorAll('section[id]')).map(function (s) { return s.id; }),
             height: document.documentElement.scrollHeight};
  var pre = document.createElement('pre'); pre.id = '__probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium not found: run `make browser` (installs Debian's chromium) before the tests")
    return exe


def _run(exe: str, args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=180)


def _console_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


@pytest.fixture(scope="module")
def artifacts() -> Path:
    d = Path(os.environ.get("SYNTHGEN_TEST_ARTIFACTS", ROOT / ".cache" / "test-artifacts")) / "report"
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_report_renders_in_headless_chromium(tmp_path_factory, tiny_models, ray_cluster, artifacts, tmp_path):
    exe = _chromium()
    ds = published_dataset(tmp_path_factory, tiny_models)
    ref = toy_reference(tmp_path_factory, ds)
    page = artifacts / "report.html"
    R.write_report(str(ds), str(page), ref)
    text = page.read_text()
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", text), "the report must not reference outside files"

    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("<head>", "<head>" + PROBE, 1))
    res = _run(exe, ["--virtual-time-budget=15000", "--dump-dom", probe.as_uri()], tmp_path / "p1")
    m = re.search(r'<pre id="__probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"probe did not report (rc={res.returncode}): {res.stderr[-2000:]}"
    result = json.loads(htmllib.unescape(m.group(1)))
    (artifacts / "browser-probe.json").write_text(json.dumps(result, indent=1))
    assert result["errors"] == [] and _console_lines(res.stderr) == []
    assert result["broken"] == []
    expected_images = 4 * R.GRID_PER_GROUP + 2 * R.CLOSEST_PAIRS  # grids + closest pairs, plus the plots
    assert result["images"] >= expected_images + 8
    assert result["sections"] == list(SECTIONS)

    # the page as shipped (no probe): screenshot of the full height, and still no console output
    shot = artifacts / "report.png"
    shot.unlink(missing_ok=True)
    height = min(max(int(result["height"]), 800), 16000)
    res = _run(exe, [f"--window-size=1280,{height}", f"--screenshot={shot}", page.as_uri()], tmp_path / "p2")
    assert shot.exists() and shot.stat().st_size > 10_000, res.stderr[-2000:]
    assert _console_lines(res.stderr) == []
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, height)
        assert len(np.unique(np.asarray(im.convert("L").resize((64, 64))))) > 20  # content, not a blank page


def test_the_probe_catches_broken_images_and_errors(tmp_path):
    """The checks above can fail: a page with an undecodable image and a script error is caught."""
    exe = _chromium()
    page = tmp_path / "bad.html"
    page.write_text('<html><head><title>x</title></head><body><section id="summary"></section>'
                    '<img alt="broken" src="data:image/png;base64,AAAA"><script>undefinedFunction();</script>'
                    '</body></html>')
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    res = _run(exe, ["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], tmp_path / "p")
    result = json.loads(htmllib.unescape(re.search(r'<pre id="__probe">(.*?)</pre>', res.stdout, re.S).group(1)))
    assert result["broken"] and "broken" in result["broken"][0]
    assert any("undefinedFunction" in e for e in result["errors"])
    assert any("undefinedFunction" in ln for ln in _console_lines(res.stderr))
