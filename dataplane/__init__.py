"""The XDP dataplane: the C program under bpf/, and `Dataplane`, its one Python adapter.

Submodules, from the bottom up: `constants` (every number shared with C), `keys` and `api`
(plain data types and the `DataplaneLike` protocol), `bpfsys` (bpf() syscalls), `native` (C
loops of the control plane compiled with clang when first used: the reader's, and the helper
`policy.native` compiles its own with), `reader` (counter decoding, no bcc), `loader` (compile, pinned maps, attach), `tables` (map writes),
`ring` (samples), `dataplane` (the `Dataplane` facade over them) and `testing` (what tests
may look at).

Importing this package imports nothing else: `import dataplane.constants` (as `tenants/` does)
stays free of numpy and of the adapter. The names below load their module on first use
(PEP 562); constructing a `Dataplane` imports bcc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataplane.api import DataplaneError
    from dataplane.dataplane import Dataplane
    from dataplane.loader import Attachment, purge

# name -> the module that defines it
_LAZY = {"Attachment": "dataplane.loader", "Dataplane": "dataplane.dataplane",
         "DataplaneError": "dataplane.api", "purge": "dataplane.loader"}

__all__ = ["Attachment", "Dataplane", "DataplaneError", "purge"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dataplane' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value   # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
