"""Serving SecureWatch: inside the appliance process (`start_server`) or alone (`serve_central`)."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from .access_log import StructlogAccessLogger
from .app import create_app
from .context import ApplianceHooks
from .settings import SecureWatchSettings
from .store import Store

log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def start_server(settings: SecureWatchSettings, *, bus: Any = None, appliance: ApplianceHooks | None = None,
                       state_dir: pathlib.Path | None = None, mailer: Any = None) -> AsyncIterator[str]:
    """Open the store, serve the app on settings.listen, yield its base URL; close both on exit.

    HTTPS when [securewatch] tls_cert and tls_key are set (checked when the config was read).
    state_dir: the policy engine's (`seawall run`: STATE_DIR/policy); PCAP downloads are confined to
    its pcap/ directory, where the engine writes them (`policy.pcap`). Without it
    (central mode) no PCAP is served.
    """
    ssl_context = settings.ssl_context()
    store = await Store.open(settings.database)
    runner: web.AppRunner | None = None
    try:
        pcap_root = pathlib.Path(state_dir) / "pcap" if state_dir is not None else None
        app = create_app(settings, store=store, bus=bus, appliance=appliance, mailer=mailer, pcap_root=pcap_root)
        runner = web.AppRunner(app, access_log_class=StructlogAccessLogger)
        await runner.setup()
        site = web.TCPSite(runner, settings.listen_host, settings.listen_port, ssl_context=ssl_context)
        await site.start()
        host, port = runner.addresses[0][:2]
        scheme = "https" if ssl_context is not None else "http"
        url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
        log.info("securewatch.listening", url=url, database=store.dialect, tls=ssl_context is not None,
                 trusted_proxies=[str(n) for n in settings.trusted_proxies])
        yield url
    finally:
        if runner is not None:
            await runner.cleanup()
        await store.close()


async def serve_central(settings: SecureWatchSettings, *, mailer: Any = None,
                        stop: asyncio.Event | None = None) -> None:
    """Central-server mode: the app without a dataplane, until SIGTERM/SIGINT (or `stop`)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # No state_dir: a central server captures nothing, so it serves no PCAP at all (an
    # incident's stored path is not trusted to point at a capture).
    async with start_server(settings, appliance=None, mailer=mailer) as url:
        # stderr: stdout carries the log stream, JSON lines when log_format asks for them.
        print(f"SecureWatch listening on {url} (central server mode)", file=sys.stderr, flush=True)
        await stop.wait()
