"""`customer-worker dev --console`: the operator console beside the dev stack's worker, with a dev operator token
(written hashed to the data folder's tokens file, printed once) unless CONSOLE_TOKENS_FILE is set."""

from __future__ import annotations

import asyncio
from pathlib import Path

from worker.app import Worker
from worker.console.auth import hash_token, new_token
from worker.console.server import serve
from worker.settings import ConsoleSettings, Settings


def dev_tokens(data_dir: Path) -> tuple[Path, str]:
    token = new_token()
    path = data_dir / "console-tokens.yaml"
    path.write_text(f"tokens:\n  - {{name: dev-operator, role: operator, sha256: {hash_token(token)}}}\n")
    path.chmod(0o600)
    return path, token


async def with_console(worker: Worker, settings: Settings, data_dir: Path) -> int:
    """Run the worker and the console until the worker stops (Ctrl-C), then stop the console."""
    console = ConsoleSettings()
    token = None
    if console.console_tokens_file is None:
        path, token = dev_tokens(data_dir)
        console = console.model_copy(update={"console_tokens_file": path})
    stop = asyncio.Event()
    served = asyncio.create_task(serve(settings.database_url, console, settings, stop, install_signal_handlers=False))
    host = "127.0.0.1" if console.console_host in ("0.0.0.0", "::") else console.console_host
    print(f"Console: http://{host}:{console.console_port}/", end="", flush=True)
    print(f"  (sign in with the dev token {token})" if token else "", flush=True)
    running = asyncio.create_task(worker.run())
    await asyncio.wait({running, served}, return_when=asyncio.FIRST_COMPLETED)
    if served.done() and not running.done():  # the console could not start (CONSOLE_PORT in use?): stop all
        worker.request_stop()
        await running
        served.result()
    stop.set()
    await served
    return running.result()
