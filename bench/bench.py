#!/usr/bin/env python3
"""shipper against rsync and lsyncd on this machine, one run, alternating.

  python3 bench/bench.py [--runs 3] [--quick]

Builds shipper (release) if needed, installs rsync and lsyncd with apt-get
if missing, and writes BENCHMARKS.md. Measures (median of --runs runs, the
tools alternating within each run; ratios are shipper/peer):
  1. bulk: a seeded CMS-like corpus to an empty receiver over loopback,
     shipper vs an rsync daemon on loopback, and vs the same daemon with
     --fsync (the durability shipper promises); peak RSS of each side.
  2. slow link: the same over a 100 Mbit/s link with 20 ms round trip,
     shipper vs rsync -z (network namespaces + tc tbf for the rate; this
     kernel has no netem, so a userspace proxy adds 10 ms each way).
  3. latency: write-to-visible of single small files and of a burst
     (200 files/s for 30 s), shipper at interval 1s / settle 250ms vs lsyncd
     (delay=1) pushing through rsync to a daemon on loopback.
  4. incremental: 100 changed files of 11,000, shipper flush to
     acknowledgement vs one rsync run.
  5. large file: 1 GiB of random data, throughput and peak RSS per side,
     also vs rsync --fsync.
  6. identical rewrite: every file of a 5,000-page + 500-image corpus
     rewritten with the same bytes after a first ship; bytes on the wire
     (shipper's bytes_shipped, rsync --stats "Total bytes sent") and flush
     to acknowledgement vs one rsync run over the same trees.
  7. rename: a ~100 MB directory of images renamed after a first ship;
     bytes on the wire, shipper vs rsync --delete.
  8. delta: a 1 GiB random file with 1 MiB rewritten in the middle after a
     first ship; bytes on the wire (shipper's bytes_shipped; rsync's delta
     transfer: bytes sent plus the block checksums received) and flush to
     acknowledgement vs one rsync run.
  9. slow rewrite: the corpus of 6 rewritten identically after a first
     ship over the slow link of 2, shipper at interval 1s; time from the
     end of the rewrite until root has every new mtime (goal: within
     interval + 10 s), and one rsync -z run over the same link.
 10. verify: `shipper verify` of an in-step tree of 11,000 pages (the
     receiver's first listing hashes every file; later ones use its cache)
     vs `rsync -a --delete --dry-run -c` over the same trees.
Standard library only.
"""
import argparse, asyncio, contextlib, hashlib, json, os, random, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SHIPPER_BIN measures another build (e.g. the code before a change).
BIN = os.environ.get("SHIPPER_BIN", os.path.join(ROOT, "target", "release", "shipper"))
NS = "shpbench"
HOST_IP, NS_IP = "10.231.7.1", "10.231.7.2"


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_tools():
    if not os.path.exists(BIN):
        sh("cargo", "build", "--release", cwd=ROOT)
    missing = [p for p, b in [("rsync", "rsync"), ("lsyncd", "lsyncd"), ("iproute2", "ip")] if not shutil.which(b)]
    if missing:
        sh("apt-get", "update", "-qq")
        sh("apt-get", "install", "-y", "-qq", *missing)


class LoopFs:
    """A journaled ext4 on a loop device, where every benchmark tree lives.

    This machine's root filesystem is ext4 without a journal: there, ext4
    skips every inode deleted in the last minute when it allocates one
    (`recently_deleted`, 47% of the receiver's CPU in one profiled bulk
    run), so creating thousands of files right after a previous run's trees
    were removed costs 2-4x more, varying from run to run, for whichever
    tool comes next. A web server's filesystem has a journal; so has this
    one. Sparse: it uses only the disk its trees take."""

    def __init__(self, size_gib=32):
        self.img = tempfile.mktemp(prefix="shipper-bench-", suffix=".img", dir="/var/tmp")
        self.mnt = tempfile.mkdtemp(prefix="shipper-bench-")
        sh("truncate", "-s", f"{size_gib}G", self.img)
        self.dev = None
        try:
            # Direct I/O: the loop device's writes go straight to the
            # backing file, not through a second page cache.
            self.dev = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", self.img],
                                      check=True, capture_output=True, text=True).stdout.strip()
            sh("mkfs.ext4", "-q", "-F", self.dev)
            sh("mount", self.dev, self.mnt)
        except BaseException:
            if self.dev:
                subprocess.run(["losetup", "-d", self.dev])
            os.unlink(self.img)
            raise

    def close(self):
        subprocess.run(["umount", self.mnt])
        subprocess.run(["losetup", "-d", self.dev])
        os.unlink(self.img)
        os.rmdir(self.mnt)


# The sender's own disk: a second loop filesystem, as the sender and its
# receiver are two servers. Its state_dir (the outbox, where each bundle is
# packed) lives there, so the receiver's syncfs flushes only what a
# receiver's machine would hold, never the sender's outbox. Set by
# `sender_disk()`; unset, the sender's state_dir lives beside the rest.
SENDER_DISK = None
# The receiver's archive_keep (bench/floor.py also runs it at 0).
ARCHIVE_KEEP = 2


def sender_disk():
    """Make the sender's own disk for this run; the caller closes it."""
    global SENDER_DISK
    fs = LoopFs()
    SENDER_DISK = fs.mnt
    return fs


@contextlib.contextmanager
def disks(run_fs=LoopFs):
    """The run's loop filesystem (made by `run_fs()`: anything with `mnt`
    and `close()`) and the sender's own disk, both removed after, the
    second even if the first cannot be; yields where the first is
    mounted."""
    fs = run_fs()
    try:
        sender_fs = sender_disk()
    except BaseException:
        fs.close()
        raise
    try:
        yield fs.mnt
    finally:
        global SENDER_DISK
        SENDER_DISK = None
        try:
            fs.close()
        finally:
            sender_fs.close()


def make_keys(base):
    """A key pair each for the sender and the receiver under `base`/keys:
    (sender key dir, receiver key dir, sender fingerprint, receiver's)."""
    fps = []
    for k in ("s", "r"):
        out = subprocess.run([BIN, "keygen", "--out", os.path.join(base, "keys", k)], check=True, capture_output=True, text=True)
        fps.append(out.stdout.strip())
    return (os.path.join(base, "keys", "s"), os.path.join(base, "keys", "r"), fps[0], fps[1])


def sender_state(work):
    if SENDER_DISK is None:
        return os.path.join(work, "state-s")
    return os.path.join(SENDER_DISK, work.strip("/").replace("/", "_"), "state-s")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait(cond, timeout, step=0.01):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError("timed out")
        time.sleep(step)


