"""`chainer pac`: the PAC file for a route table, naming the listener browsers should use.

The script itself is `routing.pac` (the admin endpoint serves the same one at
/proxy.pac); this picks the address it names: `--proxy HOST:PORT`, else the first
listener, with a wildcard address (0.0.0.0, ::) read as this machine's loopback.
"""

from __future__ import annotations

from ..errors import BadTarget
from ..models import Address, Config
from ..routing.pac import pac_script, proxy_directive
from ..routing.target import parse_authority

__all__ = ["pac_for_config"]

_LOOPBACK_FOR = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def pac_for_config(config: Config, proxy: str | None = None) -> str:
    """The PAC text for `config`; raises BadTarget for a bad --proxy or a listener
    without a fixed port."""
    listener = config.listeners[0]
    if proxy is not None:
        address = parse_authority(proxy.strip())
    else:
        address = listener.address
        if address.port == 0:
            raise BadTarget(f"the listener {address} has port 0: name one with --proxy HOST:PORT")
        address = Address(_LOOPBACK_FOR.get(address.host, address.host), address.port)
    own = [(ln.address.host, ln.address.port) for ln in config.listeners if ln.address.port]
    directive = proxy_directive(address, listener.tls is not None)
    return pac_script(config.routes, config.policy, directive, own, config.path)
