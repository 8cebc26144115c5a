"""TLS toward a receiver the system store does not vouch for (a company CA), or one that asks
relay for a certificate of its own (mutual TLS): a webhook channel's `tls`, as Alertmanager's
`http_config.tls_config` (`ca_file`, `cert_file`, `key_file`). Verification stays on: a
receiver whose certificate cannot be checked gets its CA here, never an `insecure` switch.
Email's `smtp.ca_file` is checked and trusted by the same two functions (`check_ca_file`,
`trusting`)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from pydantic import FilePath, ValidationInfo, field_validator, model_validator

from relay.config import from_config_dir
from relay.config_base import Strict


class TlsSettings(Strict):
    # trusted in addition to the system store (and SSL_CERT_FILE)
    ca_file: FilePath | None = None
    # relay's own certificate (its chain) and unencrypted private key, for mutual TLS
    cert_file: FilePath | None = None
    key_file: FilePath | None = None

    @field_validator("ca_file", "cert_file", "key_file", mode="before")
    @classmethod
    def _from_config_dir(cls, value: Any, info: ValidationInfo) -> Any:
        return from_config_dir(value, info)

    @model_validator(mode="after")
    def _loads(self) -> TlsSettings:
        """The files as a TLS client loads them, so that a wrong one is a config error and not
        every send's failure."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.ca_file is not None:
            check_ca_file(self.ca_file)
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # without the system store: quick
        if self.cert_file is not None and self.key_file is not None:
            try:
                _load_pair(probe, self.cert_file, self.key_file)
            except (ssl.SSLError, OSError, ValueError):
                raise ValueError(
                    "cert_file and key_file are not a PEM certificate and its"
                    " unencrypted private key"
                ) from None
        return self


def check_ca_file(path: Path) -> None:
    """A `ca_file` (a webhook's `tls`, email's `smtp`) as a TLS client loads it, so that a
    wrong one is a config error and not every send's failure."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # without the system store: quick
    try:
        probe.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError):
        raise ValueError("ca_file is not a readable PEM certificate bundle") from None


def trusting(ca_file: Path | None) -> ssl.SSLContext:
    """A client context trusting the system store (and SSL_CERT_FILE) plus `ca_file`."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def client_context(tls: TlsSettings | None) -> ssl.SSLContext | None:
    """The context of a channel's requests: the system store plus `ca_file`, presenting
    `cert_file`; None (aiohttp's default, the system store alone) without `tls`."""
    if tls is None:
        return None
    context = trusting(tls.ca_file)
    if tls.cert_file is not None and tls.key_file is not None:
        _load_pair(context, tls.cert_file, tls.key_file)
    return context


def _load_pair(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    """An encrypted key would make OpenSSL ask for its password on the terminal: the empty one
    it is given instead fails to decrypt it, an error like any unreadable key."""
    context.load_cert_chain(str(cert_file), str(key_file), password=lambda: b"")
