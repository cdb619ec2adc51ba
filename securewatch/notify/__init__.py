"""NOC and tenant feeds: syslog, SNMP notifications, email and webhooks, each
behind a durable queue so that nothing is lost while a receiver is down.

    config = parse_notify_config(toml["notify"])
    app.cleanup_ctx.append(NotifierManager(config, bus, state_dir).cleanup_ctx)
"""

from .base import Notifier, NotifierError
from .config import (
    EmailReceiver,
    NotifyConfig,
    Receiver,
    Secret,
    SnmpReceiver,
    SyslogReceiver,
    WebhookReceiver,
    parse_notify_config,
)
from .manager import NOTIFIER_MANAGER, NotifierManager, ReceiverStatus, RetryPolicy, make_notifier
from .queue import DurableQueue

__all__ = [
    "NOTIFIER_MANAGER", "DurableQueue", "EmailReceiver", "Notifier", "NotifierError", "NotifierManager",
    "NotifyConfig", "Receiver", "ReceiverStatus", "RetryPolicy", "Secret", "SnmpReceiver",
    "SyslogReceiver", "WebhookReceiver", "make_notifier", "parse_notify_config",
]
