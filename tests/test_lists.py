"""`lists:` — files of patterns, one a line, named by `match: "list:NAME"` and `deny:`:
how they are read, how a bad line is reported, what they match, and the bounds on them."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fakes import free_port
from test_ops import Chainer, EchoServer, tunnel

from chainer.config import _lists, load_config
from chainer.errors import ConfigErrors, Refused
from chainer.models import Address, Config, PatternList
from chainer.ops.explain import ListedAt, explain
from chainer.ops.explain_render import render_json, render_text
from chainer.routing.policy import Guard
from chainer.routing.table import RouteTable

CORP = """\
# corporate names and ranges
.corp.example
*.internal.example:443   # only TLS there
10.0.0.0/8

[2001:db8::]/32
re:^build[0-9]+\\.ci#x$
"""


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding routes.yaml and lists/, and the current directory."""
    (tmp_path / "lists").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(here: Path, routes: str, **files: str) -> Path:
    for name, text in files.items():
        (here / "lists" / f"{name}.txt").write_text(text)
    path = here / "routes.yaml"
    path.write_text(textwrap.dedent(routes))
    return path


def load(here: Path, routes: str, **files: str) -> Config:
    write(here, routes, **files)
    return load_config("routes.yaml")


def errors(here: Path, routes: str, **files: str) -> list[str]:
    write(here, routes, **files)
    with pytest.raises(ConfigErrors) as info:
        load_config("routes.yaml")
    return [str(e) for e in info.value.errors]


SPLIT = """\
lists: {corp: lists/corp.txt}
routes:
  - {match: "list:corp", via: reject}
  - {match: "*", via: direct}
"""


def test_a_list_is_read_line_by_line_skipping_comments_and_blanks(here: Path) -> None:
    config = load(here, SPLIT, corp=CORP)
    listed = config.pattern_list("corp")
    assert listed is not None
    assert listed.file == os.path.join("lists", "corp.txt")
    assert [(p.text, p.line) for p in listed.patterns] == [
        (".corp.example", 2),
        ("*.internal.example:443", 3),
        ("10.0.0.0/8", 4),
        ("[2001:db8::]/32", 6),
        ("re:^build[0-9]+\\.ci#x$", 7),  # a '#' inside a pattern is kept
    ]
    assert all(p.list_name == "corp" for p in listed.patterns)
    assert config.routes[0].patterns == listed.patterns  # expanded in place


@pytest.mark.parametrize(
    ("host", "port", "route"),
    [
        ("corp.example", 443, 0),
        ("a.b.corp.example", 80, 0),
        ("git.internal.example", 443, 0),
        ("git.internal.example", 22, 1),  # the list's pattern says :443
        ("10.1.2.3", 5432, 0),
        ("2001:db8::7", 443, 0),
        ("example.com", 443, 1),
    ],
)
def test_list_means_any_of_its_patterns(here: Path, host: str, port: int, route: int) -> None:
    config = load(here, SPLIT, corp=CORP)
    match = RouteTable(config.routes).match(Address(host, port))
    assert match is not None
    assert match.route.index == route


def test_a_list_inside_a_list_of_patterns_keeps_its_place(here: Path) -> None:
    config = load(
        here,
        """\
        lists: {corp: lists/corp.txt, more: lists/more.txt}
        routes:
          - {match: ["first.example", "list:corp", "last.example", "list:more"], via: reject}
          - {match: "*", via: direct}
        """,
        corp=".corp.example\n",
        more="10.0.0.0/8\n",
    )
    assert [p.text for p in config.routes[0].patterns] == [
        "first.example",
        ".corp.example",
        "last.example",
        "10.0.0.0/8",
    ]


