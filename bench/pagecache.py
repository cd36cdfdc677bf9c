#!/usr/bin/env python3
"""What a write into the page cache costs on this machine: into memory
the kernel takes anew, against memory a file just deleted gave back.

  python3 bench/pagecache.py [--mib 1024] [--rounds 3]

On a VM whose guest hands the memory it frees back to its host (free
page reporting: /sys/module/page_reporting), a page the kernel then
takes for the page cache must first be backed by the host again, which
the guest sees as a slow copy into that page. bench.py's large-file row
(workload 5) writes about three times the file into the page cache for
shipper (the sender's outbox, the receiver's bundle, the file) and once
for rsync, so this rate bounds it.

This writes --mib MiB files of random bytes, one after another, on
bench.py's journaled loop filesystem, two ways: each file kept (every
write takes pages not used since they were handed back), then each
deleted just after it is written (the next write can reuse its pages).
It prints each write's time and system CPU seconds, and how much memory
the guest reported free to its host before and meanwhile. About 30 seconds.
Standard library only.
"""
import argparse, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

REPORTED = "/sys/module/page_reporting/parameters/reported_kib"


def reported_kib():
    """KiB the guest has reported free to its host since it started, or
    None where the kernel does not report (no such module parameter)."""
    try:
        with open(REPORTED) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def write(path, mib, block):
    """Write `mib` MiB of `block` to `path`; its wall and system seconds."""
    t0, c0 = time.monotonic(), os.times()
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
    c1 = os.times()
    return time.monotonic() - t0, c1.system - c0.system


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    block = os.urandom(1 << 20)
    since_boot = reported_kib()
    if since_boot is not None:
        print(f"reported free to the host since the machine started: {since_boot / 2**20:.1f} GiB", flush=True)
    fs = bench.LoopFs()
    try:
        rows = []
        for way in ("kept", "deleted after"):
            before = reported_kib()
            for i in range(args.rounds):
                path = os.path.join(fs.mnt, f"{way[0]}{i}")
                wall, sys_s = write(path, args.mib, block)
                if way != "kept":
                    os.unlink(path)
                rows.append((way, i, wall, sys_s))
                print(f"{way}: write {i}: {wall:.2f} s, system {sys_s:.2f} s", flush=True)
            after = reported_kib()
            if before is not None and after is not None:
                print(f"{way}: reported free to the host meanwhile: {(after - before) / 2**20:.1f} GiB", flush=True)
            for name in os.listdir(fs.mnt):
                if name[0] == way[0]:
                    os.unlink(os.path.join(fs.mnt, name))
            os.sync()
        print(f"\n| way | write | {args.mib} MiB in | system CPU |\n|---|---|---|---|")
        for way, i, wall, sys_s in rows:
            print(f"| {way} | {i} | {wall:.2f} s | {sys_s:.2f} s |")
        if reported_kib() is None:
            print("\nThis kernel does not report free memory to a host (no page_reporting module).")
    finally:
        fs.close()


if __name__ == "__main__":
    main()