def vm_hwm_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def tree_sizes(d):
    out = {}
    for dp, _, fs in os.walk(d):
        for f in fs:
            p = os.path.join(dp, f)
            try:
                out[os.path.relpath(p, d)] = os.path.getsize(p)
            except OSError:
                pass
    return out


def same_content(a, b):
    for rel in tree_sizes(a):
        with open(os.path.join(a, rel), "rb") as x, open(os.path.join(b, rel), "rb") as y:
            if hashlib.blake2b(x.read()).digest() != hashlib.blake2b(y.read()).digest():
                return False
    return True


# ---------------------------------------------------------------- corpus

WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
         "dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip").split()


def make_corpus(dest, seed, pages=3000, images=300, large_mib=128):
    rng = random.Random(seed)
    os.makedirs(dest, exist_ok=True)
    for i in range(pages):
        d = os.path.join(dest, str(2015 + i % 10), f"{i % 12 + 1:02d}")
        os.makedirs(d, exist_ok=True)
        size = rng.randint(2, 60) * 1024
        words = []
        n = 0
        while n < size:
            w = rng.choice(WORDS)
            words.append(w)
            n += len(w) + 1
        body = "<html><head><title>page %d</title></head><body><p>%s</p></body></html>" % (i, " ".join(words))
        with open(os.path.join(d, f"page-{i}.html"), "w") as f:
            f.write(body[:size])
    os.makedirs(os.path.join(dest, "img"), exist_ok=True)
    for i in range(images):
        with open(os.path.join(dest, "img", f"photo-{i}.jpg"), "wb") as f:
            f.write(rng.randbytes(rng.randint(20, 400) * 1024))
    if large_mib:
        os.makedirs(os.path.join(dest, "media"), exist_ok=True)
        with open(os.path.join(dest, "media", "video.mp4"), "wb") as f:
            for _ in range(large_mib):
                f.write(rng.randbytes(1 << 20))
    # An existing tree is at rest: give it longer than shipper's settle, so
    # neither tool is measured waiting for files still being written.
    time.sleep(1.0)


# ---------------------------------------------------------------- shipper

class Shipper:
    """A receiver and a sender process, with keys, as deployed."""

    def __init__(self, work, src, keys, listen, connect, sender_extra="", receiver_prefix=(), receiver_extra=""):
        self.work, self.src = work, src
        self.root = os.path.join(work, "www")
        os.makedirs(self.root, exist_ok=True)
        sk, rk, sfp, rfp = keys
        self.rcfg = os.path.join(work, "receiver.toml")
        with open(self.rcfg, "w") as f:
            f.write(f'[receiver]\nlisten = "{listen}"\nroot = "{self.root}"\nstate_dir = "{work}/state-r"\n'
                    f'archive_dir = "{work}/archive"\narchive_keep = {ARCHIVE_KEEP}\nkey_dir = "{rk}"\nallowed_senders = ["{sfp}"]\n{receiver_extra}')
        self.scfg = os.path.join(work, "sender.toml")
        with open(self.scfg, "w") as f:
            f.write(f'[sender]\nsource = "{src}"\nreceiver = "{connect}"\nstate_dir = "{sender_state(work)}"\n'
                    f'key_dir = "{sk}"\nreceiver_fingerprint = "{rfp}"\n{sender_extra}')
        env = {**os.environ, "RUST_LOG": os.environ.get("BENCH_LOG", "warn")}
        self.receiver = subprocess.Popen([*receiver_prefix, BIN, "run", "--config", self.rcfg], env=env, stderr=open(os.path.join(work, "receiver.log"), "w"))
        wait(lambda: os.path.exists(os.path.join(work, "state-r", "listen.addr")), 20)
        self.sender = None

    def start_sender(self):
        env = {**os.environ, "RUST_LOG": os.environ.get("BENCH_LOG", "warn")}
        self.sender = subprocess.Popen([BIN, "run", "--config", self.scfg], env=env, stderr=open(os.path.join(self.work, "sender.log"), "w"))

    def flush(self, *extra):
        sh(BIN, "flush", "--config", self.scfg, "--timeout", "600s", *extra, stdout=subprocess.DEVNULL)

    def rss(self):
        def side(p):
            if p is None:
                return 0.0
            try:
                return vm_hwm_mib(p.pid)
            except FileNotFoundError:
                return 0.0
        return side(self.sender), side(self.receiver)

    def receiver_hwm_in_ns(self):
        # The receiver runs under `ip netns exec`, which execs it: same pid.
        return vm_hwm_mib(self.receiver.pid)

    def stop(self):
        for p in (self.sender, self.receiver):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()


# ---------------------------------------------------------------- rsync

def descendants(pid):
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo.extend(kids.get(q, []))
    return out


class RsyncDaemon:
    """An rsync daemon; a thread samples the summed RSS of its process tree
    (the daemon forks a receiver and a generator per connection)."""

    def __init__(self, work, dest, address, port, prefix=()):
        os.makedirs(dest, exist_ok=True)
        self.conf = os.path.join(work, "rsyncd.conf")
        with open(self.conf, "w") as f:
            f.write(f"use chroot = no\nuid = root\ngid = root\n[dest]\npath = {dest}\nread only = no\n")
        self.proc = subprocess.Popen([*prefix, "rsync", "--daemon", "--no-detach",
                                      f"--address={address}", f"--port={port}", f"--config={self.conf}"], start_new_session=True)
        self.url = f"rsync://{address}:{port}/dest/"
        self.peak = 0.0
        self.stop = threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()
        time.sleep(0.3)

    def _sample(self):
        while not self.stop.is_set():
            total = 0.0
            for p in descendants(self.proc.pid):
                try:
                    with open(f"/proc/{p}/status") as f:
                        for line in f:
                            if line.startswith("VmRSS:"):
                                total += int(line.split()[1]) / 1024
                except OSError:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.02)

    def stop_rss_mib(self):
        self.stop.set()
        self.sampler.join()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(20)
        return self.peak


def rsync_client(src, url, extra=(), port=None):
    tf = tempfile.mktemp()
    t0 = time.monotonic()
    cmd = ["/usr/bin/time", "-f", "%M", "-o", tf, "rsync", "-a", *extra, src.rstrip("/") + "/"]
    if port:
        cmd.append(f"--port={port}")
    cmd.append(url)
    sh(*cmd)
    dt = time.monotonic() - t0
    rss = int(open(tf).read().strip().splitlines()[-1]) / 1024
    os.unlink(tf)
    return dt, rss


