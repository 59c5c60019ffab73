"""Config: transparent listeners (`transparent`, `capture`, `sniff`) and `defaults.sniff`,
`defaults.mark`. Every error names file:line: path, as for the rest of the file."""

from __future__ import annotations

import textwrap

import pytest

from chainer.config import parse_config
from chainer.errors import ConfigErrors
from chainer.models import DEFAULT_MARK, Address, Capture, Config, Sniff

ROUTES = "routes: [{match: '*', via: direct}]\n"


def parse(text: str) -> Config:
    return parse_config(textwrap.dedent(text) + ROUTES, "routes.yaml")


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse(text)
    return [str(e) for e in info.value.errors]


def test_a_full_transparent_listener() -> None:
    config = parse("""\
        listen:
          - 127.0.0.1:8080
          - address: "[::]:12345"
            transparent: redirect
            capture:
              from: [192.168.1.0/24, "fd00::1/64"]
              interfaces: [eth1, "wg*"]
              uids: [0, 1000, alice]
            sniff: {timeout: 1s}
        defaults:
          sniff: {timeout: 500ms, bytes: 8KiB}
          mark: 0x1234
          connect_timeout: 2s
        """)
    plain, transparent = config.listeners
    assert plain.transparent is None
    assert plain.sniff is None
    assert transparent.address == Address("::", 12345)
    assert transparent.transparent == "redirect"
    assert transparent.capture == Capture(
        ("192.168.1.0/24", "fd00::/64"), ("eth1", "wg*"), (0, 1000, "alice"), False
    )
    assert transparent.sniff == Sniff(1.0, 8192)  # bytes from defaults.sniff
    assert config.mark == 0x1234
    assert config.defaults.connect == 2.0  # the hop defaults are read as before


def test_defaults_apply_and_the_mark_defaults_only_with_a_transparent_listener() -> None:
    config = parse("""\
        listen:
          - {address: 127.0.0.1:1, transparent: tproxy, capture: {uids: all}}
        """)
    (listener,) = config.listeners
    assert listener.sniff == Sniff(0.3, 16384)
    assert listener.capture is not None
    assert listener.capture.all_uids
    assert listener.capture.local
    assert not listener.capture.lan
    assert config.mark == DEFAULT_MARK == 0x2C8
    assert parse("listen: [127.0.0.1:1]\n").mark is None


@pytest.mark.parametrize(
    ("defaults", "listener", "expected"),
    [
        ("sniff: false", "", None),
        ("sniff: false", "sniff: true", Sniff()),
        ("sniff: false", "sniff: {bytes: 1MiB}", Sniff(0.3, 1 << 20)),
        ("sniff: {timeout: 2s}", "sniff: false", None),
        ("sniff: {timeout: 2s}", "sniff: {bytes: 4096}", Sniff(2.0, 4096)),
        ("sniff: true", "", Sniff()),
    ],
)
def test_sniff_is_inherited_and_overridden(
    defaults: str, listener: str, expected: Sniff | None
) -> None:
    extra = f", {listener}" if listener else ""
    config = parse(f"""\
        defaults: {{{defaults}}}
        listen:
          - {{address: 127.0.0.1:1, transparent: redirect{extra}}}
        """)
    assert config.listeners[0].sniff == expected


def test_mark_false_turns_marking_off_and_a_plain_config_may_mark() -> None:
    config = parse("""\
        defaults: {mark: false}
        listen: [{address: 127.0.0.1:1, transparent: redirect}]
        """)
    assert config.mark is None
    assert parse("defaults: {mark: 712}\n").mark == 712
    assert parse("defaults: {mark: '0x2c8'}\n").mark == 0x2C8


