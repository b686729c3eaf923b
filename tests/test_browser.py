"""Real-browser test of the lesson: `streamlit run` on localhost, headless Chromium loads every page.

Chromium's one-shot `--screenshot --dump-dom --virtual-time-budget` mode does not wait for Streamlit:
the page is drawn from messages on a websocket, and virtual time does not wait for websocket traffic,
so the shot shows the loading skeleton. This test therefore drives the same headless Chromium over
the DevTools protocol (the `websockets` package ships with Streamlit): navigate, wait until the page's
title is drawn and the script has finished, then dump the DOM and take a PNG.

At 1280x720 (a projector) and at 1024x768 (a narrow window) it asserts, per page: the title is drawn,
no Streamlit exception element (`stException`) and no "Traceback"; that every request the browser made
went to this machine (the lesson must work offline); and, on chapter 4 with sampling on, that the accept
table's columns (p, q, min(1, p/q), u, result) all lie inside the window. Screenshots go to
$MTP_REF_SCREENSHOTS, else a temp folder, which is printed.

Needs Debian's chromium (`make browser` installs it when run as root). Without it the test is SKIPPED
with a reason that says what to install, so a green run without chromium says plainly that the browser
was never driven.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
BUNDLED = ROOT / "mtp_ref" / "checkpoints" / "mtp-tiny"
# (number, URL path, title). The landing page is served at the root URL. The first URL loaded is a
# sub-page: a fresh server must resolve it before st.navigation has ever run.
PAGES = [(2, "guess-and-check", "2 · Guess and check"), (1, "wait", "1 · The wait"),
         (3, "draft-heads", "3 · Where the guesses come from"), (4, "exact", "4 · Keeping the output exact"),
         (5, "faster", "5 · How much faster"), (6, "limits", "6 · Where it stops paying"),
         (7, "inspect", "Inspect a checkpoint"), (8, "port", "Port it"), (0, "", "Multi-token prediction")]
SIZES = [(1280, 720), (1024, 768)]
LOCAL = ("http://localhost:", "ws://localhost:", "data:", "blob:", "about:", "chrome-error:")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,720"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page target)."""

    def __init__(self, profile: Path):
        from websockets.sync.client import connect

        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a reused profile keeps the last run's port
        self.proc = subprocess.Popen([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                      "--remote-debugging-port=0", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._stack = contextlib.ExitStack()
        try:
            end = time.time() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                if time.time() > end or self.proc.poll() is not None:
                    raise RuntimeError("Chromium did not open its DevTools port")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
                target = next(t for t in json.load(r) if t["type"] == "page")
            self.ws = self._stack.enter_context(connect(target["webSocketDebuggerUrl"], max_size=2**28,
                                                        open_timeout=30))
        except BaseException:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise
        self.next_id = 0
        self.requests: list[str] = []      # every URL the page asked for (Network.requestWillBeSent)

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == "Network.requestWillBeSent":
                self.requests.append(msg["params"]["request"]["url"])
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr: str):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def press(self, key: str, code: int, times: int) -> None:
        for _ in range(times):
            for kind in ("rawKeyDown", "keyUp"):
                self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)
            time.sleep(0.05)

    def wait_for(self, expr: str, timeout: float) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            if self.js(expr):
                return True
            time.sleep(0.25)
        return False

    def settled(self, title: str, timeout: float) -> bool:
        """The page title is drawn and Streamlit reports no running script, twice in a row."""
        expr = (f"(() => {{ const t = [...document.querySelectorAll('h1')].some(h => h.innerText.includes({json.dumps(title)}));"
                " const running = document.querySelector('[data-testid=\"stStatusWidget\"]');"
                " const skel = document.querySelector('[data-testid=\"stSkeleton\"]');"
                " return t && !running && !skel; })()")
        return self.wait_for(expr, timeout) and (time.sleep(1.0) or self.wait_for(expr, timeout))

    def click_button(self, label: str) -> bool:
        return bool(self.js("(() => { const b = [...document.querySelectorAll('button')].find(x => "
                            f"x.innerText.trim().startsWith({json.dumps(label)}) && !x.disabled);"
                            " if (b) { b.click(); return true; } return false; })()"))

    def size(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def screenshot(self, path: Path) -> None:
        """What the window shows (the first screen: what a projector shows before anyone scrolls)."""
        time.sleep(1.0)  # let Plotly lay out
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def dom(self) -> str:
        return self.js("document.documentElement.outerHTML")

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def prompts_file(tmp: Path) -> Path | None:
    """The bundled prompts if they ship, else a small file of our own (page 4 needs some)."""
    if (ROOT / "mtp_ref" / "eval" / "prompts.jsonl").exists():
        return None
    p = tmp / "prompts.jsonl"
    rows = [("stories", "Once upon a time, there was a little girl named Lily. She"),
            ("code", "def add(a, b):\n    return"), ("prose", "It was the best of times, it was the worst of")]
    p.write_text("".join(json.dumps({"category": c, "id": f"{c}-0", "text": t}) + "\n" for c, t in rows))
    return p


@pytest.fixture(scope="module")
def served_app(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("browser")
    env = dict(os.environ)
    if not ((BUNDLED / "config.json").exists() and any(BUNDLED.glob("*.safetensors"))):
        env["MTP_REF_MODEL"] = str(request.getfixturevalue("tiny_checkpoint")("deepseek_v3"))
    pf = prompts_file(tmp)
    if pf:
        env["MTP_REF_PROMPTS"] = str(pf)
    port = free_port()
    log = open(tmp / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "explainer" / "app.py"),
                             "--server.headless", "true", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        wait_http(f"http://localhost:{port}/_stcore/health", 60)
        yield f"http://localhost:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


ACCEPT_TABLE = """(() => { const t = document.querySelector('table.mtp-accept'); if (!t) return null;
  const heads = [...t.querySelectorAll('th')].map(h => { const r = h.getBoundingClientRect();
    return {text: h.innerText.trim(), left: r.left, right: r.right}; });
  return {width: window.innerWidth, heads: heads}; })()"""


def set_temperature(browser: Browser, steps: int) -> bool:
    """Focus the Temperature slider (its range input) and press the right arrow `steps` times (0.05 a step)."""
    ok = browser.js("(() => { const s = [...document.querySelectorAll('[data-testid=\"stSlider\"]')]"
                    ".find(x => x.innerText.includes('Temperature')); if (!s) return false;"
                    " const t = s.querySelector('input[type=range]'); if (!t) return false; t.focus(); return true; })()")
    if ok:
        browser.press("ArrowRight", 39, steps)
    return bool(ok)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="the browser test did NOT run: /usr/bin/chromium is missing "
                    "(install it with `apt-get install chromium` as root, or `make browser`)")
@pytest.mark.parametrize("width,height", SIZES)
def test_every_page_renders_in_chromium(served_app, tmp_path, width, height):
    out = Path(os.environ.get("MTP_REF_SCREENSHOTS") or tempfile.mkdtemp(prefix="mtp-ref-screenshots-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {out}")
    browser = Browser(tmp_path / "profile")
    try:
        browser.call("Network.enable")
        browser.size(width, height)
        for i, path, title in PAGES:
            browser.call("Page.navigate", url=f"{served_app}/{path}")
            assert browser.settled(title, 90), f"/{path}: title '{title}' never drawn, or the script never finished"
            if path == "guess-and-check":      # one cycle's diagram, at its verify phase
                for _ in range(4):
                    assert browser.click_button("Step")
                    assert browser.settled(title, 60)
                assert browser.js("document.querySelectorAll('iframe').length") >= 1
            if path == "exact":
                assert browser.click_button("Auto-play")
                assert browser.wait_for("document.body.innerText.includes('Cycle 3 ')", 60), "auto-play did not step"
                assert browser.click_button("Pause")
                assert browser.settled(title, 60)
                assert set_temperature(browser, 20), "no Temperature slider"
                # each key press is a rerun that resets the decoder: wait until the last one has landed
                assert browser.wait_for("[...document.querySelectorAll('[data-testid=\"stSlider\"]')].some(x => "
                                        "x.innerText.includes('Temperature') && x.innerText.includes('1.00'))", 30)
                assert browser.settled(title, 60)
                time.sleep(2.0)
                assert browser.settled(title, 60)
                assert browser.click_button("Step")
                assert browser.wait_for("document.querySelector('table.mtp-accept') !== null && "
                                        "document.body.innerText.includes('p(d)')", 60), "no accept table after Step"
                assert browser.settled(title, 60)
                table = browser.js(ACCEPT_TABLE)
                assert table, "the accept table is not on the page"
                names = [h["text"] for h in table["heads"]]
                assert {"p(d)", "q(d)", "min(1, p/q)", "u", "result"} <= set(names), names
                for h in table["heads"]:
                    assert 0 <= h["left"] and h["right"] <= table["width"], (width, h, table["width"])
            dom = browser.dom()
            assert title in dom
            assert "stException" not in dom, f"/{path}: Streamlit shows an exception"
            assert "Traceback" not in dom, f"/{path}: a traceback is on the page"
            assert "Page not found" not in dom, f"/{path}: Streamlit does not know this URL"
            shot = out / f"{i}_{path or 'start'}_{width}x{height}.png"
            browser.screenshot(shot)
            assert shot.stat().st_size > 10_000
        outside = sorted({u for u in browser.requests if not u.startswith(LOCAL)})
        assert not outside, f"the lesson asked the network for {outside[:5]}: it must work offline"
    finally:
        browser.close()
