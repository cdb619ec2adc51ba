"""TLS client contexts from a receiver's `ca_file` (and syslog's `cert_file`/`key_file`).

The config parser loads the files too, so that a wrong path is refused, naming its key, when
the config is validated. A file that goes away later makes a delivery fail with an error naming
the key and the path, and the event stays queued: an operator fixes the file, and it goes out.
"""

from __future__ import annotations

import ssl

from .base import NotifierError


def load_ca(ca_file: str | None) -> ssl.SSLContext:
    """A client context that verifies servers against `ca_file` (None: the system's CAs);
    ValueError saying what is wrong with the file, naming its path."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as exc:  # an OSError too: caught first, the file was read
        raise ValueError(f"{ca_file} holds no PEM certificate ({exc.reason or exc})") from exc
    except OSError as exc:
        raise ValueError(f"{ca_file} does not exist or cannot be read ({exc.strerror or exc})") from exc


def load_client_cert(context: ssl.SSLContext, cert_file: str, key_file: str | None) -> None:
    """Present `cert_file` (with `key_file`) to servers; ValueError naming both paths."""
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise ValueError(f"{cert_file} with key_file {key_file} is not a matching PEM certificate and key "
                         f"({exc.reason or exc})") from exc
    except OSError as exc:
        raise ValueError(f"{cert_file} or key_file {key_file} does not exist or cannot be read "
                         f"({exc.strerror or exc})") from exc


def client_context(where: str, ca_file: str | None, cert_file: str | None = None,
                   key_file: str | None = None) -> ssl.SSLContext:
    """The context a notifier connects with, or NotifierError `<where>: <key>: <problem>`.
    Not permanent: a file is the operator's to fix, and the events wait for it."""
    try:
        context = load_ca(ca_file)
    except ValueError as exc:
        raise NotifierError(f"{where}: ca_file: {exc}") from exc
    if cert_file is not None:
        try:
            load_client_cert(context, cert_file, key_file)
        except ValueError as exc:
            raise NotifierError(f"{where}: cert_file: {exc}") from exc
    return context
