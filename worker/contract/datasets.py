"""Reference data for validation, built once from maintained datasets (pycountry, the IANA tz database)."""

from __future__ import annotations

import zoneinfo
from typing import Final

import pycountry

COUNTRY_CODES: Final[frozenset[str]] = frozenset(c.alpha_2 for c in pycountry.countries)

# ISO 4217 lists these as fund codes (its "Fund" flag, which pycountry does not carry); they are not currencies.
_FUND_CODES: Final = frozenset({"BOV", "CHE", "CHW", "CLF", "COU", "MXV", "USN", "UYI", "UYW"})
# Among the X-codes only these circulate as money; the rest are metals, bond units, SDR, testing and "no currency".
_CIRCULATING_X_CODES: Final = frozenset({"XAF", "XCD", "XCG", "XOF", "XPF"})

CURRENCY_CODES: Final[frozenset[str]] = frozenset(
    c.alpha_3
    for c in pycountry.currencies
    if c.alpha_3 not in _FUND_CODES and (not c.alpha_3.startswith("X") or c.alpha_3 in _CIRCULATING_X_CODES)
)

LANGUAGE_CODES: Final[frozenset[str]] = frozenset(
    lang.alpha_2 for lang in pycountry.languages if getattr(lang, "alpha_2", None)
)

TIMEZONES: Final[frozenset[str]] = frozenset(zoneinfo.available_timezones() | {"UTC"})

CUSTOMER_TYPES: Final = frozenset({"company", "individual"})
FINALIZE_ZERO_AMOUNT_INVOICE: Final = frozenset({"inherit", "finalize", "skip"})
STRIPE_PAYMENT_METHODS: Final = frozenset(
    {"card", "sepa_debit", "us_bank_account", "bacs_debit", "link", "boleto", "crypto", "customer_balance"}
)
# Payment methods a Stripe checkout (setup) session cannot collect: no checkout link for these.
STRIPE_METHODS_WITHOUT_SETUP: Final = frozenset({"customer_balance", "crypto"})
