"""Schema Registry framed values through the real worker (issue 18, case 1; SPEC §12).

A framed value whose JSON held a quote and a colon inside a string, or whose schema id reads `":` (8762), made the
decode stage raise: the consumer polled the same batch again, forever, and no later record of the partition was
answered while `/readyz` stayed 200. Here such records are answered like their payloads, and the records after them
on the same partition too.
"""

from __future__ import annotations

import json
import uuid

from tests.harness.adversarial import Stack, answers, assert_every_partition_answers, command, encode, event_body
from worker.contract.framing import frame

QUOTE_COLON_ID = int.from_bytes(b'\x00\x00":', "big")  # 8762


async def test_framed_values_that_stalled_a_partition_are_answered_and_so_are_the_records_after_them(
    stack: Stack,
) -> None:
    json_text = command(stack.organization_id, f"cus_json_text_{uuid.uuid4().hex[:6]}")
    json_text["customer"]["metadata"] = [{"key": "raw", "value": '{"plan": "gold"}'}]
    spaced = command(stack.organization_id, f"cus_spaced_{uuid.uuid4().hex[:6]}")
    after = command(stack.organization_id, f"cus_after_{uuid.uuid4().hex[:6]}")
    records = [
        (json_text, frame(encode(json_text), 1)),
        (spaced, frame(json.dumps(spaced).encode(), QUOTE_COLON_ID)),
        (after, encode(after)),
    ]
    producer = await stack.producer()
    try:
        for _, value in records:  # one partition, in this order
            await producer.send_and_wait(stack.topics["commands"], value, key=b"o:framed", partition=0)
    finally:
        await producer.stop()

    for document, value in records:
        [event] = await stack.events.wait_for(answers(document["message_id"]), worker=stack.worker)
        assert event_body(event)["event_type"] == "customer.created"
        schema_id = dict(event.headers).get("schema-id")
        assert schema_id == (str(int.from_bytes(value[1:5], "big")).encode() if value[0] == 0 else None)
    [created] = await stack.events.wait_for(answers(json_text["message_id"]), worker=stack.worker)
    assert event_body(created)["customer"]["metadata"][0]["value"] == '{"plan": "gold"}'
    await assert_every_partition_answers(stack)
