"""Tenants: the model (prefixes, mode, allow/deny lists, policy), validation, import/export,
and compilation into dataplane tables. Nothing here talks to the kernel."""

from tenants.compile import (
    CompiledAcl,
    CompiledPolicy,
    CompiledTables,
    ReflectionFilter,
    assign_indices,
    compile_tenant_set,
    fresh_indices,
)
from tenants.errors import ConfigError
from tenants.io import dumps_toml, from_json, load_toml, loads_toml, to_json
from tenants.model import AclEntry, Network, PortRange, Tenant, TenantSet, parse_network
from tenants.policy import TenantPolicy

__all__ = [
    "AclEntry", "CompiledAcl", "CompiledPolicy", "CompiledTables", "ConfigError", "Network", "PortRange",
    "ReflectionFilter", "Tenant", "TenantPolicy", "TenantSet", "assign_indices", "compile_tenant_set",
    "dumps_toml", "fresh_indices", "from_json", "load_toml", "loads_toml", "parse_network", "to_json",
]
