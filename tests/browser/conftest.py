"""Browser tests of the operator console: Playwright for Python driving Debian's `chromium` (INFRA.md). They run in
the default test command when `chromium` is on PATH (CI installs it with apt) and skip, saying why, when it is not.

Screenshots go to test-artifacts/screenshots/ (git-ignored; CI keeps the folder)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.browser.seed import Seeded, seed
from tests.browser.stack import ConsoleStack

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if CHROMIUM is None:
        skip = pytest.mark.skip(reason="chromium is not installed (apt-get install -y chromium; .ci/run does)")
        for item in items:
            if "tests/browser" in str(item.path):
                item.add_marker(skip)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Debian's chromium (Playwright's own download cannot work on a closed network), for one module at a time.

    Module scope, not pytest-playwright's session scope: Playwright's sync API keeps an event loop running in the
    main thread while it is started, and the asyncio tests that come after the browser tests in the same run could
    not run their own loop."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="session")
def console_stack(
    pg_dsn: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsoleStack]:
    stack = ConsoleStack(pg_dsn, kafka_bootstrap, tmp_path_factory.mktemp("console")).start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def seeded(console_stack: ConsoleStack) -> Seeded:
    return console_stack.call(seed(console_stack))


@pytest.fixture
def shot() -> Any:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page: Page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def sign_in(page: Page, stack: ConsoleStack, token: str) -> None:
    page.goto(f"{stack.url}/sign-in")
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{stack.url}/")
