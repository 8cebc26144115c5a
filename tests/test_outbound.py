"""Which proxy each URL goes through, as HTTP_PROXY / NO_PROXY say (relay.outbound); sends
through a proxy end to end are in tests/channels/test_webhook_http.py."""

from __future__ import annotations

import pytest

from relay.outbound import Proxies, UnsupportedProxy, origin

PROXY = "http://proxy.corp:3128"


def via(no_proxy: str, url: str) -> str | None:
    return Proxies({"http": PROXY, "https": PROXY, "no": no_proxy}).for_url(url)


@pytest.mark.parametrize(
    ("no_proxy", "url"),
    [
        ("[::1]", "http://[::1]:8080/in"),  # Go's and Alertmanager's form: urllib missed it
        ("[::1]:8080", "http://[::1]:8080/in"),
        ("::1", "http://[::1]/in"),
        ("*.example.com", "https://hooks.example.com/in"),  # Go's subdomain wildcard
        ("example.com", "https://hooks.example.com/in"),
        ("10.0.0.0/8, fd00::/8", "http://[fd00::5]/in"),
        ("127.0.0.1:9000", "http://127.0.0.1:9000/in"),
        ("*", "https://anything.example/in"),
        ("10.1.2.3/8", "http://10.200.0.1/in"),  # host bits set: still the block, as curl reads it
    ],
)
def test_no_proxy_excepts_the_host(no_proxy: str, url: str) -> None:
    assert via(no_proxy, url) is None


@pytest.mark.parametrize(
    ("no_proxy", "url"),
    [
        ("[::1]:8080", "http://[::1]:9000/in"),  # another port
        ("[::2]", "http://[::1]/in"),
        ("*.example.com", "https://example.org/in"),
        ("[not-an-address", "http://[::1]/in"),  # skipped, not a crash
        ("", "http://10.0.0.1/in"),
        ("11.2.3.4", "http://1.2.3.4/in"),  # a plain address is no bracketed one cut short
    ],
)
def test_no_proxy_leaves_other_hosts_to_the_proxy(no_proxy: str, url: str) -> None:
    assert via(no_proxy, url) == PROXY


def test_a_socks_proxy_is_refused_at_each_url_and_warned_of_without_credentials() -> None:
    proxies = Proxies({"https": "socks5h://u:secret@gate:1080", "no": "internal"})
    assert proxies.for_url("http://x/") is None  # no HTTP_PROXY: nothing to refuse
    assert proxies.for_url("https://internal/") is None
    with pytest.raises(UnsupportedProxy, match="proxy socks5h://gate:1080 not supported"):
        proxies.for_url("https://hooks.slack.com/x")
    [problem] = proxies.problems()
    assert problem.startswith("HTTPS_PROXY: proxy socks5h://gate:1080") and "secret" not in problem


def test_proxies_relay_speaks_to_are_no_problem() -> None:
    """Only an HTTP(S)_PROXY relay cannot speak to is warned of, not a good one (nor another
    scheme's variable, which relay never reads)."""
    proxies = Proxies({"http": "proxy.corp:3128", "https": "https://gate:443", "ftp": "socks5://s"})
    assert proxies.problems() == []
    assert proxies.for_url("http://hooks.example/in") == "http://proxy.corp:3128"  # no scheme: http
    shouted = Proxies({"https": "HTTPS://gate:443"})  # a scheme's case is no matter (RFC 3986)
    assert shouted.problems() == [] and shouted.for_url("https://x/") == "HTTPS://gate:443"


@pytest.mark.parametrize(
    ("location", "said"),
    [
        ("https://u:token@hooks.example:8443/in?key=1", "https://hooks.example:8443"),
        ("http://[::1]/x", "http://[::1]"),
        ("http://" + "a" * 253 + "/x", "http://" + "a" * 253),  # the longest DNS name
        ("http://" + "a" * 254 + "/x", ""),  # no name: noise, not a hint
        ("/moved/here", ""),  # relative: no host to tell
        ("hooks.example/in", ""),
        ("https://hooks.example:99999/in", ""),  # a port out of range
        (None, ""),
    ],
)
def test_origin_of_a_redirect_keeps_only_scheme_host_and_port(
    location: str | None, said: str
) -> None:
    assert origin(location) == said
