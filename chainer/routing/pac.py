"""A PAC file (proxy auto-config, for browsers) from the route table.

How this works. The browser asks `FindProxyForURL(url, host)` for every request; the
answer is `DIRECT` or chainer's listener. Going to chainer is always right — chainer
applies its own table, `reject` and unmatched destinations get its 403 — so DIRECT is
only a shortcut, and is given only where chainer itself would go direct without any
fallback: a route whose `via` is `direct`, reached first (first match wins, ports
respected, exactly as `RouteTable.match`), and a destination that `deny:`,
`allow_ports:` and chainer's own listener addresses do not stop. Whatever the script
cannot decide exactly sends the request to chainer: an unknown pattern kind (a future
one), a `re:` pattern outside the subset whose meaning is the same in RE2 and
JavaScript, a host chainer would refuse as malformed. Regexes see the host as chainer
writes it (an IPv6 literal compressed as Python's `ipaddress` spells it).

The script never makes the browser resolve a name: it calls none of the PAC helpers
(`dnsResolve`, `isInNet`, `myIpAddress`, ...). IP ranges are matched by parsing the host
as an IP literal in the script itself; a name never falls inside a range, as in chainer.
The patterns are data (JSON) that a fixed, ES5-only script walks.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from typing import Any

from ..models import Address, Pattern, Policy, Route

__all__ = ["pac_script", "proxy_directive"]

_ALL_PORTS = (0, 65535)
# RE2 and JavaScript read these the same way (on lower-case ASCII hosts, searched, no
# flags): no groups with `(?`, no POSIX classes, and only these escapes.
_SAFE_ESCAPES = set(".^$|?*+()[]{}\\-/dDwWsSbBnrtfv")
_BAD_REGEX = re.compile(r"\(\?|\[:")


def proxy_directive(address: Address, tls: bool) -> str:
    """What the PAC answers for chainer at `address`: its HTTP proxy, then its SOCKS5
    on the same port; a TLS listener speaks only HTTPS (to the proxy)."""
    where = address.authority()
    return f"HTTPS {where}" if tls else f"PROXY {where}; SOCKS5 {where}"


def pac_script(
    routes: Sequence[Route],
    policy: Policy,
    proxy: str,
    own: Sequence[tuple[str, int]] = (),
    source: str = "",
) -> str:
    """The PAC text. `proxy` is the answer for everything not DIRECT (see
    `proxy_directive`); `own` are chainer's listening addresses (a request to them would
    loop); `source` names the route table in the header comment."""
    table = [[_is_direct(route), [_pattern(p) for p in route.patterns]] for route in routes]
    deny = [_pattern(p) for p in policy.deny]
    ports = [list(r) for r in policy.allow_ports] or None
    loops = [[_ip_data(host), port] for host, port in own]
    data = "\n".join(
        [
            f"var CHAINER = {_js(proxy)};",
            f"var CHAINER_OWN = {_js(loops)};",
            f"var CHAINER_DENY = {_js(deny)};",
            f"var CHAINER_PORTS = {_js(ports)};",
            "var CHAINER_ROUTES = [",
            *(f"  {_js(entry)}," for entry in table),
            "];",
        ]
    )
    head = f"// chainer PAC for {source}\n" if source else "// chainer PAC\n"
    return head + _HEADER + data + "\n" + _RUNTIME


def _is_direct(route: Route) -> bool:
    # With fallbacks chainer may leave by another way when direct fails: only it can.
    return route.via.kind == "direct" and not route.fallback


def _pattern(p: Pattern) -> list[Any]:
    lo, hi = p.ports or _ALL_PORTS
    kind: str = p.kind
    if kind == "any":
        return ["any", lo, hi]
    if kind in ("subdomain", "domain"):
        return ["sub" if kind == "subdomain" else "dom", p.value, lo, hi]
    if kind == "exact":
        ip = _ip_or_none(p.value)
        if ip is not None:  # one address: a range of one, compared as numbers
            return ["net", *_net_data(ipaddress.ip_network(ip)), lo, hi]
        return ["name", p.value, lo, hi]
    if kind == "cidr":
        return ["net", *_net_data(ipaddress.ip_network(p.value, strict=False)), lo, hi]
    if kind == "regex" and _regex_is_portable(p.value):
        return ["re", p.value, lo, hi]
    return ["ask", lo, hi]  # cannot be decided here: chainer decides


def _regex_is_portable(source: str) -> bool:
    if _BAD_REGEX.search(source):
        return False
    i = 0
    while i < len(source):
        if source[i] == "\\":
            if i + 1 >= len(source) or source[i + 1] not in _SAFE_ESCAPES:
                return False
            i += 2
            continue
        if not (source[i].isascii() and source[i].isprintable()):
            return False
        i += 1
    return True


def _ip_or_none(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _words(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[int]:
    packed = ip.packed
    if ip.version == 4:
        return list(packed)
    return [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]


def _net_data(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[Any]:
    return [net.version, _words(net.network_address), net.prefixlen]


def _ip_data(host: str) -> list[Any]:
    """A listening address: [version, words], or [version, null] for a wildcard."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return [ip.version, None if ip.is_unspecified else _words(ip)]


