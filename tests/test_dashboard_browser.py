"""The dashboard in a real browser: Debian's Chromium driven by playwright.

Never `playwright install` (it downloads a browser): the tests use `/usr/bin/chromium`
(`apt-get install -y chromium`) and are skipped with a reason when it is missing, or fail
under CI=true. A screenshot of each run is saved to the test's tmp_path (and, with
TASKQ_DASHBOARD_SCREENSHOT=path, copied there: that is how docs/dashboard.png was made).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_lib
from conftest import _in_ci
from test_dashboard import AUTH, start_server, stop_server

from taskq.broker import Broker, heartbeat
from taskq.message import TaskMessage

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT = 20_000  # ms: a snapshot a second, a node heartbeat every few seconds


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"browser tests are required under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        _unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def enqueue(client: redis_lib.Redis, names: list[str], queue: str = "default") -> None:
    broker = Broker(client, queue)
    broker.ensure_group()
    stamp = time.monotonic_ns()
    broker.enqueue([(TaskMessage(id=f"{stamp}-{i}", task=n, args=[i]).encode(), None)
                    for i, n in enumerate(names)])


def start_worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "taskq", "--url", url, "worker", "--procs", "1"],
                                stdout=out, stderr=subprocess.STDOUT)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def cell(page: Any, queue: str, col: str) -> Any:
    return page.locator(f'tr[data-queue="{queue}"] td[data-col="{col}"]')


def test_live_dashboard_with_actions(browser: Any, redis_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    client = redis_lib.Redis.from_url(redis_url)
    enqueue(client, ["echo"] * 20 + ["no.such.task"] * 2)  # two will be dead-lettered
    server, base = start_server(redis_url, "dashboard", "--auth", ":".join(AUTH), "--allow-actions",
                                "--url-prefix", "/taskq")
    worker = None
    try:
        page = browser.new_context(http_credentials={"username": AUTH[0], "password": AUTH[1]},
                                   viewport={"width": 1360, "height": 820}).new_page()
        page.goto(base + "/")
        expect(cell(page, "default", "queued")).to_have_text("22", timeout=WAIT)
        page.evaluate("window.__noReload = 1")  # gone if the page ever reloads

        worker = start_worker(redis_url, tmp_path / "worker.log")
        try:
            expect(page.locator("tr[data-node]")).to_have_count(1, timeout=WAIT)
        except AssertionError:
            raise AssertionError("no node appeared; worker log:\n"
                                 + (tmp_path / "worker.log").read_text()[-2000:]) from None
        expect(cell(page, "default", "done")).to_have_text("20", timeout=WAIT)
        expect(cell(page, "default", "dead")).to_have_text("2", timeout=WAIT)
        enqueue(client, ["echo"] * 30)
        expect(cell(page, "default", "done")).to_have_text("50", timeout=WAIT)
        expect(cell(page, "default", "queued")).to_have_text("0", timeout=WAIT)
        assert page.evaluate("window.__noReload") == 1, "the numbers changed by reloading the page"
        expect(page.locator("svg.spark polyline.done")).to_have_count(1, timeout=WAIT)

        # A node that publishes its pool's process table (as `taskq worker` will), beside
        # the real one that does not yet.
        table = [{"slot": 0, "pid": 4242, "state": "busy", "task": "primes", "task_id": "abc123",
                  "since": time.time() - 7, "done": 12, "rss": 31 << 20, "restarts": 1,
                  "last_exit": "signal"},
                 {"slot": 1, "pid": 4243, "state": "idle", "task": None, "task_id": None,
                  "since": None, "done": 15, "rss": 29 << 20, "restarts": 0, "last_exit": None}]
        heartbeat(client, "fake-node", {"host": "h", "pid": 1, "procs": 2, "queues": "default",
                                        "procs_table": orjson.dumps(table).decode()}, 60)
        expect(page.locator("tr[data-node]")).to_have_count(2, timeout=WAIT)
        expect(page.locator('tr[data-node="fake-node"] td[data-col="busy"]')).to_have_text("1 / 2")
        _screenshot(page, tmp_path / "overview.png")
        page.locator("tr[data-node] a").first.click()
        expect(page.locator("h3", has_text="Pool processes")).to_be_visible(timeout=WAIT)
        expect(page.locator("#no-procs, tr[data-slot]").first).to_be_visible()
        page.goto(base + "/#/node/fake-node")
        row = page.locator('tr[data-slot="0"]')
        expect(row.locator('td[data-col="state"]')).to_have_text("busy", timeout=WAIT)
        expect(row.locator('td[data-col="last_exit"]')).to_have_text("signal")
        expect(row.locator('td[data-col="task"]')).to_have_text("primes")
        _screenshot(page, tmp_path / "node.png")

        # Retry one dead letter: it leaves the list and waits in the queue again.
        stop_worker(worker)
        page.goto(base + "/#/queue/default")
        dead_rows = page.locator("tr[data-dead]")
        expect(dead_rows).to_have_count(2, timeout=WAIT)
        expect(dead_rows.first.locator('td[data-col="reason"]')).to_contain_text("no.such.task")
        dead_id = dead_rows.first.get_attribute("data-dead")
        dead_rows.first.locator("button.retry").click()
        expect(page.locator(f'tr[data-dead="{dead_id}"]')).to_have_count(0, timeout=WAIT)
        expect(dead_rows).to_have_count(1)
        expect(page.locator('dd[data-col="queued"]')).to_have_text("1", timeout=WAIT)
        expect(page.locator("#action-note")).to_have_text("requeued 1 task(s)")
        _screenshot(page, tmp_path / "queue.png")
    finally:
        if worker is not None:
            stop_worker(worker)
        stop_server(server)
        client.close()


def test_read_only_and_credentials(browser: Any, redis_url: str) -> None:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect

    client = redis_lib.Redis.from_url(redis_url)
    enqueue(client, ["echo"])
    broker = Broker(client, "default")
    server, base = start_server(redis_url, "dashboard", "--auth", ":".join(AUTH))
    try:
        anonymous = browser.new_context().new_page()
        statuses: list[int] = []
        anonymous.on("response", lambda r: statuses.append(r.status))
        with pytest.raises(PlaywrightError, match="AUTH"):  # Chromium cancels the login prompt
            anonymous.goto(base + "/")
        assert statuses == [401]
        assert anonymous.request.get(base + "/api/snapshot").status == 401
        page = browser.new_context(http_credentials={"username": AUTH[0], "password": AUTH[1]}).new_page()
        assert page.goto(base + "/#/queue/default").status == 200
        expect(page.locator("#dead")).to_contain_text("Read-only", timeout=WAIT)
        expect(page.locator("button.retry")).to_have_count(0)
        status = page.evaluate("""async () => (await fetch('/api/queues/default/dead/purge', {method: 'POST',
            headers: {'x-taskq-action': '1', 'content-type': 'application/json'},
            body: JSON.stringify({confirm: 'default'})})).status""")
        assert status == 403
        assert client.xlen(broker.keys.stream) == 1
        # A node that publishes no process table (today's `taskq worker`): totals only.
        heartbeat(client, "legacy", {"host": "h", "pid": 7, "procs": 3, "queues": "default",
                                     "in_flight": 5}, 60)
        page.goto(base + "/#/node/legacy")
        expect(page.locator("#no-procs")).to_be_visible(timeout=WAIT)
        expect(page.locator("dl.facts")).to_contain_text("≈3 / 3")
    finally:
        stop_server(server)
        client.close()


def _screenshot(page: Any, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("TASKQ_DASHBOARD_SCREENSHOT")
    if target and path.name == "overview.png":
        shutil.copyfile(path, target)