# ------------------------------------------------------------- slow link

class DelayProxy:
    """Forward 127.0.0.1:port -> target, holding every chunk `delay` s each way.

    It holds at most QUEUE_CHUNKS chunks of 64 KiB per direction, as a
    router's queue is bounded: with no bound it read whatever the sender
    wrote at once, so the sender's TCP saw every byte acknowledged at
    loopback speed, a link no real path is (shipper measures its link by
    what the peer acknowledged, and took this one for a fast link).
    """

    QUEUE_CHUNKS = 16

    def __init__(self, target, delay):
        self.target, self.delay = target, delay
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        time.sleep(0.2)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", self.port))
        self.loop.run_forever()

    async def _pump(self, r, w):
        q = asyncio.Queue(maxsize=self.QUEUE_CHUNKS)

        async def writer():
            while True:
                due, data = await q.get()
                if data is None:
                    break
                d = due - self.loop.time()
                if d > 0:
                    await asyncio.sleep(d)
                w.write(data)
                await w.drain()
            w.close()
        t = asyncio.ensure_future(writer())
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                await q.put((self.loop.time() + self.delay, data))
        finally:
            await q.put((0, None))
            await t

    async def _conn(self, cr, cw):
        try:
            sr, sw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.close()
            return
        await asyncio.gather(self._pump(cr, sw), self._pump(sr, cw), return_exceptions=True)


def make_link():
    """A namespace reached over a veth pair limited to 100 Mbit/s each way."""
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "link", "del", "shpb0"], stderr=subprocess.DEVNULL)
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", "shpb0", "type", "veth", "peer", "name", "shpb1")
    sh("ip", "link", "set", "shpb1", "netns", NS)
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", "shpb0")
    sh("ip", "-n", NS, "addr", "add", f"{NS_IP}/24", "dev", "shpb1")
    sh("ip", "link", "set", "shpb0", "up")
    sh("ip", "-n", NS, "link", "set", "shpb1", "up")
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    for prefix, dev in [((), "shpb0"), (("ip", "netns", "exec", NS), "shpb1")]:
        sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "100mbit", "burst", "64kb", "latency", "50ms")


def drop_link():
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "link", "del", "shpb0"], stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------- measures