def test_a_transparent_listener_on_any_address_needs_no_allow() -> None:
    """It serves only what the rules steer to it; a direct connection is a loop."""
    config = parse("""\
        listen:
          - {address: 0.0.0.0:12345, transparent: redirect, capture: {from: 10.0.0.0/8}}
        """)
    assert config.listeners[0].capture == Capture(sources=("10.0.0.0/8",))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "listen: [{address: 127.0.0.1:1, transparent: nat}]",
            "routes.yaml:1: listen[0].transparent: expected redirect or tproxy, got a string",
        ),
        (
            "listen: [{address: 127.0.0.1:1, capture: {uids: all}}]",
            "routes.yaml:1: listen[0].capture: only for a transparent listener",
        ),
        (
            "listen: [{address: 127.0.0.1:1, sniff: false}]",
            "routes.yaml:1: listen[0].sniff: only for a transparent listener",
        ),
        (
            "listen: [{address: 127.0.0.1:1, transparent: redirect, auth: {users: {a: b}}}]",
            "routes.yaml:1: listen[0].auth: a transparent listener speaks no protocol to its "
            "clients: no tls:, auth: or proxy_protocol:",
        ),
        (
            "listen: [{address: 127.0.0.1:1, transparent: tproxy, proxy_protocol: true, "
            "proxy_protocol_from: [10.0.0.0/8]}]",
            "routes.yaml:1: listen[0].proxy_protocol: a transparent listener speaks no protocol "
            "to its clients: no tls:, auth: or proxy_protocol:",
        ),
        (
            "listen: [{address: 127.0.0.1:1, transparent: redirect, capture: {}}]",
            "routes.yaml:1: listen[0].capture: captures nothing: give from:, interfaces: or uids:",
        ),
        (
            "listen: [{address: 127.0.0.1:1, transparent: redirect, capture: {from: []}}]",
            "routes.yaml:1: listen[0].capture.from: empty: leave the key out instead",
        ),
        (
            "listen: [{address: 127.0.0.1:1, transparent: redirect, capture: {form: x}}]",
            'routes.yaml:1: listen[0].capture: unknown key "form" (did you mean "from"?)',
        ),
        (
            "listen: [{address: 0.0.0.0:1, transparent: redirect, capture: {from: [lan]}}]",
            'routes.yaml:1: listen[0].capture.from[0]: not an IP range: "lan"',
        ),
        (
            "listen: [{address: 0.0.0.0:1, transparent: redirect, capture: {interfaces: a b}}]",
            'routes.yaml:1: listen[0].capture.interfaces: not an interface name: "a b"',
        ),
        (
            "listen: [{address: 0.0.0.0:1, transparent: redirect, capture: {uids: [-1]}}]",
            "routes.yaml:1: listen[0].capture.uids[0]: expected a uid or a user name, got a number",
        ),
        (
            "listen: [{address: 127.0.0.1:1, transparent: redirect, capture: {from: 10.0.0.0/8}}]",
            "routes.yaml:1: listen[0].capture: redirect sends a LAN's connections to the address "
            "of the interface they came in by, which 127.0.0.1:1 never sees: listen on 0.0.0.0 "
            "or [::]",
        ),
        (
            "listen: [{address: 10.0.0.1:1, transparent: redirect, capture: {uids: all}}]",
            "routes.yaml:1: listen[0].capture.uids: redirect sends this machine's own connections "
            "to 127.0.0.1 or ::1, which 10.0.0.1:1 never sees: listen on loopback, 0.0.0.0 or [::]",
        ),
        (
            "listen: [{address: 0.0.0.0:1, transparent: tproxy, capture: {from: 'fd00::/8'}}]",
            "routes.yaml:1: listen[0].capture.from: fd00::/8 is IPv6 but 0.0.0.0:1 does not take "
            "IPv6 connections (listen on [::] for both)",
        ),
        (
            "listen: [{address: 127.0.0.1:1, transparent: redirect, sniff: {timeout: 2m}}]",
            "routes.yaml:1: listen[0].sniff.timeout: at most 60s",
        ),
        (
            "listen: [{address: 127.0.0.1:1, transparent: redirect, sniff: {bytes: 16KB}}]",
            "routes.yaml:1: listen[0].sniff.bytes: expected a size from 256B to 1MiB like 16KiB, "
            "got a string",
        ),
        (
            "listen: [{address: 127.0.0.1:1, transparent: redirect, sniff: {bytes: 100}}]",
            "routes.yaml:1: listen[0].sniff.bytes: expected a size from 256B to 1MiB like 16KiB, "
            "got a number",
        ),
        (
            "defaults: {mark: 0}",
            "routes.yaml:1: defaults.mark: expected a mark like 0x2c8, or false, got a number",
        ),
        (
            "defaults: {mark: true}",
            "routes.yaml:1: defaults.mark: expected a mark like 0x2c8, or false, got true/false",
        ),
        (
            "defaults: {sniff: {timeout: 1s, size: 2}}",
            'routes.yaml:1: defaults.sniff: unknown key "size"',
        ),
        (
            "defaults: {snif: false}",
            'routes.yaml:1: defaults: unknown key "snif"',
        ),
    ],
)
def test_errors_name_the_line_and_path(text: str, message: str) -> None:
    assert message in errors(text + "\n")


def test_a_duplicate_defaults_key_is_an_error() -> None:
    found = errors("defaults:\n  mark: 1\n  mark: 2\n")
    assert found == ["routes.yaml:3: defaults.mark: duplicate key (first at line 2)"]


def test_a_plain_listener_still_must_say_who_may_use_it() -> None:
    found = errors("listen: [0.0.0.0:8080]\n")
    assert len(found) == 1
    assert "neither auth: nor allow:" in found[0]
