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

As root (it makes and mounts bench.py's journaled ext4 on a loop device,
and removes it after), this writes --mib MiB files of random bytes one
after another, two ways: each file kept, written once the guest has
stopped reporting freed memory for 2 s (the write takes pages that went
back to the host; on a kernel that keeps no count of what it reported,
it does not wait), then each file deleted just after it is written,
after one untimed such write (each write can reuse the pages the one
before gave back). Each file is written back to the disk with fsync
outside the timed write, so no write pays for another's writeback. The
first kept write may still be fast: a guest may hold some freed memory
back unreported (up to max_waiting_mib on this machine's kernel). It
prints each write's time and system CPU seconds, the page_reporting
settings, and how much memory the guest reported free to its host. About
30 seconds. Standard library only.
"""
import argparse, os, shutil, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

REPORTING = "/sys/module/page_reporting/parameters"


def reported_kib():
    """KiB the guest has reported free to its host since it started, or
    None where the kernel keeps no such count (a stock kernel has only
    page_reporting_order)."""
    try:
        with open(os.path.join(REPORTING, "reported_kib")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def settings():
    """The page_reporting module's parameters, as `name=value`."""
    try:
        names = sorted(os.listdir(REPORTING))
    except OSError:
        return None
    out = []
    for n in names:
        try:
            with open(os.path.join(REPORTING, n)) as f:
                out.append(f"{n}={f.read().strip()}")
        except OSError:
            pass
    return " ".join(out)


def quiet(limit=30.0):
    """Wait (at most `limit` s) until the guest has reported nothing for 2 s."""
    end = time.monotonic() + limit
    last, since = reported_kib(), time.monotonic()
    while last is not None and time.monotonic() < end:
        time.sleep(0.5)
        now = reported_kib()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 2.0:
            return


def write(path, mib, block):
    """Write `mib` MiB of `block` to `path` (timed: wall and system
    seconds), then fsync it (untimed)."""
    t0, c0 = time.monotonic(), os.times()
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
        c1 = os.times()
        wall = time.monotonic() - t0
        os.fsync(f.fileno())
    return wall, c1.system - c0.system


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    # Each kept file holds its pages (the loop device writes its backing
    # file with direct I/O: no second copy); past free memory, writes
    # would take pages from the page cache instead of new ones.
    need = args.mib * args.rounds * 2**20 + 2**30
    free = bench.meminfo("MemFree")
    if free < need:
        sys.exit(f"pagecache.py: needs {need / 2**30:.1f} GiB of free memory, the machine has {free / 2**30:.1f}; "
                 "lower --mib or --rounds")
    disk = (args.rounds + 1) * args.mib * 2**20 + 2**30
    if shutil.disk_usage("/var/tmp").free < disk:
        sys.exit(f"pagecache.py: needs {disk / 2**30:.1f} GiB free in /var/tmp for the loop filesystem's image; "
                 "lower --mib or --rounds")
    print(f"page_reporting: {settings() or 'not in this kernel'}")
    since_boot = reported_kib()
    if since_boot is not None:
        print(f"reported free to the host since the machine started: {since_boot / 2**20:.1f} GiB", flush=True)
    block = os.urandom(1 << 20)
    fs = bench.LoopFs()
    try:
        rows = []
        def timed(way, i, path):
            before = reported_kib()
            wall, sys_s = write(path, args.mib, block)
            if way != "kept":
                os.unlink(path)
            after = reported_kib()
            freed = "" if before is None else f", {(after - before) / 2**20:.1f} GiB reported free meanwhile"
            print(f"{way}: write {i}: {wall:.2f} s, system {sys_s:.2f} s{freed}", flush=True)
            rows.append((way, i, wall, sys_s))
        for i in range(args.rounds):
            quiet()
            timed("kept", i, os.path.join(fs.mnt, f"k{i}"))
        # The first write of this way takes its pages anew: untimed.
        write(os.path.join(fs.mnt, "warm"), args.mib, block)
        os.unlink(os.path.join(fs.mnt, "warm"))
        for i in range(args.rounds):
            timed("deleted after", i, os.path.join(fs.mnt, f"d{i}"))
        print(f"\n| way | write | {args.mib} MiB in | system CPU |\n|---|---|---|---|")
        for way, i, wall, sys_s in sorted(rows):
            print(f"| {way} | {i} | {wall:.2f} s | {sys_s:.2f} s |")
    finally:
        fs.close()


if __name__ == "__main__":
    main()
