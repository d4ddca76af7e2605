"""The application's typed state keys (aiohttp AppKey), shared by the middlewares and the handlers."""

from __future__ import annotations

from typing import Final

import asyncpg
from aiohttp import web

from worker.console.auth import ProxyTrust, SessionStore, TokenStore
from worker.console.lag import LagMonitor
from worker.settings import ConsoleSettings, KafkaSettings

POOL: Final = web.AppKey("pool", asyncpg.Pool)
TOKENS: Final = web.AppKey("tokens", TokenStore)
SESSIONS: Final = web.AppKey("sessions", SessionStore)
PROXY: Final = web.AppKey("proxy", ProxyTrust)
CONSOLE: Final = web.AppKey("console_settings", ConsoleSettings)
KAFKA: Final = web.AppKey("kafka_settings", KafkaSettings)
LAG: Final = web.AppKey("lag", LagMonitor)
