#!/usr/bin/env python3
"""One view of a fleet from `uvip-stat --prometheus` taken on each host.

    fleet-view.py [--json] NAME=FILE...

Each FILE holds one host's `uvip-stat --prometheus` output (saved by a
scraper, or `ssh host uvip-stat --prometheus > host.prom`). Prints, per host
and for the fleet: established connections (in and out), TIME_WAIT, each
host's share of the inbound established connections, the busiest port
tuple and the ephemeral ports left on it (port headroom), and the census'
own capacity headroom. With --json, the same as one JSON object.

Reads the text exposition format only as far as uvip-stat writes it:
`name{label="value",...} number` lines and # comments.
SPDX-License-Identifier: MIT
"""
import json
import re
import sys

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)\s*$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """[(name, {label: value}, float)] for every sample line."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.startswith('#'):
            continue
        m = LINE.match(raw)
        if not m:
            raise ValueError('line %d: not a sample: %r' % (n, raw))
        labels = dict(LABEL.findall(m.group(3) or ''))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def host_view(samples):
    v = {'established_in': 0, 'established_out': 0, 'time_wait': 0,
         'usable_ports': None, 'busiest_tuple': None,
         'busiest_tuple_in_use': 0, 'port_headroom': None,
         'capacity_headroom': None, 'binding_limit': None}
    for name, lab, val in samples:
        if name == 'uvip_sockets':
            if lab.get('state') == 'established':
                v['established_' + lab.get('direction', 'in')] += int(val)
            elif lab.get('state') == 'time_wait':
                v['time_wait'] += int(val)
        elif name == 'uvip_usable_ports':
            v['usable_ports'] = int(val)
        elif name == 'uvip_port_tuple_in_use':
            if val > v['busiest_tuple_in_use']:
                v['busiest_tuple_in_use'] = int(val)
                v['busiest_tuple'] = '%s -> %s' % (lab.get('vip'),
                                                   lab.get('remote'))
        elif name == 'uvip_capacity' and lab.get('kind') == 'headroom':
            v['capacity_headroom'] = int(val)
        elif name == 'uvip_capacity_binding' and val == 1:
            v['binding_limit'] = lab.get('limit')
    if v['usable_ports'] is not None:
        v['port_headroom'] = v['usable_ports'] - v['busiest_tuple_in_use']
    return v


def fleet(hosts):
    total_in = sum(h['established_in'] for h in hosts.values())
    for h in hosts.values():
        h['share'] = h['established_in'] / total_in if total_in else 0.0
    mean = total_in / len(hosts) if hosts else 0
    # The largest deviation of a host from an even spread, relative to
    # the mean: 0.05 means every host is within 5 % of total/hosts.
    spread = (max(abs(h['established_in'] - mean) for h in hosts.values())
              / mean if mean else 0.0)
    return {'hosts': hosts,
            'total': {'established_in': total_in,
                      'established_out': sum(h['established_out']
                                             for h in hosts.values()),
                      'time_wait': sum(h['time_wait'] for h in hosts.values()),
                      'max_deviation': spread,
                      'min_port_headroom': min(
                          (h['port_headroom'] for h in hosts.values()
                           if h['port_headroom'] is not None), default=None)}}


def show(view):
    def num(x):
        return '-' if x is None else str(x)
    print('%-10s %9s %9s %9s %7s %9s %9s  %s' % (
        'host', 'estab-in', 'estab-out', 'time-wait', 'share', 'port-room',
        'cap-room', 'busiest tuple (in use)'))
    for name, h in view['hosts'].items():
        print('%-10s %9d %9d %9d %6.2f%% %9s %9s  %s' % (
            name, h['established_in'], h['established_out'], h['time_wait'],
            100 * h['share'], num(h['port_headroom']),
            num(h['capacity_headroom']),
            '%s (%d)' % (h['busiest_tuple'], h['busiest_tuple_in_use'])
            if h['busiest_tuple'] else '-'))
    t = view['total']
    print('%-10s %9d %9d %9d   max deviation from an even spread %.2f%%, '
          'least port headroom %s' % (
              'fleet', t['established_in'], t['established_out'],
              t['time_wait'], 100 * t['max_deviation'],
              num(t['min_port_headroom'])))


def main(argv):
    as_json = False
    hosts = {}
    args = argv[1:]
    if args and args[0] == '--json':
        as_json = True
        args = args[1:]
    if not args or any('=' not in a for a in args):
        sys.stderr.write('usage: fleet-view.py [--json] NAME=FILE...\n')
        return 2
    for a in args:
        name, path = a.split('=', 1)
        try:
            with open(path) as f:
                hosts[name] = host_view(parse(f.read()))
        except (OSError, ValueError) as e:
            sys.stderr.write('fleet-view.py: %s: %s\n' % (path, e))
            return 1
    view = fleet(hosts)
    if as_json:
        json.dump(view, sys.stdout, indent=1)
        print()
    else:
        show(view)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
