"""Pack a folder of float NIfTI images losslessly into size-capped xz shards, and unpack them byte for byte.

For carrying a dataset to a borrowed GPU machine whose calls take at most 64 MiB each (benchmarks/gpu_benchmark.sh):
ACDC's 160 images are 98 MB as .nii.gz, more than one call holds. The SSL4MIS copy stores each volume min-max
normalised, i.e. integer intensities x divided by one number M per volume, so a volume is stored as the NIfTI header
bytes, M and x as uint16 (high and low byte planes: xz packs them tighter), about 25 % smaller than xz of the
floats. Unpacking rebuilds the uncompressed .nii byte for byte (``x.astype(float32) / float32(M)``; checked for
every file when packing; a volume that does not round-trip is stored as its float bytes) and gzips it.

    python benchmarks/gpu_image_pack.py pack IMAGES_DIR OUT_PREFIX --first-mb 19 --mb 58
    python benchmarks/gpu_image_pack.py unpack OUT_DIR SHARD [SHARD ...]
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import struct
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

_FLOAT32 = 16  # NIfTI-1 datatype code
_XZ = [{"id": lzma.FILTER_LZMA2, "preset": 9}]


def _nifti_parts(raw: bytes) -> tuple[bytes, np.ndarray] | None:
    """(header bytes up to vox_offset, float32 voxels) of an uncompressed NIfTI-1 file, None if not float32."""
    if struct.unpack("<i", raw[:4])[0] != 348:
        return None
    datatype = struct.unpack("<h", raw[70:72])[0]
    vox_offset = int(struct.unpack("<f", raw[108:112])[0])
    if datatype != _FLOAT32:
        return None
    return raw[:vox_offset], np.frombuffer(raw[vox_offset:], dtype="<f4")


def _as_integers(v: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(M, x) with x / M == v exactly in float32, x < 65536; None where no such M is found."""
    u = np.unique(v)
    if len(u) < 2 or u[0] < 0:
        return None
    guess = round(1.0 / float(np.diff(u).min()))
    for m in range(max(1, guess - 3), min(65535, 2 * guess + 4)):
        x = np.round(v.astype(np.float64) * m)
        if x.max() <= 65535 and np.array_equal(x.astype(np.float32) / np.float32(m), v):
            return m, x.astype(np.uint16)
    return None


def _encode(path: Path) -> tuple[dict, bytes]:
    """(record, payload) of one image file."""
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    parts = _nifti_parts(raw)
    found = _as_integers(parts[1]) if parts else None
    if found is None:
        return {"name": name, "kind": "bytes", "n": len(raw)}, raw
    header, _ = parts
    m, x = found
    payload = header + (x >> 8).astype(np.uint8).tobytes() + (x & 255).astype(np.uint8).tobytes()
    record = {"name": name, "kind": "uint16", "m": m, "header": len(header), "voxels": int(x.size)}
    if _decode(record, payload) != raw:  # never ship what does not come back identical
        return {"name": name, "kind": "bytes", "n": len(raw)}, raw
    return record, payload


def _decode(record: dict, payload: bytes) -> bytes:
    if record["kind"] == "bytes":
        return payload
    h, n = record["header"], record["voxels"]
    hi = np.frombuffer(payload[h:h + n], dtype=np.uint8).astype(np.uint16)
    lo = np.frombuffer(payload[h + n:h + 2 * n], dtype=np.uint8).astype(np.uint16)
    v = ((hi << 8) | lo).astype(np.float32) / np.float32(record["m"])
    return payload[:h] + v.astype("<f4").tobytes()


def _xz(payload: bytes) -> bytes:
    return lzma.compress(payload, format=lzma.FORMAT_XZ, filters=_XZ)


def _payload_size(record: dict) -> int:
    return record["n"] if record["kind"] == "bytes" else record["header"] + 2 * record["voxels"]


def _write_shard(path: Path, records: list[dict], compressed: list[bytes]) -> int:
    """One xz stream for the index, then each file's own stream: ``lzma.decompress`` reads concatenated streams
    as one, so the shard decompresses to ``index + payloads`` and every file is compressed exactly once."""
    index = json.dumps(records).encode()
    data = _xz(struct.pack("<Q", len(index)) + index) + b"".join(compressed)
    path.write_bytes(data)
    return len(data)


def pack(images: Path, prefix: Path, first_mb: float, mb: float) -> list[Path]:
    """Shards ``PREFIX.1.xz``, ``PREFIX.2.xz``, ...: the first at most ``first_mb`` MB, the others ``mb``."""
    files = sorted(p for p in images.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    with ProcessPoolExecutor(2) as pool:
        encoded = list(pool.map(_encode, files))
        compressed = list(pool.map(_xz, [p for _, p in encoded]))  # each file once; shards are cut on these sizes
    shards, current, budget, total = [], [], first_mb * 1e6 * 0.97, 0
    for (record, _), data in zip(encoded, compressed):
        if current and total + len(data) > budget:
            shards.append(current)
            current, budget, total = [], mb * 1e6 * 0.97, 0
        current.append((record, data))
        total += len(data)
    shards.append(current)
    out = []
    for i, shard in enumerate(shards, 1):
        path = prefix.with_name(f"{prefix.name}.{i}.xz")
        size = _write_shard(path, [r for r, _ in shard], [p for _, p in shard])
        limit = (first_mb if i == 1 else mb) * 1e6
        print(f"{path}: {len(shard)} images, {size / 1e6:.1f} MB (limit {limit / 1e6:g})")
        if size > limit:
            raise SystemExit(f"{path} is {size / 1e6:.1f} MB, over its {limit / 1e6:g} MB: lower --first-mb/--mb")
        out.append(path)
    kinds = [r["kind"] for r, _ in encoded]
    print(f"{len(files)} images: {kinds.count('uint16')} as uint16, {kinds.count('bytes')} as bytes")
    return out


def _unpack_one(args: tuple[Path, dict, bytes]) -> str:
    out, record, payload = args
    raw = _decode(record, payload)
    with gzip.open(out / f"{record['name']}.gz", "wb", compresslevel=1) as fh:
        fh.write(raw)
    return record["name"]


def unpack(out: Path, shards: list[Path]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for shard in shards:
        blob = lzma.decompress(shard.read_bytes())
        (n,) = struct.unpack("<Q", blob[:8])
        records = json.loads(blob[8:8 + n])
        pos = 8 + n
        for r in records:
            size = _payload_size(r)
            jobs.append((out, r, blob[pos:pos + size]))
            pos += size
    with ProcessPoolExecutor(8) as pool:
        done = list(pool.map(_unpack_one, jobs))
    print(f"unpacked {len(done)} images to {out}")
    return len(done)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("images", type=Path)
    a.add_argument("prefix", type=Path)
    a.add_argument("--first-mb", type=float, default=19.0)
    a.add_argument("--mb", type=float, default=58.0)
    b = sub.add_parser("unpack")
    b.add_argument("out", type=Path)
    b.add_argument("shards", type=Path, nargs="+")
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(args.images, args.prefix, args.first_mb, args.mb)
    else:
        unpack(args.out, args.shards)
    return 0


if __name__ == "__main__":
    sys.exit(main())
