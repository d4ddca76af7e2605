"""Identifiers (issue 9): event ids from the kernel's CSPRNG, customer ids a keyed function of the creating command."""

from __future__ import annotations

import os
import uuid

from worker.ids import customer_id, new_id, new_ids


def test_ids_differ_between_a_process_and_its_fork() -> None:
    # A user-space generator (random.Random) forked with the process gives the child the parent's next ids.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_id().bytes)
        os._exit(0)
    os.close(write)
    mine = new_id()
    child = uuid.UUID(bytes=os.read(read, 16))
    os.close(read)
    os.waitpid(pid, 0)
    assert mine != child
    assert mine.version == child.version == 4


def test_customer_ids_are_stable_per_command_and_depend_on_the_key() -> None:
    key, other_key = os.urandom(32), os.urandom(32)
    first = customer_id(key, "org", "msg-1")
    assert first == customer_id(key, "org", "msg-1")  # every retry and replica derives the same id
    assert first.version == 4
    assert len({first, customer_id(key, "org", "msg-2"), customer_id(key, "org2", "msg-1")}) == 3
    assert customer_id(other_key, "org", "msg-1") != first  # unpredictable without the database's key


def test_a_batch_of_ids_is_random_version_4_and_each_distinct() -> None:
    ids = new_ids(1000)
    assert len(set(ids)) == 1000
    assert {(i.version, i.variant) for i in ids} == {(4, uuid.RFC_4122)}
    # Each id keeps 122 random bits: the two batches share nothing, and every random bit varies within one.
    assert not set(ids) & set(new_ids(1000))
    ored = anded = ids[0].int
    for i in ids[1:]:
        ored, anded = ored | i.int, anded & i.int
    fixed = ~(ored ^ anded) & ((1 << 128) - 1)
    assert bin(fixed).count("1") == 6  # the version and variant bits only
    assert new_ids(0) == []
