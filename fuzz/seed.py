#!/usr/bin/env python3
"""Fill fuzz/corpus/{frame,manifest,bundle}/ with seeds from fixtures/.

bundle: every zip in fixtures/format1 and fixtures/hostile, as is.
manifest: the .shipper/manifest.json inside each of them that unzips.
frame: one encoded frame of each kind (a refusal as long as shipper
  sends one), and all of them in one stream.
Safe to run again: seeds are named after their content.
"""
import glob
import hashlib
import os
import struct
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")


def put(target, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frame(kind, payload):
    """[kind: u8][len: u32 BE][payload], as src/proto/frame.rs."""
    return struct.pack(">BI", kind, len(payload)) + payload


zips = sorted(glob.glob(os.path.join(FIXTURES, "format1", "*.zip")))
zips += sorted(glob.glob(os.path.join(FIXTURES, "hostile", "*.zip")))
for z in zips:
    with open(z, "rb") as f:
        put("bundle", f.read())
    try:
        put("manifest", zipfile.ZipFile(z).read(".shipper/manifest.json"))
    except Exception:
        pass  # not a zip, no manifest, a lying header: bundle seeds only

PATH = "a/é.html".encode()
u64 = lambda v: struct.pack(">Q", v)
frames = [
    frame(1, b"SHPR" + struct.pack(">H", 2) + b"app-1"),
    frame(2, u64(42) + bytes(range(16)) + u64(100000) + u64(4 << 30) + u64(64 << 30) + u64(16 << 30)),
    frame(3, u64(7) + u64(1 << 40)),
    frame(4, u64(99) + bytes([7]) * 32),
    frame(5, u64(2**64 - 2)),
    frame(6, u64(3) + b"\x00" + struct.pack(">H", 0) + "disk full: é".encode()),
    frame(6, u64(4) + b"\x01" + struct.pack(">H", len(PATH)) + PATH + b"is a symlink"),
    frame(7, b""),
    # The longest refusal shipper sends: a 4096-byte path, a 4096-byte reason.
    frame(6, u64(5) + b"\x01" + struct.pack(">H", 4096) + b"p" * 4096 + b"r" * 4096),
]
for f in frames:
    put("frame", f)
put("frame", b"".join(frames))
