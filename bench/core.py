#!/usr/bin/env python3
"""Core figures for shipper, one process running both roles on 127.0.0.1.

  python3 bench/core.py [--binary target/release/shipper] [--large-mib 1024]

1. Latency: write-to-visible of single small files, interval 1s, settle 250ms
   (median and p99 over --samples files written one at a time).
2. Large file: time from close of a --large-mib random file to its complete
   appearance in the receiver's root, and the peak RSS (VmHWM) of the
   shipper process over the whole run.

Standard library only. Prints a Markdown table.
"""
import argparse, hashlib, os, shutil, signal, statistics, subprocess, sys, tempfile, time


def wait(cond, timeout, step=0.001):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit("timed out")
        time.sleep(step)


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/shipper")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--large-mib", type=int, default=1024)
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    work = tempfile.mkdtemp(prefix="shipper-bench-")
    src, www = os.path.join(work, "src"), os.path.join(work, "www")
    os.makedirs(src)
    cfg = os.path.join(work, "bench.toml")
    with open(cfg, "w") as f:
        f.write(f"""[sender]
source = "src"
receiver = "127.0.0.1:0"
state_dir = "state-s"
interval = "1s"
settle = "250ms"
[receiver]
listen = "127.0.0.1:0"
root = "www"
state_dir = "state-r"
archive_dir = "archive"
archive_keep = 4
""")
    # Port 0 for both: find a free port first.
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    text = open(cfg).read().replace("127.0.0.1:0", f"127.0.0.1:{port}")
    open(cfg, "w").write(text)
    proc = subprocess.Popen([binary, "run", "--config", cfg], stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    try:
        wait(lambda: os.path.exists(os.path.join(work, "state-r", "listen.addr")), 10)
        # 1. latency
        lat = []
        for i in range(args.samples):
            p = os.path.join(src, f"page{i}.html")
            with open(p, "w") as f:
                f.write(f"<html>page {i}</html>\n" * 20)
            t0 = time.monotonic()
            q = os.path.join(www, f"page{i}.html")
            wait(lambda: os.path.exists(q), 30)
            lat.append(time.monotonic() - t0)
        lat.sort()
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        # 2. large file
        big = os.path.join(src, "big.bin")
        h = hashlib.blake2b()
        with open(big, "wb") as f:
            left = args.large_mib << 20
            while left:
                chunk = os.urandom(min(left, 4 << 20))
                h.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        t0 = time.monotonic()
        dest = os.path.join(www, "big.bin")
        wait(lambda: os.path.exists(dest), 600, 0.01)
        big_s = time.monotonic() - t0
        h2 = hashlib.blake2b()
        with open(dest, "rb") as f:
            for chunk in iter(lambda: f.read(4 << 20), b""):
                h2.update(chunk)
        assert h.digest() == h2.digest(), "large file differs"
        rss = vm_hwm_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print("| measure | value |")
    print("|---|---|")
    print(f"| small file write-to-visible, median ({args.samples} files) | {statistics.median(lat)*1000:.0f} ms |")
    print(f"| small file write-to-visible, p99 | {p99*1000:.0f} ms |")
    print(f"| {args.large_mib} MiB random file, close-to-visible | {big_s:.1f} s ({args.large_mib/big_s:.0f} MiB/s) |")
    print(f"| peak RSS of the shipper process (both roles) | {rss/1024:.1f} MiB |")


if __name__ == "__main__":
    main()
