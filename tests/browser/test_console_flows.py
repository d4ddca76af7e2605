"""The console's flows in a real browser against a real worker, PostgreSQL, broker and Stripe fake (issue 20 §Tests).

The tests share one seeded run (tests/browser/seed.py) and each acts on rows of its own."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import sign_in
from tests.browser.seed import HTML_ORG, Seeded
from tests.browser.stack import OPERATOR_TOKEN, ORG, VIEWER_TOKEN, ConsoleStack

pytestmark = pytest.mark.timeout(180)


def _until(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def _figure(page: Page, name: str) -> str:
    return page.locator(f'[data-figure="{name}"]').first.inner_text().strip()


def test_sign_in_is_required_and_a_wrong_token_is_refused_and_audited(
    page: Page, console_stack: ConsoleStack, seeded: Seeded, shot: Any
) -> None:
    page.goto(console_stack.url + "/dead-letters")
    expect(page).to_have_url(console_stack.url + "/sign-in")
    shot(page, "sign-in")
    page.get_by_label("Access token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That token was not accepted.")
    refused = console_stack.call(
        console_stack.fetchval("SELECT count(*) FROM audit_log WHERE action = 'sign_in' AND outcome = 'refused'")
    )
    assert refused >= 1
    sign_in(page, console_stack, OPERATOR_TOKEN)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "cw_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_sign_out_ends_the_session(page: Page, console_stack: ConsoleStack, seeded: Seeded) -> None:
    sign_in(page, console_stack, OPERATOR_TOKEN)
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(console_stack.url + "/sign-in")
    page.goto(console_stack.url + "/")
    expect(page).to_have_url(console_stack.url + "/sign-in")
    assert console_stack.call(
        console_stack.fetchval("SELECT count(*) FROM audit_log WHERE action = 'sign_out' AND actor = 'ops-alice'")
    )


def test_overview_shows_the_seeded_run(page: Page, console_stack: ConsoleStack, seeded: Seeded, shot: Any) -> None:
    sign_in(page, console_stack, OPERATOR_TOKEN)
    fetch = console_stack.fetchval
    new_letters = console_stack.call(fetch("SELECT count(*) FROM dead_letters WHERE replay_state = 'new'"))
    rejected = console_stack.call(fetch("SELECT sum(count) FROM rejection_counts"))
    assert _figure(page, "dead-letters-new") == str(new_letters)
    assert _figure(page, "parked") == str(console_stack.call(fetch("SELECT count(*) FROM parked_events")))
    assert _figure(page, "rejected-hour") == str(rejected)
    failed_jobs = console_stack.call(fetch("SELECT count(*) FROM provider_jobs WHERE status = 'failed'"))
    assert _figure(page, "jobs-failed") == str(failed_jobs)
    # The chart: one bar per outcome and minute; the legend's totals are the answer counts.
    assert page.locator("figure.chart svg rect").count() >= 3
    created = console_stack.call(fetch("SELECT sum(count) FROM answer_counts WHERE outcome = 'created'"))
    expect(page.locator(".legend li", has_text="created")).to_contain_text(str(created))
    expect(page.get_by_role("cell", name=console_stack.call(fetch("SELECT worker_id FROM workers_seen LIMIT 1"))))

    # Lag per partition, read in the background: committed offsets reach the end once the worker has read all.
    def lag_read() -> bool:
        page.reload()
        rows = page.locator("section", has_text="Consumer lag").locator("tbody tr")
        return rows.count() == 2 and all(rows.nth(i).locator("td").nth(1).inner_text() != "–" for i in range(2))

    _until(lag_read, "lag read from the broker")
    # Numbers link to the page that explains them.
    page.locator('[data-figure="jobs-failed"] a').click()
    expect(page).to_have_url(re.compile(r"/provider-jobs\?state=failed$"))
    page.goto(console_stack.url + "/")
    shot(page, "overview")


def test_dead_letters_filter_and_html_shown_as_text(
    page: Page, console_stack: ConsoleStack, seeded: Seeded, shot: Any
) -> None:
    sign_in(page, console_stack, OPERATOR_TOKEN)
    page.goto(console_stack.url + "/dead-letters")
    page.get_by_label("Reason", exact=True).fill("invalid_json")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"reason=invalid_json"))
    rows = page.locator("tr[data-dead-letter]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("invalid_json")
    page.goto(console_stack.url + "/dead-letters?reason=invalid_envelope")
    expect(page.locator("tr[data-dead-letter]", has_text="invalid_envelope")).not_to_have_count(0)
    # An organization id holding HTML shows as its text; no element was injected.
    expect(page.locator("tr[data-dead-letter] td", has_text=HTML_ORG)).to_have_count(1)
    assert page.locator("#injected").count() == 0
    shot(page, "dead-letters")
    page.locator("tr[data-dead-letter] a").first.click()
    expect(page.get_by_text("SHA-256 of the value")).to_be_visible()
    shot(page, "dead-letter")


def _wait_done(page: Page) -> None:
    """The job page polls its progress fragment (htmx) until the job is over: no reload here."""
    expect(page.locator('#progress [data-state="done"]')).to_be_visible(timeout=30_000)


def test_replay_dry_run_confirm_progress_applied_and_audited(
    page: Page, console_stack: ConsoleStack, seeded: Seeded, shot: Any
) -> None:
    stack = console_stack
    envelope_id = stack.call(
        stack.fetchval("SELECT id FROM dead_letters WHERE reason = 'invalid_envelope' AND organization_id = $1", ORG)
    )
    sign_in(page, stack, OPERATOR_TOKEN)
    page.goto(stack.url + "/dead-letters")
    page.get_by_label(f"select dead letter {seeded.replayable_id}").check()
    page.get_by_label(f"select dead letter {envelope_id}").check()
    page.get_by_role("button", name="Replay selected…").click()
    expect(page.locator('[data-figure="dry-run-count"]')).to_have_text("2")
    shot(page, "replay-confirm")
    assert stack.call(stack.fetchval("SELECT count(*) FROM operator_jobs WHERE kind = 'dlq_replay'")) == 0
    # The job page polls its progress (htmx) while the job runs, and stops polling once it is done.
    with page.expect_request(re.compile(r"/jobs/\d+/progress$")):
        page.get_by_role("button", name=re.compile("^Confirm")).click()
    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    _wait_done(page)
    expect(page.locator('#progress [data-figure="done"]')).to_have_text("2")
    # Applied: the replayed command created its customer.
    _until(
        lambda: stack.call(
            stack.fetchval("SELECT count(*) FROM customers WHERE external_id = $1", seeded.replayable_external_id)
        ),
        "the replayed command applied",
    )

    # The record without message_id came back: shown as such, and the job did not send it again.
    def came_back() -> bool:
        page.reload()
        return _figure(page, "returned") == "1"

    _until(came_back, "the record that came back, counted on the job")
    shot(page, "replay-job")
    items = stack.call(stack.fetch("SELECT item_id, result FROM operator_job_items WHERE job_id = $1", job_id))
    assert sorted((row["item_id"], row["result"]) for row in items) == sorted(
        [(seeded.replayable_id, "sent"), (envelope_id, "returned")]
    )
    # The original is marked returned; the copy that came back is a new row naming the job, not part of it.
    states = stack.call(stack.fetch("SELECT id, replay_state, returned_from_job_id FROM dead_letters"))
    assert {row["id"]: row["replay_state"] for row in states}[envelope_id] == "returned"
    assert [row["replay_state"] for row in states if row["returned_from_job_id"] == job_id] == ["new"]
    audit = stack.call(
        stack.fetch("SELECT actor, outcome, count FROM audit_log WHERE action = 'dlq_replay' AND job_id = $1", job_id)
    )
    assert [(row["actor"], row["outcome"], row["count"]) for row in audit] == [("ops-alice", "started", 2)]
    page.goto(stack.url + "/dead-letters?reason=invalid_envelope&window=30d")
    expect(page.locator("tr[data-dead-letter] .came-back", has_text=f"job #{job_id}")).to_have_count(1)
    expect(page.locator("tr[data-dead-letter]", has_text="returned")).to_have_count(1)
    shot(page, "dead-letters-after-replay")
    # Everything matching "invalid_envelope" now: the original that came back is not eligible any more; the HTML
    # organization's record and the copy are (a new job, its own decision).
    page.get_by_role("button", name="Replay all matching…").click()
    expect(page.locator('[data-figure="dry-run-count"]')).to_have_text("2")
    # Started, then cancelled while it runs (one item a second): it stops between chunks, audited.
    page.get_by_role("button", name=re.compile("^Confirm")).click()
    page.get_by_role("button", name="Cancel this job").click()
    expect(page.locator('#progress [data-state="cancelled"]')).to_be_visible(timeout=30_000)
    cancelled = int(page.url.rsplit("/", 1)[1])
    done = stack.call(stack.fetchval("SELECT done_count FROM operator_jobs WHERE id = $1", cancelled))
    assert done < 2
    assert (
        stack.call(
            stack.fetchval("SELECT count(*) FROM audit_log WHERE action = 'job_cancel' AND job_id = $1", cancelled)
        )
        == 1
    )


def test_parked_event_republished(page: Page, console_stack: ConsoleStack, seeded: Seeded, shot: Any) -> None:
    stack = console_stack
    sign_in(page, stack, OPERATOR_TOKEN)
    page.goto(stack.url + "/parked")
    expect(
        page.get_by_role("cell", name="MessageSizeTooLargeError: <b>the broker refused</b> the record")
    ).to_be_visible()
    shot(page, "parked")
    parked_id = stack.call(
        stack.fetchval("SELECT id FROM parked_events WHERE event_id::text = $1", seeded.parked_event_id)
    )
    page.get_by_label(f"select parked event {parked_id}").check()
    page.get_by_role("button", name="Republish selected…").click()
    expect(page.locator('[data-figure="dry-run-count"]')).to_have_text("1")
    page.get_by_role("button", name=re.compile("^Confirm")).click()
    _wait_done(page)
    assert stack.call(stack.fetchval("SELECT count(*) FROM parked_events WHERE id = $1", parked_id)) == 0
    # The running worker's relay published it from the outbox (or parked it again: then it would be back here).
    _until(lambda: stack.call(stack.fetchval("SELECT count(*) FROM outbox")) == 0, "the relay published it")
    assert (
        stack.call(
            stack.fetchval("SELECT count(*) FROM parked_events WHERE event_id::text = $1", seeded.parked_event_id)
        )
        == 0
    )


def test_failed_provider_job_retried_and_linked(
    page: Page, console_stack: ConsoleStack, seeded: Seeded, shot: Any
) -> None:
    stack = console_stack
    sign_in(page, stack, OPERATOR_TOKEN)
    page.goto(stack.url + "/provider-jobs?state=failed")
    row = page.locator("tr[data-provider-job]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("invalid_request_error")
    shot(page, "provider-jobs")
    job = stack.call(stack.fetchval("SELECT id FROM provider_jobs WHERE status = 'failed'"))
    page.get_by_label(f"select provider job {job}").check()
    page.get_by_role("button", name="Retry selected…").click()
    expect(page.locator('[data-figure="dry-run-count"]')).to_have_text("1")
    page.get_by_role("button", name=re.compile("^Confirm")).click()
    _wait_done(page)
    linked = _until(
        lambda: stack.call(
            stack.fetchval("SELECT provider_customer_id FROM customers WHERE external_id = $1", seeded.failed_link)
        ),
        "the customer linked at Stripe",
    )
    assert linked in stack.stripe.customers
    page.goto(stack.url + "/provider-jobs?state=done")
    expect(page.locator(f'tr[data-provider-job="{job}"]')).to_contain_text("done")


def test_viewer_sees_no_action_and_a_forged_post_gets_403(
    page: Page, console_stack: ConsoleStack, seeded: Seeded, shot: Any
) -> None:
    stack = console_stack
    sign_in(page, stack, VIEWER_TOKEN)
    for path in ("/dead-letters", "/parked", "/provider-jobs"):
        page.goto(stack.url + path)
        assert page.locator("main button").count() == 1  # the filter's, nothing else
        assert page.locator("input[type=checkbox]").count() == 0
    shot(page, "viewer-dead-letters")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    assert csrf
    response = page.request.post(
        stack.url + "/actions/dlq_replay/start",
        form={"csrf": csrf, "scope": "matching"},
        headers={"Origin": stack.url},
    )
    assert response.status == 403
    refused = stack.call(
        stack.fetchval(
            "SELECT count(*) FROM audit_log WHERE actor = 'viewer-bob' AND action = 'dlq_replay' "
            "AND outcome = 'refused'"
        )
    )
    assert refused == 1
    assert stack.call(stack.fetchval("SELECT count(*) FROM operator_jobs WHERE created_by = 'viewer-bob'")) == 0


def test_post_without_csrf_token_or_from_another_origin_gets_403(
    page: Page, console_stack: ConsoleStack, seeded: Seeded
) -> None:
    stack = console_stack
    sign_in(page, stack, OPERATOR_TOKEN)
    page.goto(stack.url + "/dead-letters")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    url = stack.url + "/actions/dlq_replay/preview"
    form: dict[str, str | float | bool] = {"scope": "matching", "reason": "invalid_json"}
    assert page.request.post(url, form=form, headers={"Origin": stack.url}).status == 403
    assert page.request.post(url, form={**form, "csrf": "forged"}, headers={"Origin": stack.url}).status == 403
    other = page.request.post(url, form={**form, "csrf": csrf or ""}, headers={"Origin": "http://evil.example"})
    assert other.status == 403
    # The same request with the token and this origin goes through: the refusals were the token's and the origin's.
    assert page.request.post(url, form={**form, "csrf": csrf or ""}, headers={"Origin": stack.url}).status == 200
    reasons = stack.call(
        stack.fetch("SELECT filter->>'why' AS why FROM audit_log WHERE outcome = 'refused' AND action = 'request'")
    )
    assert {"csrf", "origin"} <= {row["why"] for row in reasons}


def test_security_headers_and_nothing_the_policy_blocks(
    page: Page, console_stack: ConsoleStack, seeded: Seeded
) -> None:
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    sign_in(page, console_stack, OPERATOR_TOKEN)
    for path in ("/", "/dead-letters", "/jobs", "/sign-in", "/static/console.css"):
        response = page.goto(console_stack.url + path)
        assert response is not None
        headers = response.headers
        assert headers["content-security-policy"].startswith("default-src 'self'")
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
    # htmx runs under `default-src 'self'` without any inline style or script being refused.
    page.goto(console_stack.url + "/")
    assert page.evaluate("typeof htmx") == "object"
    assert not [text for text in messages if "Content Security Policy" in text], messages
