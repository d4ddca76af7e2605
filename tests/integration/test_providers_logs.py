"""Personal data and secrets never leave through logs or metrics on the provider paths (SPEC §8, README "Logs").

Marker values are planted in every personal field, in the API keys and in a signing secret; the provider scenarios
then run (success, checkout, 429, 500, timeout, 401 pausing a connection and its test calls, validation errors whose
provider text quotes the request, an update, an inline call that runs out of budget, a signed command through the
batch). No marker may appear in the structlog entries, on stderr (the JSON pipeline, library loggers included), in
the metrics, or in the stored `provider_error` / `last_error` objects.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from tests.fakes.adyen_fake import adyen_error_body
from tests.fakes.gocardless_fake import FakeGoCardless
from tests.fakes.stripe_fake import FakeStripe
from tests.harness.records import RecordFactory, RecordingSink, command, encode
from tests.integration import test_providers_jobs as support
from tests.integration.test_providers_jobs import CREATE_PATH, FINISHED, ORG, PROVIDERS, ProviderHarness, connection
from worker.contract.decode import DecodeContext
from worker.observability import configure_logging
from worker.security import SIGNATURE_HEADER, SigningKeys, sign
from worker.service import BatchService

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"),
]

fakes = support.fakes
harness = support.harness

PERSONAL: dict[str, str] = {
    "name": "Quillon Markerby Ltd",
    "firstname": "Quillon",
    "lastname": "Markerby",
    "legal_name": "Markerby Holdings",
    "legal_number": "LEGALMARK-5521",
    "tax_identification_number": "TAXMARK-88412",
    "email": "quillon.markerby@markermail.example",
    "phone": "+99 4471 900 123",
    "address_line1": "17 Markerweg",
    "address_line2": "Markerhof 3",
    "city": "Markerstadt",
    "zipcode": "MK-4471",
    "state": "Markerland",
}
BAD_EMAIL = "refused.markerby@markermail.example"
KEYS: dict[str, str] = {
    "stripe": "sk_test_MARKERKEY_stripe_7f3a9c",
    "gocardless": "live_MARKERTOKEN_gocardless_5d1e",
    "adyen": "AQE_MARKERKEY_adyen_9b2c",
}
REVOKED_KEYS: dict[str, str] = {
    "stripe": "sk_test_REVOKEDMARK_stripe_1234",
    "gocardless": "live_REVOKEDMARK_gocardless_1234",
    "adyen": "AQE_REVOKEDMARK_adyen_1234",
}
SIGNING_SECRET = b"SIGNMARK-secret-7731"
MARKERS: tuple[str, ...] = (
    *PERSONAL.values(),
    "quillon.markerby",
    "markermail",
    BAD_EMAIL,
    "refused.markerby",
    *KEYS.values(),
    *REVOKED_KEYS.values(),
    "MARKERKEY",
    "MARKERTOKEN",
    "REVOKEDMARK",
    SIGNING_SECRET.decode(),
    "SIGNMARK",
)


def leaks(text: str) -> list[str]:
    lowered = text.lower()
    return [marker for marker in MARKERS if marker.lower() in lowered]


@pytest.fixture
def marker_fakes(fakes: dict[str, Any]) -> Iterator[None]:
    for provider, fake in fakes.items():
        fake.api_keys.add(KEYS[provider])
        if isinstance(fake, FakeStripe | FakeGoCardless):
            fake.invalid_emails.add(BAD_EMAIL)
    yield
    for provider, fake in fakes.items():
        fake.api_keys.discard(KEYS[provider])
        if isinstance(fake, FakeStripe | FakeGoCardless):
            fake.invalid_emails.discard(BAD_EMAIL)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    config = structlog.get_config()
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        structlog.configure(**config)


async def run_suite(harness: ProviderHarness, round_: str) -> None:
    """Every provider path once, with marker data; `round_` keeps external ids apart between rounds."""
    for fake in harness.fakes.values():
        fake.reset()
    harness.connections = []
    for provider in PROVIDERS:
        fake = harness.fakes[provider]
        harness.add_connection(connection(provider, fake, key=KEYS[provider]))
        harness.add_connection(connection(provider, fake, code=f"{provider}_revoked", key=REVOKED_KEYS[provider]))

    for provider in PROVIDERS:
        fake = harness.fakes[provider]
        path = CREATE_PATH[provider]
        # success (and checkout), then 429, 500 and a timeout on the next creates
        await harness.add_job(await harness.add_customer(provider, external_id=f"{round_}-{provider}-ok", **PERSONAL))
        fake.fail_next(429, headers={"Retry-After": "0"}, method="POST", path=path)
        fake.fail_next(500, method="POST", path=path)
        fake.delay_next(1.0, after_processing=True, method="POST", path=path)
        await harness.add_job(
            await harness.add_customer(provider, external_id=f"{round_}-{provider}-flaky", **PERSONAL)
        )
        # a validation error whose provider text quotes the request
        if provider == "adyen":
            quoted = adyen_error_body(
                422, "702", f"Invalid shopperEmail {BAD_EMAIL} for {PERSONAL['name']}", "validation"
            )
            fake.fail_next(422, quoted, method="POST", path=path)
            invalid = await harness.add_customer(provider, external_id=f"{round_}-{provider}-bad", **PERSONAL)
        else:
            invalid = await harness.add_customer(
                provider, external_id=f"{round_}-{provider}-bad", **{**PERSONAL, "email": BAD_EMAIL}
            )
        await harness.add_job(invalid)
        # 401: the first job is refused by the provider and pauses the connection; both wait for a test call
        for index in range(2):
            revoked = await harness.add_customer(
                provider, code=f"{provider}_revoked", external_id=f"{round_}-{provider}-revoked-{index}", **PERSONAL
            )
            await harness.add_job(revoked)
    runner = harness.runner(concurrency=2, check_interval=0.1)

    async def settled() -> bool:
        """Every job finished but the revoked connections', which wait after a refused test call."""
        jobs = await harness.jobs()
        if any(job["status"] not in FINISHED for job in jobs if not job["connection_code"].endswith("_revoked")):
            return False
        tested = all(
            any(r.method == "GET" and r.status == 401 for r in fake.requests) for fake in harness.fakes.values()
        )
        paused = await harness.pool.fetchval(
            "SELECT count(*) FROM provider_connections WHERE state = 'credentials_refused'"
        )
        return tested and paused == len(PROVIDERS)

    await harness.drive(runner, until=settled, timeout=30)

    # a Stripe update, and an inline call that runs out of budget
    stripe_conn = next(c for c in harness.connections if c.code == "stripe_main")
    linked = await harness.add_customer(
        "stripe",
        external_id=f"{round_}-stripe-update",
        provider_customer_id=next(iter(_stripe(harness).customers)),
        **PERSONAL,
    )
    await harness.add_job(linked, "update")
    await harness.drive(runner, until=settled)
    _stripe(harness).delay_next(1.0, after_processing=True, method="POST", path="/v1/customers")
    inline = await harness.add_customer("stripe", external_id=f"{round_}-stripe-inline", **PERSONAL)
    assert (await runner.create_inline(stripe_conn, inline, str(uuid.uuid4()), 0.2)).provider_customer_id is None

    # a signed command through the batch: its job is run like the others
    await run_signed_command(harness, round_)
    await harness.drive(runner, until=settled)
    for factory in harness.factories:
        await factory.aclose_all()
    harness.factories.clear()


