#!/usr/bin/env python3
"""What it costs to make a bundle's many staged files durable, four ways.

  python3 bench/syncs.py [--files 2253] [--rounds 2]

The receiver makes a bundle of more than 32 files durable with one
`syncfs` of root's filesystem, which also writes whatever else is dirty
there (the received bundle itself, kept as the archive). This writes
--files files of 20-200 KiB (like bench.py's bulk corpus's second
bundle) on bench.py's journaled loop filesystem, with and without 250 MiB
of other dirty data beside them, and times: one syncfs; an fsync of each
file; `sync_file_range` to start every file's writeback, wait for it,
then an fsync of each; the same with fdatasync. About 1 minute. Standard
library only (ctypes for syncfs and sync_file_range).
"""
import argparse, ctypes, os, random, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
WAIT_BEFORE, WRITE, WAIT_AFTER = 1, 2, 4


def make(d, n, other_mib):
    os.makedirs(d)
    paths = []
    for i in range(n):
        sub = os.path.join(d, f"d{i % 60}")
        os.makedirs(sub, exist_ok=True)
        p = os.path.join(sub, f"f{i}")
        with open(p, "wb") as f:
            f.write(random.randbytes(random.randint(20, 200) * 1024))
        paths.append(p)
    with open(os.path.join(d, "other"), "wb") as f:
        for _ in range(other_mib):
            f.write(random.randbytes(1 << 20))
    return paths


def one_syncfs(d, paths):
    fd = os.open(d, os.O_RDONLY)
    libc.syncfs(fd)
    os.close(fd)


def fsync_each(d, paths):
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def started_then(sync):
    def way(d, paths):
        fds = [os.open(p, os.O_RDONLY) for p in paths]
        for fd in fds:
            libc.sync_file_range(fd, 0, 0, WRITE)
        for fd in fds:
            libc.sync_file_range(fd, 0, 0, WAIT_BEFORE | WRITE | WAIT_AFTER)
        for fd in fds:
            sync(fd)
            os.close(fd)
    return way


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2253)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    ways = [("one syncfs", one_syncfs), ("an fsync of each file", fsync_each),
            ("writeback started, then an fsync of each", started_then(os.fsync)),
            ("writeback started, then an fdatasync of each", started_then(os.fdatasync))]
    times = {}
    fs = bench.LoopFs(8)
    try:
        for r in range(args.rounds):
            for i, (name, way) in enumerate(ways):
                for other in (0, 250):
                    d = os.path.join(fs.mnt, f"{r}-{i}-{other}")
                    paths = make(d, args.files, other)
                    t = time.monotonic()
                    way(d, paths)
                    times.setdefault((name, other), []).append(time.monotonic() - t)
                    os.sync()
    finally:
        fs.close()
    print(f"| way ({args.files} files, {args.rounds} rounds, ms) | alone | beside 250 MiB of other dirty data |")
    print("|---|---|---|")
    for name, _ in ways:
        cells = [" / ".join(f"{t * 1000:.0f}" for t in times[(name, o)]) for o in (0, 250)]
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
