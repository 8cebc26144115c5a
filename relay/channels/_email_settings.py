"""The settings of an `email` channel, each checked as the config is read: `smtp` (host,
port, implicit TLS or STARTTLS, credentials, CA file, EHLO name), `from`, `to`, `cc` and
`headers` (addresses and headers by relay.channels._email_addresses). The channel that sends
with them is relay.channels.email."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, FilePath, SecretStr, ValidationInfo, field_validator, model_validator

from relay.channels._email_addresses import check_address, check_headers, split_addresses
from relay.channels._http_answers import LOCAL_HOSTS
from relay.channels._tls import check_ca_file
from relay.config import ChannelSettings, from_config_dir
from relay.config_base import Strict

# EHLO's argument (RFC 5321 4.1.1.1): a domain, or an address literal in brackets
_EHLO_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[!-Z^-~]+\]")


class SmtpSettings(Strict):
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)
    starttls: bool | None = None  # default: True unless implicit TLS
    tls: bool | None = None  # implicit TLS (SMTPS); default: True on port 465 unless `starttls`
    username: str | None = None
    password: SecretStr | None = None
    ca_file: FilePath | None = None
    validate_certs: bool = True
    hello: str | None = None  # the name EHLO gives; default: this machine's (socket.getfqdn, once)

    @model_validator(mode="after")
    def _coherent(self) -> SmtpSettings:
        if self.tls and self.starttls:
            raise ValueError("tls (implicit TLS) and starttls are exclusive; choose one")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.password is not None and not self._encrypted_or_local:
            raise ValueError(
                "username and password need starttls or tls: without TLS they cross the"
                " network in clear (allowed only to this machine)"
            )
        return self

    @property
    def _encrypted_or_local(self) -> bool:
        return self.use_tls or self.use_starttls or self.host.lower().strip("[]") in LOCAL_HOSTS

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value or any(c.isspace() or c in "/@" for c in value):
            raise ValueError("host must be a host name or an IP address, without a scheme")
        if value.count(":") == 1:
            raise ValueError("host cannot carry a port; set smtp.port")
        return value

    @field_validator("hello")
    @classmethod
    def _hello(cls, value: str | None) -> str | None:
        if value is not None and not _EHLO_NAME.fullmatch(value):
            raise ValueError(
                "hello must be a domain name or an address literal such as [192.0.2.1]"
            )
        return value

    @field_validator("ca_file", mode="before")
    @classmethod
    def _from_config_dir(cls, value: Any, info: ValidationInfo) -> Any:
        return from_config_dir(value, info)

    @field_validator("ca_file")
    @classmethod
    def _pem(cls, value: FilePath | None) -> FilePath | None:
        if value is not None:
            check_ca_file(value)
        return value

    @property
    def use_tls(self) -> bool:
        """Implicit TLS: as asked, else on port 465 (SMTPS) as Alertmanager does, unless the
        user asked for `starttls` either way (then the port is theirs to explain)."""
        if self.tls is not None:
            return self.tls
        return self.port == 465 and self.starttls is None

    @property
    def use_starttls(self) -> bool:
        return self.starttls if self.starttls is not None else not self.use_tls

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 465 if self.use_tls else 587 if self.use_starttls else 25


class EmailSettings(ChannelSettings):
    smtp: SmtpSettings
    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    cc: list[str] = []
    headers: dict[str, str] = {}

    @field_validator("from_")
    @classmethod
    def _sender(cls, value: str) -> str:
        check_address(value)
        return value

    @field_validator("to", "cc", mode="before")
    @classmethod
    def _one_string(cls, value: object) -> object:
        """Alertmanager's `to: "a@x.com, b@y.com"`: one string of comma-separated addresses."""
        if isinstance(value, str) and "\r" not in value and "\n" not in value:
            return split_addresses(value)
        return [value] if isinstance(value, str) else value

    @field_validator("to", "cc")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        """Every bad address named at once: a list with two typos is fixed in one go."""
        problems = []
        for address in value:
            try:
                check_address(address)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return check_headers(value)
