"""The network-namespace lab: topology, real services, attack generator, legitimate traffic.

Import light things here only: the attack generator (scapy, bcc) and the traffic
runner load on demand from `appliance.lab.attack` and `appliance.lab.traffic`.
"""

from appliance.lab.topology import TENANTS, Lab, LabError, LabStatus, Server, TenantSpec, lab_config

__all__ = ["TENANTS", "Lab", "LabError", "LabStatus", "Server", "TenantSpec", "lab_config"]
