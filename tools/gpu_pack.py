"""What a GPU call of tools/gpu_session.sh carries: the compact CIFAR-10 pack, and the size check.

The device tool carries at most 64 MiB a call: the working tree (tracked and untracked-not-ignored
files) plus the paths named in ``carry``. The full CIFAR-10 JPEG pack is 55.8 MiB, too much beside
the tree and the wheels, so the GPU session reads a **compact pack**: the same file format
(``cifar10_jpeg_bytes.npz``, the original JPEG bytes, read by ``data.source: jpeg_pack``), cut
class-balanced from the full one, in a git-ignored folder.

    python tools/gpu_pack.py build                     # ../shared/data -> local_data/gpu_pack (30,000 + 1,000)
    python tools/gpu_pack.py build --train 40000 --src /path/to/data --out local_data/gpu_pack
    python tools/gpu_pack.py carry .whl local_data/gpu_pack gpu_carry   # total that one call carries

Size budget (what the defaults give; ``carry`` prints the real figures):

    working tree (tracked files)                 ~ 9.5 MiB
    .whl (cattrs, attrs, typing_extensions, xautodl)  ~ 1 MiB
    local_data/gpu_pack: 30,000 train + 1,000 test JPEGs (0.92 KiB each) ~ 28.5 MiB
    gpu_carry/search_run.tar.gz (the resumable search's checkpoint)      ~ 5 MiB
    total                                        ~ 44 MiB of the 64 MiB; ``carry`` refuses > 56 MiB

``build`` takes the first ``train / 10`` training images of each class (the pack keeps the original
order inside a class) and the first ``test / 10`` test images of each class in the canonical test
order, as ``tools/make_embedded_data.py`` cuts the embedded sample. ``--src`` may also name a JPEG
pack file itself (the dry run cuts a tiny pack from the embedded sample that way).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACK = "cifar10_jpeg_bytes.npz"
#: what `carry` accepts: the device tool's 64 MiB less a margin for what a checkout may hold beside
BUDGET_MIB = 56.0


def cut(buf: np.ndarray, off: np.ndarray, labels: np.ndarray, order, per_class: int):
    """The first ``per_class`` images of each class in ``order``: (bytes, offsets, labels)."""
    chosen, counts = [], np.zeros(10, int)
    for i in order:
        c = int(labels[i])
        if counts[c] < per_class:
            chosen.append(i)
            counts[c] += 1
    if counts.min() < per_class:
        raise SystemExit(f"gpu_pack: the source holds only {counts.min()} images of some class; asked {per_class}")
    chosen = np.array(chosen)
    parts = [buf[off[i]:off[i + 1]] for i in chosen]
    new_off = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    return np.concatenate(parts), new_off, labels[chosen].astype(np.uint8)


def build(src: Path, out: Path, n_train: int, n_test: int) -> Path:
    """Write ``out/cifar10/cifar10_jpeg_bytes.npz`` (atomically); return its path."""
    if n_train % 10 or n_test % 10 or n_train <= 0 or n_test <= 0:
        raise SystemExit("gpu_pack: --train and --test must be positive multiples of 10 (class-balanced)")
    path = src if src.is_file() else next((p for p in (src / "cifar10" / PACK, src / PACK) if p.exists()), None)
    if path is None:
        raise SystemExit(f"gpu_pack: no {PACK} under {src} (looked in {src / 'cifar10'} and {src})")
    z = np.load(path, allow_pickle=False)
    test_order = z["test_canonical_perm"] if "test_canonical_perm" in z.files else range(len(z["y_test"]))
    tr = cut(z["train_jpeg"], z["train_offsets"], z["y_train"], range(len(z["y_train"])), n_train // 10)
    te = cut(z["test_jpeg"], z["test_offsets"], z["y_test"], test_order, n_test // 10)
    dest = out / "cifar10" / PACK
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.npz")
    note = (f"compact CIFAR-10 pack (tools/gpu_pack.py): first {n_train // 10} train / {n_test // 10} test "
            f"images per class of {path.name}; test images in canonical order")
    np.savez(tmp, train_jpeg=tr[0], train_offsets=tr[1], y_train=tr[2], test_jpeg=te[0], test_offsets=te[1],
             y_test=te[2], class_names=z["class_names"], pack_note=np.array(note))
    os.replace(tmp, dest)
    print(f"gpu_pack: {dest} ({dest.stat().st_size / 2**20:.1f} MiB): {n_train} train + {n_test} test images")
    return dest


def tree_bytes(root: Path) -> int:
    """Bytes of what travels without ``carry``: tracked and untracked-not-ignored files."""
    names = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((root / n.decode()).stat().st_size for n in names if n and (root / n.decode()).is_file())


def path_bytes(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def carry(root: Path, paths: list[str], budget: float = BUDGET_MIB) -> float:
    """Print what one call carries (tree + each path) and return the total in MiB; exit 1 over budget."""
    tree = tree_bytes(root) / 2**20
    total = tree
    print(f"  working tree          {tree:7.1f} MiB")
    for name in paths:
        p = root / name
        mib = path_bytes(p) / 2**20 if p.exists() else 0.0
        total += mib
        print(f"  {name:<22}{mib:7.1f} MiB{'' if p.exists() else '  (absent)'}")
    print(f"  total                 {total:7.1f} MiB of the device tool's 64 MiB (this check refuses > {budget:.0f})")
    if total > budget:
        print(f"gpu_pack: the carry would be {total:.1f} MiB, over {budget:.0f} MiB: build a smaller pack "
              f"(--train) or carry less", file=sys.stderr)
        raise SystemExit(1)
    return total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="cut the compact pack")
    b.add_argument("--src", default=str(ROOT.parent / "shared" / "data"), help="data root, or a JPEG pack file")
    b.add_argument("--out", default=str(ROOT / "local_data" / "gpu_pack"), help="data root to write (git-ignored)")
    b.add_argument("--train", type=int, default=30000)
    b.add_argument("--test", type=int, default=1000)
    c = sub.add_parser("carry", help="what one call carries, checked against the budget")
    c.add_argument("paths", nargs="*", default=[".whl", "local_data/gpu_pack", "gpu_carry"])
    c.add_argument("--budget-mib", type=float, default=BUDGET_MIB)
    a = p.parse_args(argv)
    if a.cmd == "build":
        build(Path(a.src), Path(a.out), a.train, a.test)
    else:
        carry(ROOT, a.paths, a.budget_mib)


if __name__ == "__main__":
    main()
