#!/usr/bin/env python3
"""Established connections before and after a routing change (ECMP).

    multihost-probe.py hold --sources FIRST-LAST --targets FIRST-LAST
                            --port P --conns N --out FILE [--seconds S]
    multihost-probe.py analyze --results FILE... --host NAME=SSFILE...

hold: opens N connections to the targets (round-robin) from the sources
(round-robin), checks one echoed byte on each, prints "ready N" and waits
for a line on stdin. Then it sends one more byte on every connection and
writes one line per connection to FILE: "LOCAL REMOTE STATUS", STATUS
being ok (the byte came back), reset, closed or timeout. Every wait has a
deadline (--seconds, default 60, for the whole setup; 10 s for the probe).
Exits 1 if a connection could not be set up.

analyze: joins those lines with each host's `ss -Htn state established`
taken before the change (which host held which connection) and prints, per
host, the connections it held and how many still echoed, as JSON.
SPDX-License-Identifier: MIT
"""
import errno
import ipaddress
import json
import selectors
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24
IN_FLIGHT = 500
PROBE_SECONDS = 10


def expand(spec):
    if '-' in spec:
        a, b = spec.split('-', 1)
    else:
        a = b = spec
    a, b = ipaddress.ip_address(a), ipaddress.ip_address(b)
    return [str(ipaddress.ip_address(i)) for i in range(int(a), int(b) + 1)]


def opt(args, name, default=None, many=False):
    vals = []
    i = 0
    while i < len(args):
        if args[i] == name and i + 1 < len(args):
            vals.append(args[i + 1])
            i += 2
        else:
            i += 1
    if many:
        return vals
    if not vals and default is None:
        sys.exit('multihost-probe.py: %s is required' % name)
    return vals[-1] if vals else default


def hold(args):
    sources = expand(opt(args, '--sources'))
    targets = expand(opt(args, '--targets'))
    port = int(opt(args, '--port'))
    conns = int(opt(args, '--conns'))
    out = opt(args, '--out')
    deadline = time.monotonic() + float(opt(args, '--seconds', '60'))
    sel = selectors.DefaultSelector()
    ready, failed, started, connecting = [], 0, 0, 0

    def start():
        nonlocal started, connecting
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((sources[started % len(sources)], 0))
        rc = s.connect_ex((targets[started % len(targets)], port))
        if rc not in (0, errno.EINPROGRESS):
            raise OSError(rc, 'connect: ' + errno.errorcode.get(rc, str(rc)))
        sel.register(s, selectors.EVENT_WRITE, 'connect')
        started += 1
        connecting += 1

    while len(ready) + failed < conns:
        while started < conns and connecting < IN_FLIGHT:
            start()
        left = deadline - time.monotonic()
        if left <= 0:
            sys.stderr.write('multihost-probe.py: %d of %d set up by the '
                             'deadline\n' % (len(ready), conns))
            return 1
        for key, _ in sel.select(min(left, 1.0)):
            s = key.fileobj
            if key.data == 'connect':
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    failed += 1
                    connecting -= 1
                    sel.unregister(s)
                    s.close()
                    continue
                s.send(b'a')
                sel.modify(s, selectors.EVENT_READ, 'echo')
            else:
                try:
                    data = s.recv(16)
                except OSError:
                    data = b''
                connecting -= 1
                sel.unregister(s)
                if data == b'a':
                    # Named now: a reset socket has no peer name.
                    ready.append((s, '%s:%d %s:%d' % (s.getsockname() +
                                                      s.getpeername())))
                else:
                    failed += 1
                    s.close()
    if failed:
        sys.stderr.write('multihost-probe.py: %d of %d connections failed\n'
                         % (failed, conns))
        return 1
    print('ready %d' % len(ready), flush=True)
    if not sys.stdin.readline():
        return 1
    status = {}
    for s, _ in ready:
        try:
            s.send(b'b')
            sel.register(s, selectors.EVENT_READ)
            status[s] = 'timeout'
        except OSError as e:
            status[s] = 'reset' if e.errno in (errno.ECONNRESET,
                                               errno.EPIPE) else 'error'
    waiting = sum(1 for v in status.values() if v == 'timeout')
    end = time.monotonic() + PROBE_SECONDS
    while waiting and time.monotonic() < end:
        for key, _ in sel.select(max(0.0, min(1.0, end - time.monotonic()))):
            s = key.fileobj
            try:
                data = s.recv(16)
                status[s] = 'ok' if data == b'b' else 'closed'
            except OSError as e:
                status[s] = 'reset' if e.errno == errno.ECONNRESET else 'error'
            sel.unregister(s)
            waiting -= 1
    with open(out, 'w') as f:
        for s, name in ready:
            f.write('%s %s\n' % (name, status[s]))
    for s, _ in ready:
        s.close()
    return 0


def analyze(args):
    owner = {}
    hosts = {}
    for spec in opt(args, '--host', many=True):
        name, path = spec.split('=', 1)
        hosts[name] = {'held': 0}
        with open(path) as f:
            for line in f:
                addrs = [w for w in line.split() if ':' in w]
                if len(addrs) >= 2:
                    local, peer = addrs[-2], addrs[-1]
                    # On the host: local is the VIP, peer the client.
                    owner[(peer, local)] = name
                    hosts[name]['held'] += 1
    unknown = 0
    for path in opt(args, '--results', many=True):
        with open(path) as f:
            for line in f:
                local, remote, st = line.split()
                name = owner.get((local, remote))
                if name is None:
                    unknown += 1
                    continue
                hosts[name][st] = hosts[name].get(st, 0) + 1
    for h in hosts.values():
        h['survived'] = (h.get('ok', 0) / h['held']) if h['held'] else 0.0
    json.dump({'hosts': hosts, 'unknown': unknown}, sys.stdout)
    print()
    return 0


def main(argv):
    if len(argv) < 2 or argv[1] not in ('hold', 'analyze'):
        sys.stderr.write(__doc__)
        return 2
    return hold(argv[2:]) if argv[1] == 'hold' else analyze(argv[2:])


if __name__ == '__main__':
    sys.exit(main(sys.argv))