def test_crlf_a_byte_order_mark_and_an_empty_list(here: Path) -> None:
    config = load(
        here,
        """\
        lists: {win: lists/win.txt, none: lists/none.txt}
        routes:
          - {match: "list:none", via: reject}
          - {match: "list:win", via: reject}
          - {match: "*", via: direct}
        """,
        win="\ufeffa.example\r\n# c\r\nb.example\r\n",
        none="# nothing yet\n\n",
    )
    assert config.routes[0].patterns == ()  # matches nothing, and that is allowed
    assert [(p.value, p.line) for p in config.routes[1].patterns] == [
        ("a.example", 1),
        ("b.example", 3),
    ]
    match = RouteTable(config.routes).match(Address("a.example", 443))
    assert match is not None
    assert match.route.index == 1


def test_a_bad_line_is_reported_at_its_file_and_line(here: Path) -> None:
    bad = "good.example\nbad..example\n*.x*\n10.0.0.0/99\nlist:other\nfine.example:99999\n"
    assert errors(here, SPLIT, corp=bad) == [
        "lists/corp.txt:2: lists.corp: not a DNS name or IP literal: 'bad..example'",
        "lists/corp.txt:3: lists.corp: bad domain in '*.x*'",
        "lists/corp.txt:4: lists.corp: bad IP range: '10.0.0.0/99' does not appear to be "
        "an IPv4 or IPv6 network",
        "lists/corp.txt:5: lists.corp: a list cannot name another list",
        "lists/corp.txt:6: lists.corp: bad port in pattern: port out of range: 99999",
    ]


def test_the_list_file_is_shown_beside_routes_yaml_as_that_was_named(
    here: Path, tmp_path: Path
) -> None:
    write(here, SPLIT, corp="bad..example\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(tmp_path / "routes.yaml")
    assert str(info.value.errors[0]).startswith(f"{tmp_path}/lists/corp.txt:1: lists.corp: ")
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "lists").mkdir()
    (sub / "lists" / "corp.txt").write_text("bad..example\n")
    (sub / "routes.yaml").write_text(SPLIT)
    with pytest.raises(ConfigErrors) as info:
        load_config("conf/routes.yaml")
    assert str(info.value.errors[0]).startswith("conf/lists/corp.txt:1: lists.corp: ")


def test_errors_in_routes_yaml_come_before_those_in_its_lists(here: Path) -> None:
    found = errors(
        here,
        """\
        lists: {corp: lists/corp.txt}
        routes:
          - {match: "list:corp", via: nowhere}
        """,
        corp="\n\n\n\n\n\n\nbad..example\n",
    )
    assert found[0].startswith("routes.yaml:3: routes[0].via: ")
    assert found[1].startswith("lists/corp.txt:8: ")


def test_a_wrong_file_is_reported_in_a_bounded_number_of_lines(here: Path) -> None:
    hosts_file = "".join(f"0.0.0.0 ads{n}.example\n" for n in range(100))
    found = errors(here, SPLIT, corp=hosts_file)
    assert len(found) == _lists.MAX_ERRORS_SHOWN + 1
    assert found[0].startswith("lists/corp.txt:1: lists.corp: ")
    assert found[-1] == "lists/corp.txt: lists.corp: 80 more bad lines"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (
            "list:crop",
            'routes.yaml:3: routes[0].match: no list named "crop" (did you mean "corp"?)',
        ),
        ("list:", 'routes.yaml:3: routes[0].match: no list named ""'),
    ],
)
def test_an_unknown_list_is_an_error(here: Path, ref: str, expected: str) -> None:
    routes = SPLIT.replace('"list:corp"', f'"{ref}"')
    assert errors(here, routes, corp=CORP) == [expected]


def test_a_broken_list_is_reported_once_not_again_where_it_is_used(here: Path) -> None:
    found = errors(
        here,
        """\
        lists: {corp: lists/missing.txt}
        routes:
          - {match: ["x.example", "list:corp"], via: reject}
          - {match: "*", via: direct}
        """,
    )
    assert len(found) == 1
    assert found[0].startswith("routes.yaml:1: lists.corp: cannot read: No such file")


