"""The runner's per-connection rate limit against a provider enforcing the same rate (SPEC §9: calls are
rate-limited per connection): as many calls per second as allowed, and never a 429."""

from __future__ import annotations

import pytest

from tests.fakes.stripe_fake import FakeStripe
from tests.integration import test_providers_jobs as support
from tests.integration.test_providers_jobs import ProviderHarness, connection

# The fakes and the harness of the provider job tests, as fixtures of this module too.
fakes = support.fakes
harness = support.harness

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"),
]

RATE = 20  # calls per second, burst as many: the provider's bucket and the connection's setting
STEADY_SECONDS = 3


async def test_calls_per_second_match_the_connection_rate_without_429(harness: ProviderHarness) -> None:
    fake = harness.fakes["stripe"]
    assert isinstance(fake, FakeStripe)
    harness.add_connection(connection("stripe", fake, code="stripe_rated", rate_limit_per_second=float(RATE)))
    total = RATE * (1 + STEADY_SECONDS)  # the burst, then ~3 s at the steady rate
    for _ in range(total):
        customer = await harness.add_customer(
            "stripe", code="stripe_rated", provider_payment_methods=("customer_balance",)
        )
        await harness.add_job(customer)
    fake.rate_limit(RATE, burst=RATE)

    await harness.drive(harness.runner(concurrency=16), timeout=30)

    assert fake.rate_limited_count == 0
    times = sorted(request.received_at for request in fake.requests)
    assert len(times) == total
    # Both buckets start full: the first RATE calls are the burst; the rate is measured over the calls after it.
    steady = times[RATE:]
    achieved = (len(steady) - 1) / (steady[-1] - steady[0])
    assert abs(achieved - RATE) <= 0.1 * RATE, f"{achieved:.1f} calls/s"
