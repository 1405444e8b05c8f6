#!/usr/bin/env python3
"""The new pod's side of test/bench/propagation.sh.

Started before `weirctl lab apply` creates the pod, which waits for
READY_FILE to exist. Waits for the pod's
network namespace to appear (weirctl creates it just before CNI ADD), enters
it and connects to DST:PORT in a loop until one connection succeeds, then
prints one JSON line:

  created_ms   when the netns appeared (ms since this process started;
               polled every 0.5 ms);
  wired_ms     first attempt that was not refused for want of an address
               or route, i.e. ADD had configured the interface;
  admitted_ms  first connection accepted;
  window_ms    admitted_ms - created_ms: an upper bound of "ADD returned
               until the remote node admitted the first packet", since ADD
               returns after the netns exists;
  dropped      attempts after wired_ms that timed out (a dropped SYN).

Each attempt is a fresh socket (a fresh source port, so no retransmission of
an earlier SYN answers it) with a short timeout.
"""
import ctypes
import errno
import json
import os
import socket
import sys
import time

NETNS_FILE, DST, PORT, READY_FILE = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ATTEMPT_S = float(os.environ.get("ATTEMPT_MS", "20")) / 1000
GIVE_UP_S = 30.0
CLONE_NEWNET = 0x40000000
# Before ADD has configured eth0 and its routes.
NOT_WIRED = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.EINVAL}

t0 = time.monotonic()


def ms(t):
    return round((t - t0) * 1000, 1)


if os.path.exists(NETNS_FILE):
    sys.exit(f"prober: {NETNS_FILE} exists already: start the prober before the pod")
# The caller creates the pod only once this file exists, so the netns
# appears while this loop watches for it.
open(READY_FILE, "w").close()
while not os.path.exists(NETNS_FILE):
    if time.monotonic() - t0 > GIVE_UP_S:
        sys.exit(f"prober: {NETNS_FILE} did not appear within {GIVE_UP_S}s")
    time.sleep(0.0005)
created = time.monotonic()
# The file exists before `ip netns add` mounts the namespace on it: setns on
# the bare file fails until then.
libc = ctypes.CDLL(None, use_errno=True)
while True:
    fd = os.open(NETNS_FILE, os.O_RDONLY)
    rc = libc.setns(fd, CLONE_NEWNET)
    os.close(fd)
    if rc == 0:
        break
    if time.monotonic() - created > GIVE_UP_S:
        sys.exit(f"prober: setns({NETNS_FILE}): {os.strerror(ctypes.get_errno())}")
    time.sleep(0.0005)

wired = None
dropped = 0
family = socket.AF_INET6 if ":" in DST else socket.AF_INET
while True:
    now = time.monotonic()
    if now - created > GIVE_UP_S:
        sys.exit(f"prober: no connection to {DST}:{PORT} within {GIVE_UP_S}s ({dropped} dropped)")
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(ATTEMPT_S)
    try:
        s.connect((DST, PORT))
        admitted = time.monotonic()
        s.close()
        break
    except socket.timeout:
        if wired is None:
            wired = now
        dropped += 1
    except OSError as e:
        if e.errno not in NOT_WIRED:
            if wired is None:
                wired = now
            # Refused or reset: the path is open but nothing listens yet
            # (it does not happen with the lab's server, which is up first).
            dropped += 1
        time.sleep(0.002)
    finally:
        s.close()

print(json.dumps({
    "created_ms": ms(created),
    "wired_ms": ms(wired if wired is not None else admitted),
    "admitted_ms": ms(admitted),
    "window_ms": round((admitted - created) * 1000, 1),
    "dropped": dropped,
}))