@pytest.mark.parametrize("special", ["fifo", "directory", "binary", "name"])
def test_a_list_is_a_regular_utf8_file_named_properly(here: Path, special: str) -> None:
    path = here / "lists" / "corp.txt"
    name = "corp"
    if special == "fifo":
        os.mkfifo(path)  # no writer: opening it for reading would block forever
    elif special == "directory":
        path.mkdir()
    elif special == "binary":
        path.write_bytes(b"\xff\xfe\x00bad")
    else:
        path.write_text("a.example\n")
        name = "a b"
    found = errors(
        here,
        f"""\
        lists: {{"{name}": lists/corp.txt}}
        routes: [{{match: "*", via: direct}}]
        """,
    )
    reason = {
        "fifo": "cannot read: not a regular file",
        "directory": "cannot read: not a regular file",
        "binary": "cannot read: not UTF-8 text",
        "name": 'bad list name "a b": use letters, digits, _ . -',
    }[special]
    assert len(found) == 1
    assert reason in found[0]
    assert found[0].startswith(f"routes.yaml:1: lists.{name}: ")


def test_lists_are_bounded_in_size_one_and_all_together(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_lists, "MAX_LIST_BYTES", 100)
    monkeypatch.setattr(_lists, "MAX_LISTS_BYTES", 150)
    routes = """\
    lists: {a: lists/a.txt, b: lists/b.txt, big: lists/big.txt}
    routes: [{match: "*", via: direct}]
    """
    small = "".join(f"n{i}.example\n" for i in range(8))  # 88 bytes
    found = errors(here, routes, a=small, b=small, big="x" * 101)
    assert found == [
        "routes.yaml:1: lists.b: the lists together are larger than 0 MiB",
        f'routes.yaml:1: lists.big: cannot read: larger than 0 MiB ("lists/big.txt", '
        f"looked for {here}/lists/big.txt)",
    ]


def test_a_long_line_is_refused(here: Path) -> None:
    found = errors(here, SPLIT, corp="re:" + "a" * 2000 + "\n")
    assert found == ["lists/corp.txt:1: lists.corp: a line longer than 1024 characters"]


def test_deny_takes_lists_and_says_which_line_denied(here: Path) -> None:
    config = load(
        here,
        """\
        lists: {block: lists/block.txt}
        deny: ["list:block"]
        routes: [{match: "*", via: direct}]
        """,
        block="# ads\n.ads.example\n203.0.113.0/24\n",
    )
    guard = Guard(config.policy, own=(), exposed=False)
    with pytest.raises(Refused, match=r"denied by deny: '\.ads\.example' \(list block, line 2\)"):
        guard.check(Address("x.ads.example", 443))
    with pytest.raises(Refused, match=r"\(list block, line 3\)"):
        guard.check_address("203.0.113.9", 443)  # an address a `direct` name resolved to
    guard.check(Address("example.com", 443))
    guard.check_address("198.51.100.1", 443)


def test_allow_local_refuses_names_from_a_list(here: Path) -> None:
    found = errors(
        here,
        """\
        lists: {lan: lists/lan.txt}
        allow_local: ["127.0.0.1", "list:lan"]
        routes: [{match: "*", via: direct}]
        """,
        lan="10.0.0.1\nprinter.lan\n",
    )
    assert found == [
        "routes.yaml:2: allow_local[1]: 'printer.lan' (list lan, line 2): "
        "name an address or a range"
    ]


# -- explain ---------------------------------------------------------------------------------


def test_explain_says_which_list_and_line_matched(here: Path) -> None:
    config = load(here, SPLIT, corp=CORP)
    e = explain(config, "git.internal.example:443")
    assert e.route == "routes[0]"
    assert e.listed == ListedAt("corp", os.path.join("lists", "corp.txt"), 3)
    text = render_text(e)
    head = text.splitlines()[0]
    assert 'match "*.internal.example:443" (list corp, lists/corp.txt:3) -> reject' in head
    assert "  list         corp, line 3 of lists/corp.txt" in text
    route = render_json(e)["route"]
    assert route["list"] == {"name": "corp", "file": "lists/corp.txt", "line": 3}
    written = explain(config, "example.com")
    assert written.listed is None
    assert render_json(written)["route"]["list"] is None
    assert "list " not in render_text(written).splitlines()[1]


