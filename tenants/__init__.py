"""Tenants: the model (prefixes, mode, allow/deny lists, policy), validation, import/export,
and compilation into dataplane tables. Nothing here talks to the kernel."""

from tenants.errors import ConfigError
from tenants.model import AclEntry, Network, PortRange, Tenant, TenantSet, parse_network
from tenants.policy import TenantPolicy

__all__ = ["AclEntry", "ConfigError", "Network", "PortRange", "Tenant", "TenantPolicy", "TenantSet",
           "parse_network"]