def _js(value: Any) -> str:
    # JSON is JavaScript, once the two line separators JSON allows in strings are escaped.
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


_HEADER = """\
// First match wins, as in chainer. DIRECT only where chainer itself would go direct;
// everything else goes to chainer, which applies its own table (a rejected or unmatched
// destination gets its 403). No name is ever resolved here: IP ranges apply to IP
// literals only.
"""

_RUNTIME = r"""
var CHAINER_DEFAULT_PORTS = {http: 80, https: 443, ws: 80, wss: 443, ftp: 21};

function FindProxyForURL(url, host) {
  var port = chainerPort(url);
  var dest = chainerHost(host);
  if (port === null || dest === null) return CHAINER;
  return chainerDecide(dest, port);
}

function chainerDecide(dest, port) {
  var i, j, m;
  for (i = 0; i < CHAINER_DENY.length; i++) {
    if (chainerMatch(CHAINER_DENY[i], dest, port) !== false) return CHAINER;
  }
  if (CHAINER_PORTS !== null) {
    var allowed = false;
    for (i = 0; i < CHAINER_PORTS.length; i++) {
      if (CHAINER_PORTS[i][0] <= port && port <= CHAINER_PORTS[i][1]) allowed = true;
    }
    if (!allowed) return CHAINER;
  }
  if (dest.ip !== null) {
    for (i = 0; i < CHAINER_OWN.length; i++) {
      if (CHAINER_OWN[i][1] === port && chainerSameIp(CHAINER_OWN[i][0], dest.ip)) {
        return CHAINER;
      }
    }
  }
  for (i = 0; i < CHAINER_ROUTES.length; i++) {
    var patterns = CHAINER_ROUTES[i][1];
    for (j = 0; j < patterns.length; j++) {
      m = chainerMatch(patterns[j], dest, port);
      if (m === null) return CHAINER;
      if (m) return CHAINER_ROUTES[i][0] ? "DIRECT" : CHAINER;
    }
  }
  return CHAINER;
}

// true, false, or null: cannot tell here.
function chainerMatch(p, dest, port) {
  var n = p.length;
  if (port < p[n - 2] || port > p[n - 1]) return false;
  var h = dest.name;
  switch (p[0]) {
    case "any":
      return true;
    case "name":
      return dest.ip === null && h === p[1];
    case "sub":
      return dest.ip === null && chainerEndsWith(h, "." + p[1]);
    case "dom":
      return dest.ip === null && (h === p[1] || chainerEndsWith(h, "." + p[1]));
    case "net":
      return dest.ip !== null && chainerInNet(dest.ip, p[1], p[2], p[3]);
    case "re":
      try {
        return new RegExp(p[1]).test(h);
      } catch (e) {
        return null;
      }
  }
  return null;
}

function chainerEndsWith(text, tail) {
  return text.length >= tail.length && text.substring(text.length - tail.length) === tail;
}

// Would connecting to `ip` reach the listener at `own`? As chainer's loop check: the
// same address, the unspecified address, or any address of a wildcard listener (this
// machine's addresses are not known here).
function chainerSameIp(own, ip) {
  if (own[0] !== ip[0]) return false;
  if (own[1] === null) return true;
  var same = true, zero = true;
  for (var i = 0; i < ip[1].length; i++) {
    if (ip[1][i] !== 0) zero = false;
    if (ip[1][i] !== own[1][i]) same = false;
  }
  return same || zero;
}

function chainerInNet(ip, version, words, prefix) {
  if (ip[0] !== version) return false;
  var bits = version === 4 ? 8 : 16;
  for (var i = 0; prefix > 0; i++) {
    var take = prefix >= bits ? bits : prefix;
    var shift = bits - take;
    if ((ip[1][i] >> shift) !== (words[i] >> shift)) return false;
    prefix -= take;
  }
  return true;
}

// The port the URL names, or its scheme's; null when it names none that chainer takes.
function chainerPort(url) {
  var at = url.indexOf("://");
  if (at < 0) return null;
  var scheme = url.substring(0, at).toLowerCase();
  var auth = url.substring(at + 3);
  var end = auth.search(/[\/?#]/);
  if (end >= 0) auth = auth.substring(0, end);
  auth = auth.substring(auth.lastIndexOf("@") + 1);
  var text = "";
  if (auth.charAt(0) === "[") {
    var close = auth.indexOf("]");
    if (close < 0) return null;
    var after = auth.substring(close + 1);
    if (after.length > 0) {
      if (after.charAt(0) !== ":") return null;
      text = after.substring(1);
    }
  } else if (auth.indexOf(":") >= 0) {
    text = auth.substring(auth.lastIndexOf(":") + 1);
  }
  if (text === "") {
    return CHAINER_DEFAULT_PORTS.hasOwnProperty(scheme) ? CHAINER_DEFAULT_PORTS[scheme] : null;
  }
  if (!/^[0-9]{1,5}$/.test(text)) return null;
  var port = parseInt(text, 10);
  return port >= 1 && port <= 65535 ? port : null;
}

// {name, ip} as chainer writes the host (lower case, no trailing dot, an IPv4-mapped
// IPv6 address as IPv4); null for what chainer refuses as a destination.
function chainerHost(host) {
  var h = String(host).toLowerCase();
  if (h.charAt(0) === "[" && h.charAt(h.length - 1) === "]") h = h.substring(1, h.length - 1);
  if (h.indexOf("%") >= 0) return null;
  var ip = chainerIpv4(h);
  if (ip === null && h.indexOf(":") >= 0) {
    ip = chainerIpv6(h);
    if (ip === null) return null;
    var w = ip[1];
    if (w[0] === 0 && w[1] === 0 && w[2] === 0 && w[3] === 0 && w[4] === 0 && w[5] === 65535) {
      ip = [4, [w[6] >> 8, w[6] & 255, w[7] >> 8, w[7] & 255]];
    }
  }
  if (ip !== null) {
    return {name: ip[0] === 4 ? ip[1].join(".") : chainerIpv6Text(ip[1]), ip: ip};
  }
  if (h.charAt(h.length - 1) === ".") h = h.substring(0, h.length - 1);
  if (h.length === 0 || h.length > 253) return null;
  var labels = h.split(".");
  for (var i = 0; i < labels.length; i++) {
    if (!/^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/.test(labels[i])) return null;
  }
  if (/^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*$/.test(h)) return null;
  return {name: h, ip: null};
}

function chainerIpv4(h) {
  var parts = h.split(".");
  if (parts.length !== 4) return null;
  var out = [];
  for (var i = 0; i < 4; i++) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(parts[i])) return null;
    var n = parseInt(parts[i], 10);
    if (n > 255) return null;
    out.push(n);
  }
  return [4, out];
}

function chainerIpv6(h) {
  var tail = [];
  var lastColon = h.lastIndexOf(":");
  if (h.indexOf(".", lastColon) >= 0) {
    var v4 = chainerIpv4(h.substring(lastColon + 1));
    if (v4 === null) return null;
    tail = [(v4[1][0] << 8) | v4[1][1], (v4[1][2] << 8) | v4[1][3]];
    h = h.substring(0, lastColon + 1) + "0";
  }
  var halves = h.split("::");
  if (halves.length > 2) return null;
  var head = chainerGroups(halves[0]);
  var rest = halves.length === 2 ? chainerGroups(halves[1]) : [];
  if (head === null || rest === null) return null;
  if (tail.length) {
    var last = halves.length === 2 ? rest : head;
    if (last.length === 0) return null;
    last.pop();
  }
  var words = head.concat(rest).concat(tail);
  var missing = 8 - words.length;
  if (halves.length === 2) {
    if (missing < 1) return null;
    var zeros = [];
    for (var i = 0; i < missing; i++) zeros.push(0);
    words = head.concat(zeros).concat(rest).concat(tail);
  } else if (missing !== 0) {
    return null;
  }
  return [6, words];
}

// As Python's ipaddress writes it: hex without leading zeros, the first longest run of
// two or more zero groups as "::".
function chainerIpv6Text(words) {
  var best = -1, bestLen = 0, start = -1;
  for (var i = 0; i <= 8; i++) {
    if (i < 8 && words[i] === 0) {
      if (start < 0) start = i;
    } else if (start >= 0) {
      if (i - start > bestLen) { best = start; bestLen = i - start; }
      start = -1;
    }
  }
  var parts = [];
  for (var j = 0; j < 8; j++) parts.push(words[j].toString(16));
  if (bestLen < 2) return parts.join(":");
  var head = parts.slice(0, best).join(":");
  var tail = parts.slice(best + bestLen).join(":");
  return head + "::" + tail;
}

function chainerGroups(text) {
  if (text === "") return [];
  var parts = text.split(":");
  var out = [];
  for (var i = 0; i < parts.length; i++) {
    if (!/^[0-9a-f]{1,4}$/.test(parts[i])) return null;
    out.push(parseInt(parts[i], 16));
  }
  return out;
}
"""
