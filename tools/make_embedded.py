"""Regenerate the embedded CIFAR-10 subset (src/resnet/assets/cifar10-embedded.tar.gz) from the JPEG tarball of the
50k CIFAR-10 training images (train/<class>/NNNN.jpg). Deterministic: the same source and seed give the same bytes.

Of each class it takes 500 images of the full set's 45k "train" split and 100 of its 5k "val" split (the package's
fixed held-out choice, ``resnet.data.cifar.held_out_mask``), so embedded train/val never overlap each other, nor the
other side of the full split. The JPEG bytes are copied unchanged.

    python tools/make_embedded.py [--source PATH/cifar10-train-jpeg.tar.gz] [--seed 0] [--check]
"""

from __future__ import annotations

import argparse
import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import torch

from resnet.data import cifar
from resnet.data.embedded import ASSET, PER_CLASS

ROOT = Path(__file__).resolve().parents[1]


def choose(names: list[str], labels: torch.Tensor, seed: int) -> dict[str, list[int]]:
    """Indices (into the full set, ordered as the package reads it) of the embedded train and val images."""
    val = cifar.held_out_mask(labels).numpy()
    rank = cifar._splitmix64(np.arange(len(names), dtype=np.uint64) + np.uint64(seed))  # fixed, seeded ranking
    chosen: dict[str, list[int]] = {"train": [], "val": []}
    for c in range(int(labels.max()) + 1):
        for part, side in (("train", ~val), ("val", val)):
            idx = np.flatnonzero((labels.numpy() == c) & side)
            chosen[part] += sorted(idx[np.argsort(rank[idx], kind="stable")[:PER_CLASS[part]]].tolist())
    return chosen


def write_tar(out: Path, files: list[tuple[str, bytes]]) -> None:
    """A gzip'd tar with fixed metadata (no times, owners or file name in the headers): reproducible bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:  # noqa: SIM117 (3.9)
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=Path("data/cifar10-train-jpeg.tar.gz"))
    p.add_argument("--out", type=Path, default=ROOT / "src" / "resnet" / "assets" / ASSET)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="decode both sets and check the embedded images against them")
    args = p.parse_args()

    # Read the names in the order the package decodes them, (class, name), so that indices match held_out_mask's.
    entries = [(*cifar._tree_entry(n), n, d) for n, d in cifar.iter_tar(args.source, lambda n: cifar._tree_entry(n))]
    entries = [e for e in entries if e[0] == "train"]
    classes = cifar.class_order({cls for _, cls, _, _ in entries})
    index = {c: i for i, c in enumerate(classes)}
    entries.sort(key=lambda e: (index[e[1]], e[2]))
    labels = torch.tensor([index[cls] for _, cls, _, _ in entries])
    chosen = choose([e[2] for e in entries], labels, args.seed)
    files = [(f"{part}/{entries[i][1]}/{Path(entries[i][2]).name}", entries[i][3])
             for part in ("train", "val") for i in chosen[part]]
    write_tar(args.out, files)
    print(f"wrote {args.out}: {len(chosen['train'])} train + {len(chosen['val'])} val images, "
          f"{args.out.stat().st_size} bytes")

    if args.check:  # the embedded images are, pixel for pixel, images of the matching side of the full split
        full = cifar.read_source("cifar10", cifar.Source("folder_archive", args.source))["train"]
        mine = cifar.read_image_archive(args.out)
        for part in ("train", "val"):
            expect = full.images[chosen[part]]
            got = mine[part].images
            assert torch.equal(got, expect) and torch.equal(mine[part].labels, full.labels[chosen[part]]), part
        print("check: embedded train/val equal the chosen images of the full train/val split")


if __name__ == "__main__":
    main()
