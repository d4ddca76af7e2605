"""Which provider connection a command links to (SPEC §9 and §11).

A command links when `payment_provider` is set (by the command, or stored) and either `sync_with_provider` is true
or it gives a `provider_customer_id`. Provider and code come from the command or, where it omits them, from the
stored customer; so the full lookup needs the stored state and runs in the domain. `precheck` settles what the
command alone decides, so that validation can report it together with the command's other errors.
"""

from __future__ import annotations

from typing import NamedTuple

from worker.contract.codes import ErrorCode
from worker.contract.connections import Connection, Connections, LookupFailure
from worker.contract.customer import BillingConfiguration


class LinkRequest(NamedTuple):
    # A named tuple: built for most commands that carry a provider, and cheaper to build than a dataclass.
    provider: str | None  # the command's provider; None when it omits it (the stored one is used)
    code: str | None
    code_given: bool  # the command has `payment_provider_code` (possibly null); else the stored code is used
    provider_customer_id: str | None
    sync_with_provider: bool
    sync: bool


def link_request(billing: BillingConfiguration | None) -> LinkRequest | None:
    if billing is None:
        return None
    provider_customer_id = billing.get("provider_customer_id")
    if not billing.get("sync_with_provider") and not provider_customer_id:
        return None
    if "payment_provider" in billing and billing["payment_provider"] is None:
        return None
    return LinkRequest(
        provider=billing.get("payment_provider"),
        code=billing.get("payment_provider_code"),
        code_given="payment_provider_code" in billing,
        provider_customer_id=provider_customer_id,
        sync_with_provider=bool(billing.get("sync_with_provider")),
        sync=bool(billing.get("sync")),
    )


def resolve_connection(
    connections: Connections,
    organization_id: str,
    link: LinkRequest,
    *,
    stored_provider: str | None,
    stored_code: str | None,
) -> Connection | LookupFailure | None:
    """The connection to link through; None when neither the command nor the customer names a provider."""
    provider = link.provider or stored_provider
    if provider is None:
        return None
    if link.code_given:
        code = link.code
    else:
        # A stored code belongs to the stored provider; it says nothing about another one.
        code = stored_code if provider == stored_provider else None
    return connections.lookup(organization_id, provider, code)


def precheck(connections: Connections, organization_id: str, link: LinkRequest) -> LookupFailure | None:
    """The lookup failures the command decides on its own, whatever is stored."""
    if link.provider is None:
        return None
    if link.code_given:
        found = connections.lookup(organization_id, link.provider, link.code)
        return found if isinstance(found, LookupFailure) else None
    # Code omitted: a stored code may settle it, unless the organization has no connection of this provider.
    found = connections.lookup(organization_id, link.provider, None)
    if isinstance(found, LookupFailure) and found.code is ErrorCode.PAYMENT_PROVIDER_NOT_FOUND:
        return found
    return None
