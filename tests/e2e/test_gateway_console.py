"""The web console in headless Chromium: log in, submit, watch the live desktop, download the ZIP.

The desktop must be worth watching: the wallpaper names the job, and a terminal window shows the
agent's commands as the scripted agent runs them.
"""

from __future__ import annotations

import io
import re
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.conftest import ARTIFACTS, wait_for
from tests.e2e.gateway import Tenant, tenant
from tests.e2e.test_codingjob import exec_in_agent

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: The wallpaper's and the terminal window's background colours (agent-image/bin/).
WALLPAPER = (0x1D, 0x23, 0x30)
TERMINAL = (0x0C, 0x0F, 0x14)
#: The scripted todo-app agent's first command.
FIRST_COMMAND = "node --version && ls -la"

COLOURS_JS = """([wall, term]) => {
  const c = document.querySelector('#desktop canvas');
  if (!c || !c.width) return {colours: 0, wallpaper: 0, terminal: 0};
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const seen = new Set();
  let wallpaper = 0, terminal = 0, samples = 0;
  const near = (i, rgb) => Math.abs(d[i] - rgb[0]) + Math.abs(d[i+1] - rgb[1])
    + Math.abs(d[i+2] - rgb[2]) <= 12;
  for (let i = 0; i < d.length; i += 4 * 37) {
    samples++;
    seen.add((d[i] << 16) | (d[i+1] << 8) | d[i+2]);
    if (near(i, wall)) wallpaper++;
    if (near(i, term)) terminal++;
  }
  return {colours: seen.size, wallpaper: wallpaper / samples, terminal: terminal / samples};
}"""


@pytest.fixture
def user(kube_api: client.ApiClient, operator_release: str) -> Iterator[Tenant]:
    with tenant(kube_api, operator_release, "ui") as t:
        yield t


def test_console_live_desktop_and_download(
    gateway_url: str, user: Tenant, minio_forward: int, kube_api: client.ApiClient
) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "console-desktop.png"
    core = client.CoreV1Api(kube_api)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                accept_downloads=True, viewport={"width": 1400, "height": 1100}
            )
            page = context.new_page()
            page.set_default_timeout(30_000)

            # Not logged in: the console asks for a Kubernetes token.
            page.goto(f"{gateway_url}/")
            assert page.url.endswith("/login")
            page.get_by_label("Kubernetes bearer token").fill(user.token)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(f"{gateway_url}/")
            assert user.namespace in page.locator("h1").inner_text()

            page.get_by_label("Task").fill("Build me a todo app in React")
            page.get_by_role("button", name="Start job").click()
            page.wait_for_url(re.compile(r".*/ui/jobs/.+"))
            job_id = page.url.rsplit("/", 1)[-1]
            namespace, name = job_id.split(".", 1)
            assert namespace == user.namespace

            # The live desktop paints: noVNC through the gateway and the pod's port-forward.
            page.wait_for_selector("#desktop canvas", state="attached", timeout=240_000)
            seen: dict[str, Any] = {}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                seen = page.evaluate(COLOURS_JS, [list(WALLPAPER), list(TERMINAL)])
                if seen["colours"] >= 3 and seen["wallpaper"] > 0.05 and seen["terminal"] > 0.05:
                    break
                page.wait_for_timeout(1000)
            page.screenshot(path=str(shot), full_page=True)
            assert seen["colours"] >= 3, f"the desktop looks blank: {seen}, see {shot}"
            assert seen["wallpaper"] > 0.05, f"no job wallpaper on the desktop: {seen}, see {shot}"
            assert seen["terminal"] > 0.05, f"no terminal window on the desktop: {seen}, see {shot}"
            # The password is fetched by the page, never shown until asked for.
            assert page.locator("#password").is_hidden()

            # The terminal window shows the agent's commands: xterm logs what it displays.
            pod = f"{name}-agent"
            shown = wait_for(
                "the agent's first command in the desktop's terminal",
                lambda: (
                    text
                    if FIRST_COMMAND
                    in (
                        text := exec_in_agent(
                            core, namespace, pod, "cat /tmp/codingjob/agent-shell.log"
                        )
                    )
                    else None
                ),
                120,
            )
            # ... followed by its output (node's version).
            assert re.search(r"\bv\d+\.\d+\.\d+", shown.split(FIRST_COMMAND, 1)[1]), shown
            processes = exec_in_agent(core, namespace, pod, "ps -eo args")
            assert "xterm -title agent shell" in processes, processes

            # The click fetches the password; expect() waits for the page to show it.
            page.get_by_role("button", name="Show VNC password").click()
            expect(page.locator("#password")).to_have_text(re.compile(r"^\S{8,}$"))

            # Live phase from the event stream, then the download button.
            page.wait_for_function(
                "() => ['Succeeded', 'Failed'].includes("
                "document.querySelector('[data-field=phase]').textContent)",
                timeout=420_000,
            )
            assert page.locator("[data-field=phase]").inner_text() == "Succeeded"
            button = page.get_by_role("link", name="Download workspace (ZIP)")
            button.wait_for(state="visible")
            with page.expect_download() as download:
                button.click()
            body = download.value.path().read_bytes()
            names = set(zipfile.ZipFile(io.BytesIO(body)).namelist())
            assert {"todo-app/index.html", "todo-app/app.js", "todo-app/todo.js"} <= names
        finally:
            browser.close()


def test_api_docs_render_from_the_gateways_own_files(gateway_url: str) -> None:
    """/docs renders the API in Chromium while every request the page makes stays on the
    gateway: Swagger UI comes from the image, not from a CDN."""
    from playwright.sync_api import expect, sync_playwright

    requested: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{gateway_url}/docs")
            # An operation of the API, rendered by Swagger UI from /openapi.json.
            expect(page.locator(".opblock-summary-path", has_text="/submit").first).to_be_visible(
                timeout=30_000
            )
        finally:
            browser.close()
    assert f"{gateway_url}/docs/assets/swagger-ui-bundle.js" in requested
    assert [url for url in requested if not url.startswith((gateway_url, "data:"))] == []
