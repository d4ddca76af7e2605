from __future__ import annotations

from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.conftest import sign_in
from tests.browser.seed import Seeded
from tests.browser.stack import OPERATOR_TOKEN, ConsoleStack


def test_smoke(page: Page, console_stack: ConsoleStack, seeded: Seeded, shot: Any) -> None:
    sign_in(page, console_stack, OPERATOR_TOKEN)
    for path in ("/", "/dead-letters", "/parked", "/provider-jobs", "/rejections", "/audit", "/jobs"):
        response = page.goto(console_stack.url + path)
        assert response is not None and response.status == 200, path
        shot(page, "smoke" + path.replace("/", "-"))
    expect(page.get_by_role("heading", name="Operator jobs")).to_be_visible()
