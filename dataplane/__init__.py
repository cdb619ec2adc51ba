"""The XDP dataplane: the C program under bpf/, and `Dataplane`, its one Python adapter.

Importing this package does not import bcc; constructing a `Dataplane` does.
"""

from dataplane.dataplane import Attachment, Dataplane, DataplaneError, purge

__all__ = ["Attachment", "Dataplane", "DataplaneError", "purge"]
