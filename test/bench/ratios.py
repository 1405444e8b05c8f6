#!/usr/bin/env python3
"""Summarize a datapath benchmark's raw CSV (cfg,round,metric,value) as ratios.

Each configuration is compared with its reference measured in the same
round (paired by round, so load drift across the run cancels out); the
table shows the median of those per-round ratios and their range.

  ratios.py RAW CFG=REF... [--floor CFG]... [--compare A/B]...

CFG=REF   a configuration and its reference (a reference lists itself: X=X)
--floor   check CFG/REF against the floors (throughput, request/response,
          connections)
--compare print A/B per metric (A and B need not be a pair)
"""
import collections
import os
import statistics as st
import sys

METRICS = [('tput_gbps', 'throughput Gbit/s'), ('rr_per_s', 'request/response per s'),
           ('crr_per_s', 'new connections per s')]
FLOORS = {'tput_gbps': 0.95, 'rr_per_s': 0.92, 'crr_per_s': 0.90}


def main(argv):
    raw, rest = argv[0], argv[1:]
    pairs, floors, compares = [], [], []
    while rest:
        a = rest.pop(0)
        if a == '--floor':
            floors.append(rest.pop(0))
        elif a == '--compare':
            compares.append(rest.pop(0).split('/'))
        else:
            pairs.append(a.split('='))
    ref = dict(pairs)
    vals = collections.defaultdict(dict)   # (cfg, metric) -> {round: value}
    for line in open(raw):
        c, rnd, m, v = line.rstrip('\n').split(',', 3)
        try:
            vals[(c, m)][rnd] = float(v)
        except ValueError:
            pass

    def med(c, m):
        xs = list(vals.get((c, m), {}).values())
        return st.median(xs) if xs else float('nan')

    def ratios(c, r, m):
        a, b = vals.get((c, m), {}), vals.get((r, m), {})
        return [a[k] / b[k] for k in a if k in b and b[k]] or [float('nan')]

    def cell(c, r, m):
        xs = ratios(c, r, m)
        return '%.3f (%.2f..%.2f)' % (st.median(xs), min(xs), max(xs))

    print('Median of per-round ratios to the reference (min..max over rounds); absolute medians in brackets.')
    print()
    print('| config | reference | ' + ' | '.join(t for _, t in METRICS) + ' |')
    print('|---|---|' + '---|' * len(METRICS))
    for c, r in pairs:
        cells = ['%s [%.4g]' % (cell(c, r, m), med(c, m)) for m, _ in METRICS]
        print(f'| {c} | {r} | ' + ' | '.join(cells) + ' |')
    print()
    for title, suffix, exclude in [
        ('In-kernel program cost per packet, ns (BPF_PROG_TEST_RUN mean, median over rounds):', '_ns', '_inpath_ns'),
        ('In the path, ns per run while the throughput samples ran (kernel BPF statistics, their own cost '
         'included; median over rounds):', '_inpath_ns', None),
    ]:
        costs = sorted({m for (c, m) in vals if m.endswith(suffix) and not (exclude and m.endswith(exclude))})
        if not costs:
            continue
        cc = [c for c, _ in pairs if any((c, m) in vals for m in costs)]
        print(title)
        print()
        print('| path | ' + ' | '.join(cc) + ' |')
        print('|---|' + '---|' * len(cc))
        for m in costs:
            print(f'| {m[:-len(suffix)]} | ' + ' | '.join('%.0f' % med(c, m) if (c, m) in vals else '-' for c in cc) + ' |')
        print()
    load = [v for (c, m), d in vals.items() if m == 'loadavg1' for v in d.values()]
    if load:
        print(f'load average during the run: {min(load):.2f}..{max(load):.2f} on {os.cpu_count()} CPUs')
    for c in floors:
        for m, f in FLOORS.items():
            x = st.median(ratios(c, ref[c], m))
            print(f'floor {m}: {c}/{ref[c]} = {x:.3f} (floor {f}) {"OK" if x >= f else "BELOW"}')
    for a, b in compares:
        for m, _ in METRICS:
            print(f'{a}/{b} {m}: {cell(a, b, m)}')


if __name__ == '__main__':
    main(sys.argv[1:])
