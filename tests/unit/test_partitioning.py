"""Events go to the partition every Kafka client picks for their key (murmur2), as aiokafka's own partitioner."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from worker.transport.producers import _key_hash


@given(key=st.binary(min_size=0, max_size=80), count=st.integers(min_value=1, max_value=64))
def test_partition_of_a_key_matches_the_kafka_default_partitioner(key: bytes, count: int) -> None:
    partitions = list(range(count))
    assert partitions[_key_hash(key) % count] == DefaultPartitioner()(key, partitions, partitions)
