"""SPEC §12 bounded work per record, for records that amplify into rejections (one error per list item): a module of
its own, so that the peak RSS measured is this worker's alone."""

from __future__ import annotations

import pytest

from tests.harness.adversarial import Stack
from tests.soak.test_heavy_records import REJECTION_KINDS, fifty_worst_case_records


@pytest.mark.timeout(600)
async def test_fifty_records_amplifying_into_rejections_stay_under_300_mb(stack: Stack) -> None:
    await fifty_worst_case_records(stack, REJECTION_KINDS)