def _stripe(harness: ProviderHarness) -> FakeStripe:
    fake = harness.fakes["stripe"]
    assert isinstance(fake, FakeStripe)
    return fake


async def run_signed_command(harness: ProviderHarness, round_: str) -> None:
    registry = harness.registry
    service = BatchService(
        pool=harness.pool,
        decode_context=DecodeContext(signing_keys=SigningKeys({ORG: [SIGNING_SECRET]}), registry=registry),
        registry=registry,
        dead_letters=RecordingSink(),
    )
    body = {
        "external_id": f"{round_}-signed",
        **PERSONAL,
        "billing_configuration": {
            "payment_provider": "gocardless",
            "payment_provider_code": "gocardless_main",
            "sync_with_provider": True,
        },
    }
    value = encode(command(ORG, body))
    headers = (("content-type", b"application/json"), (SIGNATURE_HEADER, sign(SIGNING_SECRET, value)))
    report = await service.handle([RecordFactory().record(value, headers=headers)])
    assert report.summary.created == 1


async def check_stored_errors(harness: ProviderHarness) -> None:
    errors = [event.body["provider_error"] for event in await harness.events() if "provider_error" in event.body]
    assert {error["http_status"] for error in errors} >= {400, 422}
    jobs = await harness.jobs()
    assert 401 in {job["last_error"]["http_status"] for job in jobs if job["status"] == "pending"}  # waiting
    assert {job["kind"] for job in jobs} >= {"create", "checkout", "update"}
    notes = [job["last_error"] for job in jobs if job["last_error"] is not None]
    assert leaks(orjson.dumps(errors).decode()) == []
    assert leaks(orjson.dumps(notes).decode()) == []


@pytest.mark.usefixtures("marker_fakes", "restore_logging")
async def test_no_personal_data_or_secret_in_logs_or_metrics(
    harness: ProviderHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    with capture_logs() as entries:
        await run_suite(harness, "captured")
    events = {entry["event"] for entry in entries}
    assert {
        "provider_job_done",
        "provider_job_waits",
        "provider_job_failed",
        "provider_connection_credentials_refused",
        "provider_connection_state",
        "provider_credentials_check_failed",
    } <= events
    assert leaks(repr(entries)) == []
    await check_stored_errors(harness)

    configure_logging("DEBUG", "json", capture_uncaught=False)
    capsys.readouterr()
    await run_suite(harness, "stderr")
    captured = capsys.readouterr()
    lines = [orjson.loads(line) for line in captured.err.splitlines() if line.strip()]
    assert any(line.get("event") == "provider_job_failed" for line in lines)
    assert leaks(captured.err) == []
    assert leaks(captured.out) == []

    metrics = harness.metrics.render().decode()
    assert 'customer_worker_provider_calls_total{outcome="permanent_error",provider="stripe"}' in metrics
    assert leaks(metrics) == []
