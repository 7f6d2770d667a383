"""``--ice-host``: restrict ICE to given local addresses. The one place that wraps aioice.

aioice has no interface option, and its ``get_host_addresses`` skips 127.0.0.1. With a
restriction in force (process-wide, as aioice's gathering is):
* host candidates are gathered only on the given addresses;
* remote candidates on other addresses (and mDNS names, which would need multicast) are not
  checked, and connectivity checks arriving from other addresses are ignored,
so no ICE traffic leaves the given addresses (e.g. loopback in tests).
"""
from __future__ import annotations

import ipaddress
import logging

import aioice.ice

log = logging.getLogger(__name__)

_allowed: set[str] = set()
_original_add_remote = aioice.ice.Connection.add_remote_candidate
_original_request_received = aioice.ice.Connection.request_received


def _is_allowed(host: str) -> bool:
    if not _allowed:
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # an mDNS hostname
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return str(addr) in _allowed


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return [a for a in sorted(_allowed) if (ipaddress.ip_address(a).version == 4 and use_ipv4)
            or (ipaddress.ip_address(a).version == 6 and use_ipv6)]


async def _add_remote_candidate(self, remote_candidate):
    if remote_candidate is not None and not _is_allowed(remote_candidate.host):
        log.debug("ICE: ignoring remote candidate %s (not in --ice-host)", remote_candidate.host)
        return
    await _original_add_remote(self, remote_candidate)


def _request_received(self, message, addr, protocol):
    if not _is_allowed(addr[0]):
        log.debug("ICE: ignoring check from %s (not in --ice-host)", addr[0])
        return
    _original_request_received(self, message, addr, protocol)


def restrict_ice_hosts(hosts: list[str]) -> None:
    """Gather and accept ICE only on ``hosts`` (an empty list lifts the restriction)."""
    for host in hosts:
        ipaddress.ip_address(host)  # ValueError for anything but an IP address
    _allowed.clear()
    _allowed.update(str(ipaddress.ip_address(h)) for h in hosts)
    if _allowed:
        aioice.ice.get_host_addresses = _host_addresses
        aioice.ice.Connection.add_remote_candidate = _add_remote_candidate
        aioice.ice.Connection.request_received = _request_received
    else:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        aioice.ice.Connection.add_remote_candidate = _original_add_remote
        aioice.ice.Connection.request_received = _original_request_received


_original_get_host_addresses = aioice.ice.get_host_addresses
