"""Logging setup shared by the long-running commands (`seawall run`, `seawall securewatch`)."""

from __future__ import annotations

import sys

import structlog


def configure_logging(log_format: str = "auto") -> None:
    """structlog: JSON lines when stdout is not a terminal (or asked), readable console otherwise.

    log_format: [appliance] log_format, one of appliance.config.LOG_FORMATS.
    """
    json_out = log_format == "json" or (log_format == "auto" and not sys.stdout.isatty())
    renderer = structlog.processors.JSONRenderer() if json_out else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, renderer],
        cache_logger_on_first_use=False)