@pytest.mark.slow  # a fresh interpreter
def test_chainer_explain_names_the_list_line(here: Path) -> None:
    from test_cli import run

    write(here, SPLIT, corp=CORP)
    done = run("explain", "10.9.8.7:22", "-c", "routes.yaml", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["route"]["list"] == {
        "name": "corp",
        "file": "lists/corp.txt",
        "line": 4,
    }


# -- reloads -----------------------------------------------------------------------------------


def _serve(here: Path, *extra: str) -> tuple[Chainer, int]:
    port = free_port()
    path = here / "routes.yaml"
    path.write_text(
        f"listen: ['127.0.0.1:{port}']\n"
        "lists: {block: lists/block.txt}\n"
        "routes:\n"
        '  - {match: "list:block", via: reject}\n'
        '  - {match: "*", via: direct}\n'
    )
    return Chainer(path, port, here / "chainer.log", *extra), port


@pytest.mark.slow  # a real server, a reload
def test_watch_reloads_when_a_list_changes_and_live_tunnels_go_on(here: Path) -> None:
    (here / "lists" / "block.txt").write_text("nothing.example\n")
    echo = EchoServer()
    c, port = _serve(here, "--watch")
    try:
        live, head = tunnel(port, echo.port)
        assert head.startswith(b"HTTP/1.1 200 ")
        (here / "lists" / "block.txt").write_text("nothing.example\n127.0.0.1\n")
        c.wait_log("lists/block.txt changed: reloading")
        c.wait_log("reloaded")
        refused, head = tunnel(port, echo.port)
        refused.close()
        assert head.startswith(b"HTTP/1.1 403 ")
        live.sendall(b"still here")
        assert live.recv(100) == b"still here"
        live.close()
    finally:
        c.stop()
        echo.close()


@pytest.mark.slow  # a real server, a reload
def test_sighup_with_a_bad_list_line_keeps_the_running_table(here: Path) -> None:
    (here / "lists" / "block.txt").write_text("nothing.example\n")
    echo = EchoServer()
    c, port = _serve(here)
    try:
        (here / "lists" / "block.txt").write_text("# now\n127.0.0.1\nbad..example\n")
        c.signal(signal.SIGHUP)
        log = c.wait_log("reload refused")
        assert "lists/block.txt:3: lists.block: not a DNS name or IP literal" in log
        s, head = tunnel(port, echo.port)
        s.close()
        assert head.startswith(b"HTTP/1.1 200 ")
    finally:
        c.stop()
        echo.close()


@pytest.mark.anyio
async def test_a_reload_indexes_the_table_off_the_event_loop(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The routes and deny indexes of the new table are built in the reload's worker
    thread; the event loop only swaps in the table built there."""
    import threading

    from chainer.router import Router
    from chainer.routing import index
    from chainer.server import Server, run

    write(here, SPLIT.replace("lists:", "deny: [list:corp]\nlists:"), corp=CORP)
    server = Server(Router(load_config("routes.yaml")))
    built_in: list[threading.Thread] = []
    original = index.PatternIndex.__init__

    def recording(self: index.PatternIndex, *args: Any, **kwargs: Any) -> None:
        built_in.append(threading.current_thread())
        original(self, *args, **kwargs)

    monkeypatch.setattr(index.PatternIndex, "__init__", recording)
    (here / "lists" / "corp.txt").write_text(CORP + "new.example\n")
    assert await run.reload(server, "routes.yaml")
    assert len(built_in) == 3  # the routes, then deny: every pattern, its addresses
    assert threading.main_thread() not in built_in
    target = Address("new.example", 443)
    match = server.router.route(target)
    assert match.pattern.line == 8
    assert len(built_in) == 3  # nothing more was built on the loop
    with pytest.raises(Refused):
        Guard(server.router.config.policy, own=(), exposed=False).check(target)
    assert len(built_in) == 3


def test_the_split_tunnel_example_sends_corporate_destinations_through_the_chain() -> None:
    root = Path(__file__).resolve().parent.parent
    config = load_config(root / "examples" / "split-tunnel.yaml")  # in place, lists beside it
    table = RouteTable(config.routes)
    for host, port in [
        ("wiki.corp.example", 443),
        ("10.1.2.3", 8080),
        ("2001:db8:c0::5", 443),
        ("192.168.100.7", 22),
        ("build7.ci.example", 443),
    ]:
        match = table.match(Address(host, port))
        assert match is not None
        assert (match.route.via.label, match.pattern.list_name) == ("corporate", "corp")
    for host, port in [("example.com", 443), ("192.168.100.7", 443), ("corp.example.org", 443)]:
        match = table.match(Address(host, port))
        assert match is not None
        assert match.route.via.kind == "direct"
    with pytest.raises(Refused, match="list blocked"):
        Guard(config.policy, own=(), exposed=False).check(Address("a.tracker.example", 443))


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_pauses_the_collector_and_restores_it_as_it_was(here: Path, enabled: bool) -> None:
    import gc

    write(here, SPLIT, corp="".join(f"n{i}.example\n" for i in range(20000)))
    collections: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    was = gc.isenabled()
    gc.callbacks.append(seen)
    try:
        gc.enable() if enabled else gc.disable()
        load_config("routes.yaml")  # 20,000 patterns: dozens of collections, unpaused
        assert len(collections) <= 1  # the one owed once the collector resumes
        assert gc.isenabled() is enabled
        with pytest.raises(ConfigErrors):
            load_config("missing.yaml")
        assert gc.isenabled() is enabled
    finally:
        gc.callbacks.remove(seen)
        gc.enable() if was else gc.disable()


def test_a_reload_keeps_the_patterns_of_the_lists_that_did_not_change(here: Path) -> None:
    routes = """\
    lists: {a: lists/a.txt, b: lists/b.txt}
    routes:
      - {match: ["list:a", "list:b"], via: reject}
      - {match: "*", via: direct}
    """
    first = load(here, routes, a="a.example\n", b="b.example\n")
    (here / "lists" / "b.txt").write_text("b.example\nc.example\n")
    second = load_config("routes.yaml")
    a1, a2 = listed(first, "a"), listed(second, "a")
    b1, b2 = listed(first, "b"), listed(second, "b")
    assert a2.patterns is a1.patterns  # the same objects: nothing new to build or walk
    assert [p.text for p in b2.patterns] == ["b.example", "c.example"]
    assert b2.patterns[0] is not b1.patterns[0]
    (here / "routes.yaml").write_text("routes: [{match: '*', via: direct}]\n")
    load_config("routes.yaml")  # no lists: none is remembered
    a3 = listed(load(here, routes, a="a.example\n", b="b.example\nc.example\n"), "a")
    assert a3.patterns is not a1.patterns
    assert a3.patterns == a1.patterns


def listed(config: Config, name: str) -> PatternList:
    found = config.pattern_list(name)
    assert found is not None
    return found


@pytest.mark.anyio
async def test_a_reload_hands_the_interpreter_back_often_while_it_builds(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event loop gives the interpreter up at every socket call; while a worker
    builds a table, it must get it back within a short slice, and the process's usual
    slice returns afterwards."""
    import sys

    from chainer.router import Router
    from chainer.server import Server, run

    write(here, SPLIT, corp=CORP)
    server = Server(Router(load_config("routes.yaml")))
    usual = sys.getswitchinterval()
    during: list[float] = []

    def recording(path: str) -> Config:
        during.append(sys.getswitchinterval())
        return load_config(path)

    monkeypatch.setattr(run, "load_config", recording)
    assert await run.reload(server, "routes.yaml")
    assert during == [run.RELOAD_SLICE]
    assert run.RELOAD_SLICE < usual
    assert sys.getswitchinterval() == usual
