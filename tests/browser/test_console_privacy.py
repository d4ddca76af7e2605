"""No personal data: the seeded commands carry canary names, e-mails and phone numbers; no page's HTML, no audit row
and no operator job shows any of them. Also writes a screenshot of every page (test-artifacts/screenshots/)."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import sign_in
from tests.browser.seed import CANARIES, Seeded
from tests.browser.stack import OPERATOR_TOKEN, ConsoleStack

pytestmark = pytest.mark.timeout(180)

PAGES = {
    "overview": "/",
    "dead-letters-all": "/dead-letters?window=30d",
    "parked-all": "/parked",
    "provider-jobs-all": "/provider-jobs",
    "rejections": "/rejections",
    "audit": "/audit",
    "jobs": "/jobs",
}


def _clean(html: str, where: str) -> None:
    folded = html.casefold()
    leaked = [canary for canary in CANARIES if canary.casefold() in folded]
    assert not leaked, f"{where} shows {leaked}"


def test_no_page_shows_a_canary(page: Page, console_stack: ConsoleStack, seeded: Seeded, shot: Any) -> None:
    stack = console_stack
    # The canaries did reach the database (the test would prove nothing otherwise).
    assert stack.call(stack.fetchval("SELECT count(*) FROM customers WHERE name LIKE '%Canary%'")) >= 1
    sign_in(page, stack, OPERATOR_TOKEN)
    for name, path in PAGES.items():
        page.goto(stack.url + path)
        _clean(page.content(), path)
        shot(page, name)
    details = [f"/dead-letters/{row['id']}" for row in stack.call(stack.fetch("SELECT id FROM dead_letters"))]
    details += [f"/jobs/{row['id']}" for row in stack.call(stack.fetch("SELECT id FROM operator_jobs"))]
    for path in details:
        page.goto(stack.url + path)
        _clean(page.content(), path)
    # A dry run and its confirmation page, too.
    page.goto(stack.url + "/dead-letters?window=30d")
    page.get_by_role("button", name="Replay all matching…").click()
    _clean(page.content(), "the replay confirmation")
    audit = stack.call(stack.fetch("SELECT actor, action, filter::text AS filter, remote_addr FROM audit_log"))
    assert audit
    _clean(repr([dict(row) for row in audit]), "audit_log")
    jobs = stack.call(stack.fetch("SELECT filter::text, selection::text, last_error FROM operator_jobs"))
    _clean(repr([dict(row) for row in jobs]), "operator_jobs")
