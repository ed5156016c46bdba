"""The dashboard in a real browser: a uvicorn server on a free port over a SQLite
file, a worker thread running the poison app (its handler fails on a poison event
until a flag file exists, the "deployed fix"), and headless Chromium driven by
Playwright.

The operator's path: see the projection degraded and its failure listed (without
the stream id: reads are open, details are for admins), be refused with the API's
own message for a wrong token, enter the right token (the stream id appears),
deploy the fix, click Retry with a name and a reason, and watch the projection turn healthy
and the failure leave the open list; the audit log has the name and the reason. A second test
loads the page on a server with no admin token: it renders, and says why the
buttons do nothing.

Needs Chromium (``/usr/bin/chromium``, or ``STOIC_CHROMIUM``) and the playwright
package: skipped without them, failed under ``CI=true`` (like ``require_postgres``).
``STOIC_SAVE_SCREENSHOT=1`` writes docs/dashboard.png (a failure showing).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.apps import LedgerProjection, make_poison_app, wait_until

import stoic
from stoic.api import ApiSettings, create_app
from stoic.store import FailureRecord

CHROMIUM = os.environ.get("STOIC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "dashboard-e2e-token-4c1d8b7a"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
UI_TIMEOUT_MS = 10_000


def require_chromium() -> None:
    """Skips (or, with CI=true, fails) the calling test when no browser can be driven."""
    reason = None
    if importlib.util.find_spec("playwright") is None:
        reason = "the playwright package is not installed"
    elif not Path(CHROMIUM).exists():
        reason = f"Chromium is not installed at {CHROMIUM} (set STOIC_CHROMIUM)"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (its own sessionStorage); uncaught script errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 420})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"script errors in the page: {errors}"


class Server:
    """uvicorn in a thread on a socket bound to a free loopback port."""

    def __init__(self, store: stoic.Store, app: stoic.App, settings: ApiSettings) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(store, app, settings), log_config=None, access_log=False,
                                lifespan="off", log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="dashboard-uvicorn", daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        wait_until(lambda: self.server.started, 10, "uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def get(self, path: str, token: str | None = None) -> Any:
        request = urllib.request.Request(self.url + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


class Worker:
    """``Runner.run()`` (the long-running worker) in a thread, stopped at exit."""

    def __init__(self, store: stoic.Store, app: stoic.App) -> None:
        self.runner = stoic.Runner(store, app, lease_ttl=3.0, claim_interval=0.1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="dashboard-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:  # reported at exit
            self.error = exc

    def __enter__(self) -> Worker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.stop()
        self.thread.join(20)
        assert not self.thread.is_alive(), "the worker did not stop"
        assert self.error is None, f"the worker crashed: {self.error!r}"


def open_failures(store: stoic.Store, name: str) -> list[FailureRecord]:
    return [f for f in store.list_failures(name, None, None, 100, 0) if f.status.value in ("retrying", "dead")]


@pytest.mark.timeout(60)
def test_an_operator_sees_a_failure_enters_the_token_retries_it_and_sees_the_projection_recover(
        page: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import expect

    fixed = tmp_path / "fix-deployed"
    monkeypatch.setenv("STOIC_TEST_FIXED_FLAG", str(fixed))
    monkeypatch.setenv("STOIC_TEST_RETRY_DELAY", "3600")  # no background retry during the test: the button does it
    app = stoic.App([*make_poison_app().projections, LedgerProjection("balances")], name="dashboard-e2e")
    store = stoic.connect(f"sqlite:///{tmp_path / 'dashboard.db'}")
    for stream, data in [("acct-1", {"amount": 1}), ("acct-1", {"amount": 2, "poison": True}),
                         ("acct-1", {"amount": 3}), ("acct-2", {"amount": 4})]:
        store.append(stream, [stoic.NewEvent("Deposited", data)])
    try:
        with Worker(store, app), Server(store, app, ApiSettings(admin_token=TOKEN)) as server:
            wait_until(lambda: open_failures(store, "poisoned"), 15, "the poison event's failure")
            failure_id = open_failures(store, "poisoned")[0].id

            page.goto(server.url + "/")
            projection = page.locator('#projections tbody tr[data-key="poisoned"]')
            expect(projection).to_contain_text(re.compile(r"degraded|critical"))
            expect(projection).to_contain_text("failure waiting for a retry")
            expect(page.locator('#projections tbody tr[data-key="balances"]')).to_contain_text("healthy")
            failure = page.locator(f'#failures tbody tr[data-key="{failure_id}"]')
            expect(failure).to_contain_text("ValueError")
            expect(failure).to_contain_text("Deposited")
            expect(failure).to_contain_text("admin only")  # no token yet: a summary without the stream id
            expect(page.locator("#admin-state")).to_contain_text("Read-only until you enter the admin token")

            # Skip needs a reason (checked in the page), and a wrong token gets the API's own message.
            page.get_by_role("button", name=f"Skip failure {failure_id}").click()
            expect(page.locator("#act")).to_be_visible()
            page.fill("#act-token", "not-the-token-at-all")
            page.click("#act-ok")
            expect(page.locator("#act-error")).to_contain_text("A reason is required")
            page.fill("#act-reason", "test data")
            page.click("#act-ok")
            expect(page.locator("#act-error")).to_contain_text("403 forbidden")
            expect(page.locator("#act-error")).to_contain_text("the bearer token is not valid")
            page.click("#act-cancel")
            expect(page.locator("#act")).to_be_hidden()
            assert [f.status.value for f in open_failures(store, "poisoned")] == ["retrying"]

            # The right token, in the header's form: reads now carry it and show the details.
            expect(page.locator("#admin-state")).to_contain_text("rejected")
            page.fill("#token", TOKEN)
            page.get_by_role("button", name="Use token").click()
            expect(page.locator("#admin-state")).to_contain_text("Admin token set")
            expect(failure).to_contain_text("acct-1")
            expect(failure).to_contain_text("poison event at position 2")
            shot = SCREENSHOT if os.environ.get("STOIC_SAVE_SCREENSHOT") == "1" else tmp_path / "dashboard.png"
            page.wait_for_timeout(300)  # let the sparkline gather one more sample
            page.screenshot(path=str(shot), full_page=True)

            # The fix is deployed; Retry (with a reason) and the projection recovers.
            fixed.touch()
            page.get_by_role("button", name=f"Retry failure {failure_id}").click()
            expect(page.locator("#act-token-row")).to_be_hidden()  # the token is kept for the tab
            page.fill("#act-actor", "alice")
            page.fill("#act-reason", "fix deployed (e2e)")
            page.click("#act-ok")
            expect(page.locator("#outcome")).to_contain_text(f"Failure {failure_id}: retry requested")
            expect(projection).to_contain_text("healthy", timeout=15_000)
            expect(page.locator("#failures tbody tr")).to_have_count(0)
            expect(page.locator("#failures-empty")).to_be_visible()
            expect(page.locator("#conn")).to_contain_text("0 open failures")

            done = store.get_failure(failure_id)
            assert done is not None and done.status.value == "resolved", done
            audit = server.get("/admin/audit?limit=10", TOKEN)
            actions = [(a["actor"], a["action"], a["target"], a["reason"], a["outcome"]) for a in audit]
            assert ("alice", "retry", f"failure:{failure_id}", "fix deployed (e2e)", "ok") in actions, actions
            assert not any(a[1] == "skip" for a in actions), actions  # the wrong token's skip never got in
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_without_an_admin_token_the_page_renders_read_only_and_says_why_the_buttons_do_nothing(
        page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    app = stoic.App([LedgerProjection("balances"), LedgerProjection("audit_trail")], name="dashboard-read-only")
    store = stoic.connect(f"sqlite:///{tmp_path / 'read-only.db'}")
    store.append_many([(f"acct-{i}", [stoic.NewEvent("Deposited", {"amount": i})], stoic.ANY) for i in range(5)])
    try:
        with Worker(store, app), Server(store, app, ApiSettings()) as server:
            page.goto(server.url + "/")
            for name in ("balances", "audit_trail"):
                row = page.locator(f'#projections tbody tr[data-key="{name}"]')
                expect(row).to_contain_text("healthy")
                expect(row).to_contain_text("5 / 5")
                expect(row.locator("svg.spark")).to_have_count(1)
            expect(page.locator("#failures-empty")).to_be_visible()
            expect(page.locator("#admin-state")).to_contain_text("Admin actions are disabled")
            expect(page.locator("#token-form")).to_be_hidden()

            pause = page.get_by_role("button", name="Pause balances")
            expect(pause).to_have_attribute("aria-disabled", "true")
            pause.click(force=True)  # aria-disabled: focusable and clickable, but Playwright calls it disabled
            expect(page.locator("#act")).to_be_hidden()
            expect(page.locator("#outcome")).to_contain_text("admin actions are disabled on this server")
            assert not store.audit_log(10), "nothing was sent to the admin endpoints"
    finally:
        store.close()
