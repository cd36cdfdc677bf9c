#!/usr/bin/env python3
"""Where shipper's CPU goes, per side, on bench.py's workloads.

  python3 bench/profile.py [--bin PATH] [--label TEXT] [--only bulk,large] [--keep DIR]

Runs the bulk corpus (bench.py's workload 1) and a 1 GiB random file
(workload 5) once each, sender and receiver each under `perf record`
(Debian's linux-perf; installed with apt-get if missing), on bench.py's
journaled loop filesystem, and prints, per side, the CPU seconds spent in
each kind of work (samples at 4 kHz / 4000), as a markdown table. --bin
profiles another build (the code before a change). About 2 minutes.
Standard library only.
"""
import argparse, os, re, shutil, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

FREQ = 4000
KEEP = ""
KINDS = [
    ("deflate", r"zlib_rs::deflate|longest_match|deflate_(fast|medium|slow|quick|stored)|flush_block|compress_block|pqdownheap|build_tree"),
    ("inflate", r"zlib_rs::inflate|inflate_"),
    ("BLAKE3", r"blake3"),
    ("TLS (AES-GCM)", r"aes_gcm|gcm_|ring_core"),
    ("writes into the page cache", r"copy_folio_from_iter|_copy_from_iter|copy_from_user"),
    ("reads from the page cache, socket copies", r"_copy_to_iter|copy_page_to_iter|skb_datagram|copy_to_user"),
    ("memcpy/memset in shipper", r"__mem(move|set|cpy)"),
    ("CRC32", r"crc32"),
]


def wrapper(work, real):
    path = os.path.join(work, "perfwrap.sh")
    with open(path, "w") as f:
        f.write("#!/bin/bash\nrole=x\nfor a in \"$@\"; do case \"$a\" in *sender.toml) role=s;; *receiver.toml) role=r;; esac; done\n"
                f"if [ \"$1\" = run ]; then exec perf record -q -F {FREQ} -g -o {work}/perf-$role.data -- {real} \"$@\"; fi\n"
                f"exec {real} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def categorise(data):
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none", "--sort", "sym", "-n"],
                         capture_output=True, text=True).stdout
    totals = {k: 0 for k, _ in KINDS}
    kernel = user = 0
    for line in out.splitlines():
        m = re.match(r"\s*[0-9.]+%\s+(\d+)\s+\[(.)\]\s+(.*)", line)
        if not m:
            continue
        n, space, sym = int(m.group(1)), m.group(2), m.group(3)
        for k, rx in KINDS:
            if re.search(rx, sym):
                totals[k] += n
                break
        else:
            if space == "k":
                kernel += n
            else:
                user += n
    totals["other kernel (syscalls, filesystem, TCP)"] = kernel
    totals["other shipper code"] = user
    return {k: v / FREQ for k, v in totals.items()}


def run(work, corpus, keys, real):
    os.makedirs(work)
    bench.BIN = wrapper(work, real)
    port = bench.free_port()
    s = bench.Shipper(work, corpus, keys, f"127.0.0.1:{port}", f"127.0.0.1:{port}", 'interval = "1s"\nsettle = "250ms"\n')
    want = bench.tree_sizes(corpus)
    bench.at_rest()
    t0 = time.monotonic()
    s.start_sender()
    bench.wait(lambda: bench.tree_sizes(s.root) == want, 1800, 0.05)
    dt = time.monotonic() - t0
    s.stop()
    time.sleep(1.0)
    if KEEP:
        os.makedirs(KEEP, exist_ok=True)
        for side in ("s", "r"):
            shutil.copy(os.path.join(work, f"perf-{side}.data"), os.path.join(KEEP, f"{os.path.basename(work)}-{side}.data"))
    return dt, categorise(os.path.join(work, "perf-s.data")), categorise(os.path.join(work, "perf-r.data"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=bench.BIN)
    ap.add_argument("--label", default="")
    ap.add_argument("--only", default="bulk,large")
    ap.add_argument("--keep", default="", help="copy each run's perf data into this directory")
    args = ap.parse_args()
    global KEEP
    KEEP = args.keep
    if not shutil.which("perf"):
        bench.sh("apt-get", "install", "-y", "-qq", "linux-perf")
    real = os.path.abspath(args.bin)
    if not os.path.exists(real):
        bench.sh("cargo", "build", "--release", cwd=bench.ROOT)
    commit = subprocess.run([real, "--version"], capture_output=True, text=True).stdout.strip()
    bench.BIN = real
    with bench.disks() as base:
        keys = bench.make_keys(base)
        results = []
        if "bulk" in args.only:
            corpus = os.path.join(base, "corpus")
            bench.make_corpus(corpus, 42)
            results.append(("bulk corpus (282 MiB, 3,301 files)",) + run(os.path.join(base, "bulk-run"), corpus, keys, real))
        if "large" in args.only:
            corpus = os.path.join(base, "large")
            bench.make_large(corpus, 1024)
            results.append(("1 GiB random file",) + run(os.path.join(base, "large-run"), corpus, keys, real))
    print(f"\n### CPU by kind of work: {args.label or commit}\n")
    print("perf record at 4 kHz on each process, one run each, under perf (slower than unprofiled); CPU seconds.\n")
    for name, dt, snd, rcv in results:
        print(f"**{name}**: {dt:.2f} s wall under perf; CPU sender {sum(snd.values()):.2f} s, receiver {sum(rcv.values()):.2f} s\n")
        print("| work | sender s | receiver s |\n|---|---|---|")
        for k in snd:
            print(f"| {k} | {snd[k]:.2f} | {rcv[k]:.2f} |")
        print()


if __name__ == "__main__":
    main()