def busy_cpu_s():
    """CPU seconds the whole machine has been busy (all cores, every
    process and kernel thread, the loop device's writes included)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class Run:
    """One tool's run of a bulk workload: wall time, peak RSS per side, the
    machine's busy CPU seconds meanwhile and, for shipper, the bundle bytes
    it sent."""

    def __init__(self, dt, rss, busy, sent=None):
        self.dt, self.rss, self.busy, self.sent = dt, rss, busy, sent


def at_rest():
    """Write back, untimed, what was written before a tool's run: the corpus
    just made (on the receiver's filesystem here, where on two servers it
    would be the sender's), a run before. Otherwise a tool that syncs
    (shipper's syncfs before it publishes, `sync -f` after rsync) pays for
    writing the source too, and one that does not pays nothing. Called
    before each timed run of rows 1, 2, 5, 6 and 8, and of floor.py,
    profile.py, timeline.py and tree.py."""
    os.sync()


def bulk_shipper(work, corpus, keys, slow=False):
    os.makedirs(work)
    want = tree_sizes(corpus)
    if slow:
        port = free_port()
        proxy = DelayProxy((NS_IP, port), 0.010)
        s = Shipper(work, corpus, keys, f"{NS_IP}:{port}", f"127.0.0.1:{proxy.port}", 'interval = "1s"\nsettle = "250ms"\n',
                    receiver_prefix=("ip", "netns", "exec", NS))
    else:
        port = free_port()
        s = Shipper(work, corpus, keys, f"127.0.0.1:{port}", f"127.0.0.1:{port}", 'interval = "1s"\nsettle = "250ms"\n')
    at_rest()
    b0, t0 = busy_cpu_s(), time.monotonic()
    s.start_sender()
    wait(lambda: tree_sizes(s.root) == want, 1800, 0.05)
    dt, busy = time.monotonic() - t0, busy_cpu_s() - b0
    rss = s.rss()
    # The tree is complete once the last bundle is published, before its
    # acknowledgement reaches the sender: count the bytes once it has.
    s.flush()
    sent = shipped_bytes(s)
    s.stop()
    assert same_content(corpus, s.root), "shipper: content differs"
    shutil.rmtree(work)
    return Run(dt, rss, busy, sent)


def bulk_rsync(work, corpus, slow=False, fsync=False, syncfs=False):
    """rsync's run; `fsync`: the daemon fsyncs each file (--fsync);
    `syncfs`: one `sync -f` of the destination's filesystem once rsync is
    done, counted in its time (the cheapest way to shipper's durability)."""
    os.makedirs(work)
    dest = os.path.join(work, "dest")
    port = free_port()
    at_rest()
    if slow:
        d = RsyncDaemon(work, dest, NS_IP, port, prefix=("ip", "netns", "exec", NS))
        proxy = DelayProxy((NS_IP, port), 0.010)
        dt, crss = rsync_client(corpus, f"rsync://127.0.0.1:{proxy.port}/dest/", extra=("-z",))
    else:
        d = RsyncDaemon(work, dest, "127.0.0.1", port)
        # --fsync: the daemon fsyncs each file it writes, the durability
        # shipper promises before it acknowledges.
        b0 = busy_cpu_s()
        dt, crss = rsync_client(corpus, d.url, extra=("--fsync",) if fsync else ())
        if syncfs:
            t0 = time.monotonic()
            sh("sync", "-f", dest)
            dt += time.monotonic() - t0
        busy = busy_cpu_s() - b0
    drss = d.stop_rss_mib()
    assert tree_sizes(dest) == tree_sizes(corpus) and same_content(corpus, dest), "rsync: content differs"
    shutil.rmtree(work)
    return Run(dt, (crss, drss), busy if not slow else None)


def watch_arrivals(d, names, stop, seen):
    while not stop.is_set():
        try:
            for n in os.listdir(d):
                if n in names and n not in seen:
                    seen[n] = time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.005)


def latency_run(kind, work, keys, singles, burst_rate, burst_secs):
    """Returns (single latencies, burst latencies) in seconds."""
    os.makedirs(work)
    src = os.path.join(work, "src")
    os.makedirs(src)
    port = free_port()
    if kind == "shipper":
        s = Shipper(work, src, keys, f"127.0.0.1:{port}", f"127.0.0.1:{port}", 'interval = "1s"\nsettle = "250ms"\n')
        s.start_sender()
        dest = s.root
        time.sleep(1.5)
        stop_all = s.stop
    else:
        dest = os.path.join(work, "dest")
        d = RsyncDaemon(work, dest, "127.0.0.1", port)
        conf = os.path.join(work, "lsyncd.conf")
        with open(conf, "w") as f:
            f.write('settings { nodaemon = true, insist = true, logfile = "%s/lsyncd.log" }\n'
                    'sync { default.rsync, source = "%s", target = "rsync://127.0.0.1:%d/dest/", delay = 1 }\n' % (work, src, port))
        ls = subprocess.Popen(["lsyncd", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2.0)

        def stop_all():
            ls.send_signal(signal.SIGTERM)
            ls.wait(20)
            d.stop_rss_mib()
    rng = random.Random(7)
    results = []
    for phase in ("single", "burst"):
        sub = os.path.join(src, phase)
        os.makedirs(sub)
        names, written, seen = set(), {}, {}
        stop = threading.Event()
        count = singles if phase == "single" else burst_rate * burst_secs
        names = {f"f{i}.html" for i in range(count)}
        w = threading.Thread(target=watch_arrivals, args=(os.path.join(dest, phase), names, stop, seen))
        w.start()
        for i in range(count):
            name = f"f{i}.html"
            with open(os.path.join(sub, name), "w") as f:
                f.write("<p>%d</p>" % i * 50)
            written[name] = time.monotonic()
            if phase == "single":
                wait(lambda: name in seen, 60, 0.002)
                time.sleep(rng.uniform(0.2, 1.2))  # a random phase against the tick
            else:
                time.sleep(max(0.0, written[f"f0.html"] + (i + 1) / burst_rate - time.monotonic()))
        wait(lambda: len(seen) == count, 120, 0.05)
        stop.set()
        w.join()
        results.append(sorted(seen[n] - written[n] for n in names))
    stop_all()
    shutil.rmtree(work)
    return results


def make_site(dest, n, seed=3):
    rng = random.Random(seed)
    for i in range(n):
        d = os.path.join(dest, str(2000 + i % 25), f"{i % 12 + 1:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"p{i}.html"), "w") as f:
            f.write("<p>%s</p>" % " ".join(rng.choice(WORDS) for _ in range(rng.randint(100, 1500))))


def incremental(work, keys, files, changed, runs):
    os.makedirs(work)
    src = os.path.join(work, "src")
    make_site(src, files)
    port, rport = free_port(), free_port()
    s = Shipper(os.path.join(work, "sh"), src, keys, f"127.0.0.1:{port}", f"127.0.0.1:{port}", 'interval = "5m"\nsettle = "100ms"\n') if os.makedirs(os.path.join(work, "sh")) is None else None
    s.start_sender()
    wait(lambda: tree_sizes(s.root) == tree_sizes(src), 600, 0.1)
    d = RsyncDaemon(work, os.path.join(work, "rdest"), "127.0.0.1", rport)
    rsync_client(src, d.url)
    all_files = sorted(tree_sizes(src))
    rng = random.Random(11)
    ship, rs = [], []
    for run in range(runs):
        pick = rng.sample(all_files, changed)
        for p in pick:
            with open(os.path.join(src, p), "a") as f:
                f.write(f"<!-- run {run} -->")
        time.sleep(0.3)  # let the events reach the sender, as they would in practice
        order = ["shipper", "rsync"] if run % 2 == 0 else ["rsync", "shipper"]
        for who in order:
            if who == "shipper":
                t0 = time.monotonic()
                s.flush()
                wait(lambda: all(open(os.path.join(s.root, p), "rb").read() == open(os.path.join(src, p), "rb").read() for p in pick), 60, 0.01)
                ship.append(time.monotonic() - t0)
            else:
                rs.append(rsync_client(src, d.url)[0])
    s.stop()
    d.stop_rss_mib()
    shutil.rmtree(work)
    return ship, rs


def tree_publish(work, keys, files, changed, runs):
    """The cost per bundle of publish = "tree" on a site of `files` pages:
    `changed` pages appended to, then flush to acknowledged, for a receiver
    publishing by snapshot and one publishing file by file, both shipped
    from the same source by senders of their own, alternating."""
    os.makedirs(work)
    src = os.path.join(work, "src")
    make_site(src, files)
    setups = {}
    for mode in ("tree", "file"):
        port = free_port()
        os.makedirs(os.path.join(work, mode))
        setups[mode] = Shipper(os.path.join(work, mode), src, keys, f"127.0.0.1:{port}", f"127.0.0.1:{port}",
                               'interval = "5m"\nsettle = "100ms"\n', receiver_extra=f'publish = "{mode}"\n')
        setups[mode].start_sender()
    for s in setups.values():
        wait(lambda: tree_sizes(s.root) == tree_sizes(src), 600, 0.1)
    all_files = sorted(tree_sizes(src))
    rng = random.Random(12)
    times = {"tree": [], "file": []}
    for run in range(runs):
        pick = rng.sample(all_files, changed)
        for p in pick:
            with open(os.path.join(src, p), "a") as f:
                f.write(f"<!-- run {run} -->")
        time.sleep(0.3)
        for mode in (["tree", "file"] if run % 2 == 0 else ["file", "tree"]):
            s = setups[mode]
            t0 = time.monotonic()
            s.flush()
            wait(lambda: all(open(os.path.join(s.root, p), "rb").read() == open(os.path.join(src, p), "rb").read() for p in pick), 60, 0.01)
            times[mode].append(time.monotonic() - t0)
    for s in setups.values():
        s.stop()
    shutil.rmtree(work)
    return times["tree"], times["file"]


def make_large(corpus, mib):
    """A tree of one random file of `mib` MiB, media/big.bin."""
    os.makedirs(os.path.join(corpus, "media"))
    with open(os.path.join(corpus, "media", "big.bin"), "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    time.sleep(1.0)  # at rest, as an existing file would be


def large(work, keys, mib):
    corpus = os.path.join(work, "corpus")
    make_large(corpus, mib)
    ship = bulk_shipper(os.path.join(work, "s"), corpus, keys)
    rs = bulk_rsync(os.path.join(work, "r"), corpus)
    fs = bulk_rsync(os.path.join(work, "f"), corpus, fsync=True)
    shutil.rmtree(corpus)
    return ship, rs, fs


def status(cfg):
    """`shipper status --json` of the sender configured in `cfg`."""
    out = subprocess.run([BIN, "status", "--config", cfg, "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def meminfo(key):
    """The machine's /proc/meminfo figure `key` (MemTotal, MemFree), in bytes."""
    with open("/proc/meminfo") as f:
        return next((int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":")), 0)


def shipped_bytes(s):
    """What the sender says it shipped to its receiver: bundle bytes."""
    return sum(r["bytes_shipped"] for r in status(s.scfg)["receivers"])


def all_acknowledged(s):
    """Whether the sender holds nothing pending and no bundle unacknowledged."""
    st = status(s.scfg)
    return st["pending_paths"] == 0 and st["outbox_bytes"] == 0


def rsync_stats(src, url, extra=()):
    """One rsync run: seconds taken, its "Total bytes sent" and "Total
    bytes received" (the block checksums the daemon sends back)."""
    t0 = time.monotonic()
    out = subprocess.run(["rsync", "-a", "--stats", *extra, src.rstrip("/") + "/", url], check=True, capture_output=True, text=True).stdout
    dt = time.monotonic() - t0
    def stat(name):
        line = next(l for l in out.splitlines() if l.startswith(name))
        return int(line.split(":")[1].strip().replace(",", ""))
    return dt, stat("Total bytes sent:"), stat("Total bytes received:")


def rewrite_identically(d):
    """Rewrite every file below `d` with the bytes it holds (a CMS that
    republishes every page): new mtimes, same content."""
    for rel in tree_sizes(d):
        p = os.path.join(d, rel)
        with open(p, "rb") as f:
            body = f.read()
        with open(p, "wb") as f:
            f.write(body)


def mtimes(d):
    return {rel: os.stat(os.path.join(d, rel)).st_mtime_ns for rel in tree_sizes(d)}


def first_ship(work, keys, src):
    """A receiver and a sender holding `src`, shipped; and an rsync daemon
    whose destination holds it too."""
    port, rport = free_port(), free_port()
    os.makedirs(os.path.join(work, "sh"))
    s = Shipper(os.path.join(work, "sh"), src, keys, f"127.0.0.1:{port}", f"127.0.0.1:{port}", 'interval = "5m"\nsettle = "100ms"\n')
    s.start_sender()
    wait(lambda: tree_sizes(s.root) == tree_sizes(src), 600, 0.1)
    d = RsyncDaemon(work, os.path.join(work, "rdest"), "127.0.0.1", rport)
    rsync_client(src, d.url)
    return s, d


def flush_then_rsync(run, tools, src, shipped, out):
    """One run of shipper (flush to ack, until `shipped()` holds: its time
    and bundle bytes onto out[0]) and one rsync run (its stats onto
    out[1]), alternating which goes first."""
    s, d = tools
    ship, rs = out
    for who in (["shipper", "rsync"] if run % 2 == 0 else ["rsync", "shipper"]):
        if who == "shipper":
            before = shipped_bytes(s)
            t0 = time.monotonic()
            s.flush()
            dt = time.monotonic() - t0
            wait(shipped, 120, 0.05)
            ship.append((dt, shipped_bytes(s) - before))
        else:
            rs.append(rsync_stats(src, d.url))


def reuse_rewrite(work, keys, pages, images, runs):
    """Workload 6: per run, the corpus rewritten identically, then shipper
    (flush to ack) and rsync (one run), alternating first."""
    src = os.path.join(work, "src")
    make_corpus(src, 42, pages=pages, images=images, large_mib=0)
    s, d = first_ship(work, keys, src)
    total = sum(tree_sizes(src).values())
    ship, rs = [], []
    for run in range(runs):
        rewrite_identically(src)
        time.sleep(0.3)  # let the events reach the sender, as they would in practice
        at_rest()
        flush_then_rsync(run, (s, d), src, lambda: mtimes(s.root) == mtimes(src), (ship, rs))
        print(f"rewrite run {run}: shipper {ship[-1][0]:.2f}s {ship[-1][1]} B, rsync {rs[-1][0]:.2f}s sent {rs[-1][1]} B received {rs[-1][2]} B", flush=True)
    assert same_content(src, s.root), "shipper: content differs"
    s.stop()
    d.stop_rss_mib()
    shutil.rmtree(work)
    return total, ship, rs


def reuse_rename(work, keys, images):
    """Workload 7: a directory of `images` images (~100 MB at 500) renamed
    after a first ship; bytes each tool sends."""
    src = os.path.join(work, "src")
    make_corpus(src, 7, pages=50, images=images, large_mib=0)
    s, d = first_ship(work, keys, src)
    moved = sum(v for k, v in tree_sizes(src).items() if k.startswith("img/"))
    os.rename(os.path.join(src, "img"), os.path.join(src, "images"))
    time.sleep(0.3)
    before = shipped_bytes(s)
    # Most of the tree moves: the mass-deletion guard would hold it.
    s.flush("--allow-mass-delete")
    wait(lambda: tree_sizes(s.root) == tree_sizes(src), 600, 0.05)
    ship = shipped_bytes(s) - before
    rs = rsync_stats(src, d.url, extra=("--delete",))[1]  # bytes sent
    s.stop()
    d.stop_rss_mib()
    shutil.rmtree(work)
    return moved, ship, rs


def delta_change(work, keys, mib, runs):
    """Workload 8: a `mib` MiB random file shipped, then per run 1 MiB of
    it rewritten in place in the middle; bytes each tool moves and time."""
    src = os.path.join(work, "src")
    os.makedirs(src)
    big = os.path.join(src, "big.bin")
    with open(big, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    time.sleep(1.0)
    s, d = first_ship(work, keys, src)
    ship, rs = [], []
    for run in range(runs):
        with open(big, "r+b") as f:
            f.seek((mib // 2 + run) << 20)
            f.write(os.urandom(1 << 20))
        time.sleep(0.3)
        at_rest()
        flush_then_rsync(run, (s, d), src, lambda: same_content(src, s.root), (ship, rs))
        print(f"delta run {run}: shipper {ship[-1][0]:.2f}s {ship[-1][1]} B, rsync {rs[-1][0]:.2f}s sent {rs[-1][1]} B received {rs[-1][2]} B", flush=True)
    s.stop()
    d.stop_rss_mib()
    shutil.rmtree(work)
    return ship, rs


def slow_rewrite(work, keys, pages, images, runs):
    """Workload 9: the corpus of 6 over the slow link; per run, rewritten
    identically, then the time until shipper's root has every new mtime
    (no flush: interval 1s) and one rsync -z run's time over the link."""
    src = os.path.join(work, "src")
    make_corpus(src, 42, pages=pages, images=images, large_mib=0)
    os.makedirs(os.path.join(work, "sh"))
    port, rport = free_port(), free_port()
    proxy = DelayProxy((NS_IP, port), 0.010)
    s = Shipper(os.path.join(work, "sh"), src, keys, f"{NS_IP}:{port}", f"127.0.0.1:{proxy.port}",
                'interval = "1s"\nsettle = "250ms"\n', receiver_prefix=("ip", "netns", "exec", NS))
    s.start_sender()
    wait(lambda: tree_sizes(s.root) == tree_sizes(src), 600, 0.1)
    d = RsyncDaemon(work, os.path.join(work, "rdest"), NS_IP, rport, prefix=("ip", "netns", "exec", NS))
    rproxy = DelayProxy((NS_IP, rport), 0.010)
    url = f"rsync://127.0.0.1:{rproxy.port}/dest/"
    rsync_client(src, url, extra=("-z",))
    total = sum(tree_sizes(src).values())
    ship, rs = [], []
    for run in range(runs):
        before = shipped_bytes(s)
        rewrite_identically(src)
        t0 = time.monotonic()
        want = mtimes(src)
        wait(lambda: mtimes(s.root) == want, 300, 0.05)
        visible = time.monotonic() - t0
        # The last bundle is counted once acknowledged, after its files
        # are visible.
        wait(lambda: all_acknowledged(s), 120, 0.05)
        ship.append((visible, shipped_bytes(s) - before))
        rs.append(rsync_stats(src, url, extra=("-z",))[0])
        print(f"slow rewrite run {run}: shipper {ship[-1][0]:.2f}s {ship[-1][1]} B, rsync -z {rs[-1]:.2f}s", flush=True)
    s.stop()
    d.stop_rss_mib()
    shutil.rmtree(work)
    return total, ship, rs


def verify_in_step(work, keys, files, runs):
    """Workload 10: an in-step tree of `files` pages; per run, `shipper
    verify` (its first run hashes root whole, later runs are cached) and
    one `rsync -a --delete --dry-run -c`, alternating first."""
    src = os.path.join(work, "src")
    make_site(src, files)
    s, d = first_ship(work, keys, src)
    def verify():
        t0 = time.monotonic()
        r = subprocess.run([BIN, "verify", "--config", s.scfg], capture_output=True, text=True)
        assert r.returncode == 0, f"verify exit {r.returncode}: {r.stdout} {r.stderr}"
        return time.monotonic() - t0
    first = verify()
    ship, rs = [], []
    for run in range(runs):
        for who in (["shipper", "rsync"] if run % 2 == 0 else ["rsync", "shipper"]):
            if who == "shipper":
                ship.append(verify())
            else:
                rs.append(rsync_stats(src, d.url, extra=("--delete", "--dry-run", "-c"))[0])
        print(f"verify run {run}: shipper {ship[-1]:.2f}s, rsync -c dry run {rs[-1]:.2f}s (first verify {first:.2f}s)", flush=True)
    s.stop()
    d.stop_rss_mib()
    shutil.rmtree(work)
    return first, ship, rs


def pct(v, p):
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller workloads, for trying the harness")
    ap.add_argument("--only", default="1,2,3,4,5,6,7,8,9,10,11")
    args = ap.parse_args()
    only = set(args.only.split(","))
    ensure_tools()
    q = args.quick
    rows = []
    with disks() as base:
        keys = make_keys(base)
        corpus = os.path.join(base, "corpus")
        make_corpus(corpus, 42, pages=300 if q else 3000, images=30 if q else 300, large_mib=16 if q else 128)
        sizes = tree_sizes(corpus)
        corpus_desc = f"{len(sizes)} files, {sum(sizes.values()) / 2**20:.0f} MiB (seed 42)"
        if "1" in only:
            sh_t, rs_t, fs_t, sh_rss, rs_rss = [], [], [], [], []
            runs = {"shipper": [], "rsync": [], "rsync --fsync": [], "rsync, syncfs": []}
            tools = list(runs)
            for run in range(args.runs):
                for who in tools[run % 4:] + tools[:run % 4]:
                    at = os.path.join(base, f"b1{tools.index(who)}{run}")
                    if who == "shipper":
                        runs[who].append(bulk_shipper(at, corpus, keys))
                    else:
                        runs[who].append(bulk_rsync(at, corpus, fsync=who == "rsync --fsync", syncfs=who == "rsync, syncfs"))
                print(f"bulk run {run}: " + ", ".join(f"{k} {v[-1].dt:.2f}s" for k, v in runs.items()), flush=True)
            m = {k: statistics.median(r.dt for r in v) for k, v in runs.items()}
            busy = {k: statistics.median(r.busy for r in v) for k, v in runs.items()}
            sh_rss, rs_rss = [r.rss for r in runs["shipper"]], [r.rss for r in runs["rsync"]]
            m_s = m["shipper"]
            rows.append(("1. bulk, loopback", corpus_desc, f"{m_s:.2f} s", f"rsync daemon {m['rsync']:.2f} s", m_s / m["rsync"], "≤ 1.0",
                         f"shipper sender {max(r[0] for r in sh_rss):.0f} MiB / receiver {max(r[1] for r in sh_rss):.0f} MiB; "
                         f"rsync client {max(r[0] for r in rs_rss):.0f} MiB / daemon {max(r[1] for r in rs_rss):.0f} MiB; "
                         f"the machine's CPU busy meanwhile (both sides, kernel and loop device included): shipper {busy['shipper']:.2f} s, "
                         f"rsync {busy['rsync']:.2f} s, of {os.cpu_count()} cores"))
            rows.append(("1. bulk, loopback, vs durable rsync", corpus_desc, f"{m_s:.2f} s", f"rsync --fsync daemon {m['rsync --fsync']:.2f} s", m_s / m["rsync --fsync"], "≤ 0.60",
                         "rsync fsyncs each file it writes (--fsync), as shipper makes each bundle durable before it acknowledges"))
            rows.append(("1. bulk, loopback, vs rsync then one syncfs", corpus_desc, f"{m_s:.2f} s", f"rsync daemon, then sync -f {m['rsync, syncfs']:.2f} s", m_s / m["rsync, syncfs"],
                         "none set", f"the cheapest way to shipper's durability with rsync: one sync of the filesystem once all is written (machine CPU busy {busy['rsync, syncfs']:.2f} s)"))
        if "2" in only:
            try:
                make_link()
                ok = True
            except subprocess.CalledProcessError as e:
                ok = False
                rows.append(("2. slow link", "—", "not run", "—", None, "≤ 0.90", f"network namespaces could not be created here: {e}"))
            if ok:
                try:
                    sh_t, rs_t, sent = [], [], []
                    for run in range(args.runs):
                        for who in (["shipper", "rsync"] if run % 2 == 0 else ["rsync", "shipper"]):
                            if who == "shipper":
                                r = bulk_shipper(os.path.join(base, f"b2s{run}"), corpus, keys, slow=True)
                                sh_t.append(r.dt); sent.append(r.sent)
                            else:
                                rs_t.append(bulk_rsync(os.path.join(base, f"b2r{run}"), corpus, slow=True).dt)
                        print(f"slow run {run}: shipper {sh_t[-1]:.2f}s rsync -z {rs_t[-1]:.2f}s", flush=True)
                    m_s, m_r, m_b = statistics.median(sh_t), statistics.median(rs_t), statistics.median(sent)
                    # tbf counts each packet's IP and TCP headers too (40 of 1500).
                    floor = m_b * 8 / 100e6 * 1500 / 1460
                    rows.append(("2. slow link (100 Mbit/s, 20 ms RTT)", corpus_desc, f"{m_s:.2f} s", f"rsync -z {m_r:.2f} s", m_s / m_r, "≤ 0.90",
                                 f"shipper sent {m_b / 2**20:.1f} MiB of bundles: {floor:.2f} s at 100 Mbit/s with TCP/IP headers, the link's floor for them "
                                 f"(shipper's time is {m_s / floor:.2f}x it); rate: tc tbf 100mbit on both veth ends between namespaces; delay: userspace proxy, 10 ms each way (netem is not in this kernel)"))
                finally:
                    drop_link()
        if "3" in only:
            singles, rate, secs = (8, 50, 5) if q else (20, 200, 30)
            acc = {"shipper": ([], []), "lsyncd": ([], [])}
            for run in range(args.runs):
                for who in (["shipper", "lsyncd"] if run % 2 == 0 else ["lsyncd", "shipper"]):
                    s1, b1 = latency_run(who, os.path.join(base, f"l{who}{run}"), keys, singles, rate, secs)
                    acc[who][0].extend(s1); acc[who][1].extend(b1)
                print(f"latency run {run} done", flush=True)
            for label, i in (("single files", 0), (f"burst {rate}/s for {secs} s", 1)):
                a, b = sorted(acc["shipper"][i]), sorted(acc["lsyncd"][i])
                rows.append((f"3. latency, {label}", f"{len(a)} files per tool",
                             f"median {statistics.median(a)*1000:.0f} ms, p99 {pct(a, 99)*1000:.0f} ms",
                             f"lsyncd median {statistics.median(b)*1000:.0f} ms, p99 {pct(b, 99)*1000:.0f} ms",
                             statistics.median(a) / statistics.median(b), "median ≤ 1.0, p99 ≤ 2 s",
                             f"shipper p99 {'≤' if pct(a, 99) <= 2 else '>'} 2 s"))
        if "4" in only:
            files = 1100 if q else 11000
            ship, rs = incremental(os.path.join(base, "inc"), keys, files, 100, args.runs)
            m_s, m_r = statistics.median(ship), statistics.median(rs)
            rows.append(("4. incremental", f"100 of {files} files changed", f"flush to ack {m_s*1000:.0f} ms", f"one rsync run {m_r*1000:.0f} ms", m_s / m_r, "≤ 1.0", ""))
        if "5" in only:
            mib = 128 if q else 1024
            ts, rss_s, tr, rss_r, tf, busy_s, busy_f = [], [], [], [], [], [], []
            for run in range(args.runs):
                a, c, e = large(os.path.join(base, f"lg{run}"), keys, mib)
                ts.append(a.dt); rss_s.append(a.rss); tr.append(c.dt); rss_r.append(c.rss); tf.append(e.dt)
                busy_s.append(a.busy); busy_f.append(e.busy)
                print(f"large run {run}: shipper {a.dt:.2f}s rsync {c.dt:.2f}s rsync --fsync {e.dt:.2f}s", flush=True)
            m_s, m_r, m_f = statistics.median(ts), statistics.median(tr), statistics.median(tf)
            rows.append((f"5. large file", f"{mib} MiB random", f"{mib / m_s:.0f} MiB/s ({m_s:.2f} s)", f"rsync {mib / m_r:.0f} MiB/s ({m_r:.2f} s)", m_s / m_r,
                         "throughput ≥ rsync's (ratio ≤ 1.0); RSS ≤ 64 MiB per side",
                         f"peak RSS shipper sender {max(r[0] for r in rss_s):.0f} MiB / receiver {max(r[1] for r in rss_s):.0f} MiB; "
                         f"rsync client {max(r[0] for r in rss_r):.0f} MiB / daemon {max(r[1] for r in rss_r):.0f} MiB"))
            rows.append((f"5. large file, vs durable rsync", f"{mib} MiB random", f"{mib / m_s:.0f} MiB/s ({m_s:.2f} s)", f"rsync --fsync {mib / m_f:.0f} MiB/s ({m_f:.2f} s)", m_s / m_f,
                         "ratio ≤ 1.0", f"rsync fsyncs the file it writes (--fsync); the machine's CPU busy meanwhile: shipper {statistics.median(busy_s):.2f} s, "
                         f"rsync --fsync {statistics.median(busy_f):.2f} s, of {os.cpu_count()} cores"))
        if "6" in only:
            pages, images = (500, 50) if q else (5000, 500)
            total, ship, rs = reuse_rewrite(os.path.join(base, "rw"), keys, pages, images, args.runs)
            sb, rb = statistics.median(b for _, b in ship), statistics.median(b for _, b, _ in rs)
            rr = statistics.median(r for _, _, r in rs)
            wl = f"{pages} pages + {images} images rewritten identically, {total / 2**20:.0f} MiB"
            rows.append(("6. identical rewrite, bytes on the wire", wl, f"{sb / 1024:.0f} KiB ({100 * sb / total:.2f}% of the corpus)",
                         f"rsync sent {rb / 1024:.0f} KiB", sb / rb, "≤ 1.0",
                         f"rsync also received {rr / 1024:.0f} KiB of block checksums; target also ≤ 1% of the corpus: {'met' if sb <= total / 100 else 'not met'}"))
            st, rt = statistics.median(t for t, _ in ship), statistics.median(t for t, _, _ in rs)
            rows.append(("6. identical rewrite, time", wl, f"flush to ack {st * 1000:.0f} ms", f"one rsync run {rt * 1000:.0f} ms", st / rt, "≤ 1.0", ""))
        if "7" in only:
            moved, ship, rs = reuse_rename(os.path.join(base, "rn"), keys, 50 if q else 500)
            rows.append(("7. rename of a directory of images, bytes on the wire", f"{moved / 2**20:.0f} MiB of images renamed",
                         f"{ship / 1024:.0f} KiB ({100 * ship / moved:.1f}%)", f"rsync --delete {rs / 1024:.0f} KiB", ship / moved, "≤ 0.01",
                         "ratio here: shipper's bytes / the directory's bytes"))
        if "8" in only:
            mib = 128 if q else 1024
            ship, rs = delta_change(os.path.join(base, "dl"), keys, mib, args.runs)
            sb = statistics.median(b for _, b in ship)
            rb = statistics.median(b + r for _, b, r in rs)
            rsent = statistics.median(b for _, b, _ in rs)
            wl = f"{mib} MiB random file, 1 MiB rewritten in the middle"
            rows.append(("8. large file changed in one region, bytes on the wire", wl, f"{sb / 1024:.0f} KiB",
                         f"rsync delta {rb / 1024:.0f} KiB", sb / rb, "≤ 1.0",
                         f"rsync's bytes sent ({rsent / 1024:.0f} KiB) plus the block checksums it received"))
            st, rt = statistics.median(t for t, _ in ship), statistics.median(t for t, _, _ in rs)
            rows.append(("8. large file changed in one region, time", wl, f"flush to ack {st * 1000:.0f} ms", f"one rsync run {rt * 1000:.0f} ms", st / rt, "none set (issue 14 asks for bytes)",
                         "both read the whole file on each side (shipper's sender hashes and chunks it; its receiver rebuilds it from its copy, checks the hash and fsyncs it before the rename; rsync does not fsync)"))
        if "9" in only:
            pages, images = (500, 50) if q else (5000, 500)
            wl = f"{pages} pages + {images} images rewritten identically, 100 Mbit/s, 20 ms RTT"
            try:
                make_link()
            except subprocess.CalledProcessError as e:
                rows.append(("9. identical rewrite over the slow link", wl, "not run", "—", None, "≤ 1.0", f"network namespaces could not be created here: {e}"))
            else:
                try:
                    total, ship, rs = slow_rewrite(os.path.join(base, "sr"), keys, pages, images, args.runs)
                finally:
                    drop_link()
                st, sb, rt = statistics.median(t for t, _ in ship), statistics.median(b for _, b in ship), statistics.median(rs)
                rows.append(("9. identical rewrite over the slow link", wl + f", {total / 2**20:.0f} MiB",
                             f"rewrite to visible {st:.2f} s, {sb / 1024:.0f} KiB", f"one rsync -z run {rt:.2f} s", st / 11.0, "≤ 1.0",
                             "ratio here: shipper's time / (interval 1 s + 10 s), the goal of issue 14"))
        if "10" in only:
            files = 1100 if q else 11000
            first, ship, rs = verify_in_step(os.path.join(base, "vf"), keys, files, args.runs)
            m_s, m_r = statistics.median(ship), statistics.median(rs)
            wl = f"{files} pages in step"
            rows.append(("10. verify, in step", wl, f"{m_s * 1000:.0f} ms (first, hashing root whole: {first * 1000:.0f} ms)",
                         f"rsync -a --delete --dry-run -c {m_r * 1000:.0f} ms", m_s / m_r, "≤ 2.0",
                         f"first verify / rsync: {first / m_r:.2f}"))
        if "11" in only:
            files = 1100 if q else 11000
            tr, fl = tree_publish(os.path.join(base, "trees"), keys, files, 100, args.runs)
            m_t, m_f = statistics.median(tr), statistics.median(fl)
            rows.append(("11. publish = \"tree\", cost per bundle", f"100 of {files} files changed", f"flush to ack {m_t*1000:.0f} ms",
                         f"publish = \"file\" {m_f*1000:.0f} ms", m_t / m_f, "none set (issue 15 asks for the cost)",
                         f"each bundle first hard-links the {files} files of the snapshot before (directories made anew), then syncs the filesystem once before root points at it"))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
    mem = meminfo("MemTotal") / 2**30
    rsync_v = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    lsyncd_v = subprocess.run(["lsyncd", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[0] if shutil.which("lsyncd") else "lsyncd not installed"
    ship_v = subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    out = [
        "# Benchmarks", "",
        "Written by `python3 bench/bench.py` (median of %d runs, tools alternating; ratio = shipper / peer; lower is better)." % args.runs, "",
        f"- Machine: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB memory, Linux {os.uname().release}",
        f"- Versions: {ship_v} (commit {commit}), {rsync_v}, {lsyncd_v}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}" + ("  (quick mode: reduced workloads)" if q else ""),
        "- shipper runs as two processes (sender, receiver) with mutual TLS, interval 1s, settle 250ms; rsync and lsyncd run without encryption.",
        "- Every tree lives on a freshly made journaled ext4 on a loop device (this machine's root filesystem has no journal, where creating files after deletions varies 2-4x; see `LoopFs` in bench/bench.py).",
        "- The sender's state_dir (its outbox) lives on a second such filesystem, the sender's own disk as on two servers: the receiver's syncfs never flushes it (see `sender_disk` in bench/bench.py).",
        "",
        "| measure | workload | shipper | peer | ratio | target | met | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, wl, s, p, ratio, target, notes in rows:
        if ratio is None:
            met = "n/a"
            rtxt = "—"
        else:
            rtxt = f"{ratio:.2f}"
            import re
            limit = re.search(r"≤ ([0-9.]+)", target)
            met = ("yes" if ratio <= float(limit.group(1)) else "no") if limit else "n/a"
            if name.startswith("3.") and "p99 >" in notes:
                met = "no"
            if name.startswith("5.") and ("RSS" in notes):
                if any(float(x) > 64 for x in re.findall(r"shipper sender (\d+) MiB / receiver (\d+)", notes)[0]):
                    met = "no"
        out.append(f"| {name} | {wl} | {s} | {p} | {rtxt} | {target} | {met} | {notes} |")
    text = "\n".join(out) + "\n"
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
