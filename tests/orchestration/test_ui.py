"""The Dagster UI end to end: `dagster dev` on a free port with a temporary DAGSTER_HOME, driven by headless
Chromium (Debian's `chromium` through Playwright): every asset of the graph is shown, and a materialization of
`demos` launched from the UI succeeds. Screenshots land in `.test-artifacts/` (git-ignored)."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
import yaml

from tests_helpers import ROOT

ARTIFACTS = ROOT / ".test-artifacts"
GROUPS = {"sim": ["sim_workcell"], "data": ["demos"], "policy": ["bc_policy", "rl_policy"],
          "twin": ["scene_capture", "gaussian_splat", "collision_mesh", "usd_twin"], "report": ["eval_report"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]


def _dismiss_dialogs(page) -> None:
    """Dagster's first-visit community dialog covers the page: skip it."""
    page.wait_for_timeout(1500)
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()


@pytest.mark.slow
def test_ui_shows_every_asset_and_materializes_demos(tmp_path, workcell_xml, tiny_project):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make setup` installs it)")
    from playwright.sync_api import sync_playwright

    project = tiny_project(tmp_path / "project", {
        "workcell": {"cameras": {"width": 64, "height": 48}},
        "demos": {"episodes": 2, "checks": {"min_episodes": 2}},
        "project": {"dvc_remote": ""},
    }, models={"models/workcell": workcell_xml.parent})
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "resources" / "dagster.yaml", home / "dagster.yaml")
    ARTIFACTS.mkdir(exist_ok=True)

    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "TWINLOOP_ROOT": str(project), "HF_HUB_OFFLINE": "1"}
    dagster = str(ROOT / ".venv" / "bin" / "dagster") if (ROOT / ".venv" / "bin" / "dagster").exists() else "dagster"
    log = open(tmp_path / "dagster_dev.log", "w")
    server = subprocess.Popen([dagster, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)], cwd=ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "dagster_dev.log").read_text()[-3000:]
                assert time.time() < deadline, "dagster dev did not come up in 180 s"
                time.sleep(2)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            # the graph of every asset group (the global view starts with groups collapsed)
            from assets.definitions import defs

            assert {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()} == \
                {a for names in GROUPS.values() for a in names}
            for group, names in GROUPS.items():
                page.goto(f"http://127.0.0.1:{port}/locations/assets.definitions/asset-groups/{group}",
                          wait_until="networkidle", timeout=120_000)
                _dismiss_dialogs(page)
                for name in names:
                    page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
                page.screenshot(path=str(ARTIFACTS / f"ui_graph_{group}.png"))

            page.goto(f"http://127.0.0.1:{port}/assets/demos", wait_until="networkidle", timeout=120_000)
            _dismiss_dialogs(page)
            page.locator("button", has_text="Materialize").first.click()
            # sim_workcell's folder was copied in, not materialized in this instance: the UI asks to confirm
            confirm = page.get_by_role("button", name="Confirm")
            confirm.wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "ui_demos_confirm.png"))
            confirm.click()
            deadline = time.time() + 60 * float(os.environ.get('UI_RUN_MINUTES', '10'))
            status = None
            while time.time() < deadline:
                runs = _graphql(port, "{ runsOrError { ... on Runs { results { runId status } } } }")
                results = runs["runsOrError"]["results"]
                status = results[0]["status"] if results else None
                if status in ("SUCCESS", "FAILURE", "CANCELED"):
                    break
                time.sleep(3)
            assert status == "SUCCESS", (status, (tmp_path / "dagster_dev.log").read_text()[-3000:])
            page.goto(f"http://127.0.0.1:{port}/runs/{results[0]['runId']}", wait_until="networkidle",
                      timeout=120_000)
            page.get_by_text("Success").first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "ui_demos_run.png"))
            browser.close()
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:  # seen once on a loaded CI run: dagster dev hung in its own shutdown
            os.killpg(server.pid, 9)
            server.wait(timeout=30)
        log.close()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["demos"]["outs"][0]["md5"]  # the UI's run committed the demos to DVC
    info = json.loads((project / "data" / "demos" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 2
