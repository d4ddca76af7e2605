"""Validation benchmark: how many raw command records `contract.decode` answers per second on one core.

    customer-worker bench-validation [--count N] [--runs R] [--seed S]

The corpus is built once, from a seed, outside the timed loop: N distinct commands as the raw bytes a producer
would send (80 % valid, every customer field filled; 20 % with one to three invalid fields), each signed with
`x-signature` for an organization that has keys, so the timed loop covers JSON parsing, the envelope checks, the
HMAC, the customer model, the cross-field rules and the provider-connection lookup. Each run decodes the whole
corpus; the figures are commands per second for each run and their median.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import string
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from pydantic import SecretStr

from worker.contract.connections import Connection, ConnectionConfig, ProviderRegistry
from worker.contract.decode import Command, DecodeContext, Rejection, decode
from worker.runtime import tune_garbage_collector
from worker.security import SIGNATURE_HEADER, SigningKeys, sign

ORGANIZATION: Final = "org_bench"
SIGNING_KEY: Final = b"bench-signing-key-0123456789abcdef"
CONNECTION_CODE: Final = "stripe_main"
INVALID_SHARE: Final = 0.2

_COUNTRIES: Final = ("FR", "de", "US", "gb", "ES", "IT", "NL", "be", "CH", "SE")
_CURRENCIES: Final = ("EUR", "USD", "GBP", "CHF", "SEK", "JPY", "XOF", "CAD")
_TIMEZONES: Final = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Europe/Berlin", "Africa/Dakar")
_LOCALES: Final = ("fr", "de", "en", "es", "it", "nl")
_METHOD_SETS: Final = (["card"], ["card", "sepa_debit"], ["card", "link"], ["sepa_debit", "bacs_debit"], ["crypto"])

Headers = list[tuple[str, bytes]]
Mutation = Callable[[dict[str, Any]], str]
"""Makes one field of a valid customer body invalid; returns the error path SPEC §3 reports it under."""


class CorpusMismatchError(Exception):
    """The corpus is not what it claims to be (a duplicate, or an outcome that contradicts its mix)."""


@dataclass(frozen=True, slots=True)
class Corpus:
    records: list[tuple[bytes, Headers]]
    valid: int
    invalid: int
    expected_paths: list[frozenset[str]]
    """Per record: the error paths its rejection must report (empty for a valid record)."""


def _word(rng: random.Random, low: int = 4, high: int = 12) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(low, high)))


def _address(rng: random.Random) -> dict[str, Any]:
    return {
        "address_line1": f"{rng.randint(1, 999)} {_word(rng).title()} Street",
        "address_line2": f"Floor {rng.randint(1, 40)}",
        "city": _word(rng).title(),
        "zipcode": f"{rng.randint(10000, 99999)}",
        "state": _word(rng).title(),
        "country": rng.choice(_COUNTRIES),
    }


def valid_customer(rng: random.Random, index: int) -> dict[str, Any]:
    """A full Lago customer body: every field of SPEC §3 filled with a valid value."""
    first, last, company = _word(rng).title(), _word(rng).title(), _word(rng, 5, 14).title()
    domain = f"{company.lower()}.example"
    keys = rng.sample(["segment", "tier", "region", "owner", "source", "channel", "plan"], k=rng.randint(2, 5))
    return {
        "external_id": f"cus_{index:08d}",
        "name": f"{company} {rng.choice(['Inc', 'SAS', 'GmbH', 'Ltd'])}",
        "firstname": first,
        "lastname": last,
        "legal_name": f"{company} Holding",
        "legal_number": f"{rng.randint(10**8, 10**9 - 1)}",
        "tax_identification_number": f"FR{rng.randint(10**10, 10**11 - 1)}",
        "phone": f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
        "url": f"https://www.{domain}",
        "logo_url": f"https://cdn.{domain}/logo.png",
        "email": f"{first.lower()}.{last.lower()}@{domain},billing@{domain}",
        **_address(rng),
        "currency": rng.choice(_CURRENCIES),
        "timezone": rng.choice(_TIMEZONES),
        "customer_type": rng.choice(["company", "individual"]),
        "net_payment_term": rng.randint(0, 90),
        "finalize_zero_amount_invoice": rng.choice(["inherit", "finalize", "skip"]),
        "tax_codes": [f"vat_{rng.randint(0, 30)}", f"tax_{_word(rng, 3, 6)}"],
        "metadata": [
            {"key": key, "value": _word(rng, 3, 30), "display_in_invoice": rng.random() < 0.5} for key in keys
        ],
        "shipping_address": _address(rng),
        "billing_configuration": {
            "invoice_grace_period": rng.randint(0, 30),
            "document_locale": rng.choice(_LOCALES),
            "payment_provider": "stripe",
            "payment_provider_code": CONNECTION_CODE,
            "provider_customer_id": f"cus_{uuid.UUID(int=rng.getrandbits(128)).hex[:14]}",
            "sync": False,
            "sync_with_provider": True,
            "provider_payment_methods": list(rng.choice(_METHOD_SETS)),
        },
    }


def _set(path: str, value: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> str:
        target: Any = body
        *parents, leaf = path.split(".")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(leaf)] = value
        else:
            target[leaf] = value
        return path

    return mutate


MUTATIONS: Final[tuple[Mutation, ...]] = (
    _set("name", "N" * 256),
    _set("email", "someone@example.com,,"),
    _set("currency", "usd"),
    _set("timezone", "Mars/Olympus"),
    _set("country", "ZZ"),
    _set("net_payment_term", -1),
    _set("customer_type", "partner"),
    _set("finalize_zero_amount_invoice", "never"),
    _set("metadata.0.key", "k" * 21),
    _set("metadata.1.value", "v" * 101),
    _set("shipping_address.country", "XX"),
    _set("billing_configuration.document_locale", "xx"),
    _set("billing_configuration.invoice_grace_period", "3"),
    _set("billing_configuration.provider_payment_methods", ["link"]),
    _set("tax_codes.0", "   "),
    _set("phone", 33612345678),
)


def build_corpus(count: int, seed: int) -> Corpus:
    rng = random.Random(seed)
    invalid_indexes = set(rng.sample(range(count), k=round(count * INVALID_SHARE)))
    records: list[tuple[bytes, Headers]] = []
    expected: list[frozenset[str]] = []
    for index in range(count):
        body = valid_customer(rng, index)
        paths: frozenset[str] = frozenset()
        if index in invalid_indexes:
            paths = frozenset(mutate(body) for mutate in rng.sample(MUTATIONS, k=rng.randint(1, 3)))
        message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        value = orjson.dumps(
            {
                "message_id": message_id,
                "organization_id": ORGANIZATION,
                "occurred_at": f"2026-11-24T10:{index // 60 % 60:02d}:{index % 60:02d}Z",
                "customer": body,
            }
        )
        trace = f"00-{uuid.UUID(int=rng.getrandbits(128)).hex}-{rng.getrandbits(64):016x}-01"
        headers: Headers = [
            ("content-type", b"application/json"),
            ("traceparent", trace.encode("ascii")),
            (SIGNATURE_HEADER, sign(SIGNING_KEY, value)),
        ]
        records.append((value, headers))
        expected.append(paths)
    if len({value for value, _ in records}) != count:
        raise CorpusMismatchError("corpus commands are not distinct")
    invalid = len(invalid_indexes)
    return Corpus(records=records, valid=count - invalid, invalid=invalid, expected_paths=expected)


def bench_context() -> DecodeContext:
    config = ConnectionConfig(organization_id=ORGANIZATION, code=CONNECTION_CODE, provider="stripe", secret_env="X")
    registry = ProviderRegistry([Connection(config=config, secret=SecretStr("sk_test_bench"))])
    return DecodeContext(signing_keys=SigningKeys({ORGANIZATION: [SIGNING_KEY]}), registry=registry)


def check_outcomes(corpus: Corpus, context: DecodeContext) -> tuple[int, int]:
    """Decode every record once (untimed) and check each outcome against the corpus mix."""
    valid = rejected = 0
    for (value, headers), paths in zip(corpus.records, corpus.expected_paths, strict=True):
        outcome = decode(value, headers, context)
        if isinstance(outcome, Command) and not paths:
            valid += 1
        elif isinstance(outcome, Rejection) and set(outcome.errors) == paths:
            rejected += 1
        else:
            raise CorpusMismatchError(f"expected errors under {sorted(paths)}, got {outcome!r}")
    return valid, rejected


def _pin_to_one_cpu() -> str:
    if not hasattr(os, "sched_setaffinity") or not hasattr(os, "sched_getaffinity"):
        return "not pinned (no sched_setaffinity on this platform)"
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {allowed[0]})
    return f"pinned to CPU {allowed[0]}"


def time_run(records: Sequence[tuple[bytes, Headers]], context: DecodeContext) -> tuple[float, float]:
    """Wall-clock and CPU seconds to decode every record once."""
    gc.collect()
    started, cpu_started = time.perf_counter(), time.process_time()
    for value, headers in records:
        decode(value, headers, context)
    return time.perf_counter() - started, time.process_time() - cpu_started


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options, for a CLI that declares them on its own sub-command parser."""
    parser.add_argument("--count", type=int, default=50_000, help="distinct commands in the corpus (default 50000)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs over the corpus (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="customer-worker bench-validation", description=(__doc__ or "").split("\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.count < 1 or args.runs < 1:
        parser.error("--count and --runs must be at least 1")
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run with parsed options (`--count`, `--runs`, `--seed`, as `add_arguments` declares them)."""
    if args.count < 1 or args.runs < 1:
        print("bench-validation: --count and --runs must be at least 1", file=sys.stderr)
        return 2
    print(f"validation benchmark: {_pin_to_one_cpu()}, Python {sys.version.split()[0]}")
    started = time.perf_counter()
    corpus = build_corpus(args.count, args.seed)
    size = sum(len(value) for value, _ in corpus.records)
    print(
        f"corpus: {args.count} distinct signed commands, seed {args.seed}, {corpus.valid} valid, "
        f"{corpus.invalid} invalid, {size / args.count:.0f} bytes on average, built in "
        f"{time.perf_counter() - started:.1f} s"
    )
    # The corpus's containers live for the whole benchmark; a worker holds one batch at a time. Freezing them keeps
    # full collections from walking 50,000 records the worker would never hold. The collector is then set up as the
    # worker sets it up (`worker.runtime`).
    tune_garbage_collector()
    context = bench_context()
    try:
        valid, rejected = check_outcomes(corpus, context)
    except CorpusMismatchError as exc:
        print(f"bench-validation: {exc}", file=sys.stderr)
        return 1
    if (valid, rejected) != (corpus.valid, corpus.invalid):
        print(f"bench-validation: {valid} accepted and {rejected} rejected do not match the corpus", file=sys.stderr)
        return 1
    print(f"outcomes: {valid} accepted, {rejected} rejected (matches the corpus mix)")

    rates, cpu_rates = [], []
    for run in range(1, args.runs + 1):
        seconds, cpu_seconds = time_run(corpus.records, context)
        rates.append(args.count / seconds)
        cpu_rates.append(args.count / cpu_seconds)
        print(
            f"run {run}: {rates[-1]:,.0f} commands/s ({seconds:.3f} s wall, {cpu_seconds:.3f} s CPU, "
            f"{seconds / args.count * 1e6:.1f} us per command)"
        )
    median = statistics.median(rates)
    print(f"median: {median:,.0f} commands/s over {args.runs} runs ({1e6 / median:.1f} us per command)")
    # Far more wall than CPU time means another process shared the CPU: the wall figures are then pessimistic.
    print(f"median by CPU time: {statistics.median(cpu_rates):,.0f} commands/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
