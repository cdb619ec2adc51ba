"""The network-namespace lab: topology, real services, attack generator, legitimate traffic.

Import light things here only: the attack generator (scapy, bcc) and the traffic
runner load on demand from `appliance.lab.attack` and `appliance.lab.traffic`.
"""

from appliance.lab.topology import TENANTS, Lab, LabError, LabStatus, Server, TenantSpec, lab_config

__all__ = ["TENANTS", "Lab", "LabError", "LabStatus", "Server", "TenantSpec", "lab_config", "logs_to_stderr"]


def logs_to_stderr() -> None:
    """For the lab's CLI commands: keep stdout for results (JSON lines), unless logging is set up already."""
    import sys  # noqa: PLC0415

    import structlog  # noqa: PLC0415
    if not structlog.is_configured():
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
