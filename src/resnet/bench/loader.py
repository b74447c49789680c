"""How fast the training data pipeline feeds a network: images/s of the project's image-folder batches
(:class:`~resnet.data.imagefolder.FolderBatches`) against torchvision's standard ImageFolder + RandomResizedCrop +
ToTensor + Normalize DataLoader, with the same number of workers, on the same files, in the same run.

Both pipelines are timed to the same end: normalised float batches on ``device``. Files are read once before timing so
that both find them in the page cache; each pipeline is timed ``repeats`` times, alternating, and its best is kept
(other processes on a shared machine only ever slow a run down).
"""

from __future__ import annotations

import io
import os
import platform
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps, features
from torchvision import transforms as T

from ..data.decode import IMAGE_EXTENSIONS
from ..data.imagefolder import FolderBatches, open_image_folder
from ..data.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalization
from ..data.transforms import Lighting, TrainAugment
from ..errors import UsageError

PIPELINES = ("scale", "random_resized_crop", "torchvision")


def make_bench_images(out_dir: str | os.PathLike, count: int = 2000, size: tuple[int, int] = (500, 375),
                      quality: int = 90, source: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Write ``count`` JPEGs of ``size`` (ImageNet's most common shape, 500x375) to ``out_dir/train/<class>/``.

    ``source`` a folder of photographs (any image files, searched recursively): each file written is a random crop of
    a random rescale of one of them (scale between just covering ``size`` and 1.5x that), randomly flipped; its class
    is the photo it came from. Real photos, real decoding cost.
    ``source`` a tar of small images in ``train/<class>/*`` (such as the CIFAR-10 JPEG archive): each is an upscaled
    source image with film-grain-like noise and a mid-frequency texture added, so that files have a photo's entropy
    (about 100 KB at quality 90), not the few KB of a smooth upscale, which would decode unrealistically fast.
    No ``source``: random smooth colour fields with the same noise and texture."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    w, h = size
    if source is not None and Path(source).is_dir():
        photos = sorted(p for p in Path(source).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not photos:
            raise UsageError(f"no photos ({', '.join(IMAGE_EXTENSIONS)}) under {source}")
        opened = [(p.stem, Image.open(p).convert("RGB")) for p in photos]
        for i in range(count):
            label, photo = opened[i % len(opened)]
            cover = max(w / photo.width, h / photo.height)
            scale = cover * rng.uniform(1.0, 1.5)
            big = photo.resize((max(w, round(photo.width * scale)), max(h, round(photo.height * scale))),
                               Image.BICUBIC)
            x, y = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
            crop = big.crop((x, y, x + w, y + h))
            if rng.random() < 0.5:
                crop = ImageOps.mirror(crop)
            folder = out / "train" / label
            folder.mkdir(parents=True, exist_ok=True)
            crop.save(folder / f"{i:06d}.jpg", quality=quality)
        return out
    sources: list[tuple[str, bytes]] = []
    if source is not None:
        with tarfile.open(source) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith((".jpg", ".png"))]
            for k in sorted(rng.choice(len(members), size=min(count, len(members)), replace=False)):
                m = members[k]
                sources.append((Path(m.name).parent.name, tar.extractfile(m).read()))
    for i in range(count):
        if sources:
            label, data = sources[i % len(sources)]
            small = Image.open(io.BytesIO(data)).convert("RGB")
        else:
            label = f"class{i % 10}"
            small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        a = np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32)
        blobs = rng.integers(0, 256, (h // 4, w // 4), dtype=np.uint8)
        texture = np.asarray(Image.fromarray(blobs).resize((w, h), Image.BICUBIC), dtype=np.float32)
        a = a + rng.normal(0, 20, (h, w, 1)) + rng.normal(0, 6, (h, w, 3)) + (texture[..., None] - 128) * 0.25
        folder = out / "train" / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=quality)
    return out


def _files_summary(paths: list[str]) -> dict:

    sizes = [os.path.getsize(p) for p in paths]
    dims = [Image.open(p).size for p in paths[:: max(1, len(paths) // 50)]]
    return {"files": len(paths), "mean_kb": sum(sizes) / len(sizes) / 1024,
            "typical_size": "x".join(map(str, max(set(dims), key=dims.count)))}


def _time(batches_iter, warmup: int, batches: int, batch_size: int, device: torch.device,
          clock=time.perf_counter) -> float:
    """images/s over ``batches`` batches, after ``warmup`` batches (worker start-up, first allocations)."""
    it = iter(batches_iter)
    for _ in range(warmup):
        next(it)
    start = clock()
    for _ in range(batches):
        x = next(it)[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    float(x.view(-1)[0])  # the last batch is really there
    return batches * batch_size / (clock() - start)


def bench_data(data_dir: str, workers: int = 4, batches: int = 20, batch_size: int = 64, *, split: str = "train",
               warmup: int = 3, repeats: int = 2, device: str | torch.device = "cpu", seed: int = 0,
               pipelines: tuple[str, ...] = PIPELINES, cpu_time: bool = True) -> dict:
    """Images/s of each pipeline in ``pipelines``: "scale" (the paper's augmentation, per-pixel mean, PCA lighting),
    "random_resized_crop" (the project's loader with torchvision's crop policy) and "torchvision" (the standard
    recipe), each with ``workers`` loader processes.

    Two ends are timed. ``loader``: batches as the DataLoader hands them over (the project's: uint8 crops, to be
    normalised on the device; torchvision's: normalised float). ``device``: normalised float batches on ``device``
    (the project's fused normalisation and lighting: one kernel on a GPU, the main process on a CPU).
    ``cpu_time``: also the CPU milliseconds per image in one process and one thread (no workers), to the loader's
    hand-off and to a normalised batch, a figure that other load on the machine barely moves.
    """
    device = torch.device(device)
    dataset = open_image_folder(data_dir, split)
    if len(dataset) < batch_size:
        raise UsageError(f"{data_dir}/{split} has {len(dataset)} images, fewer than a batch of {batch_size}")
    paths = [p for p, _ in dataset.samples]
    for p in paths:  # into the page cache, for both pipelines alike
        with open(p, "rb") as f:
            f.read()
    streams = _Pipelines(dataset, Path(data_dir) / split, batch_size, seed, device)
    runs, cpu = _time_pipelines(streams, pipelines, workers, warmup, batches, repeats, cpu_time)
    best = {name: {end: max(r[end]) for end in ENDS} for name, r in runs.items()}
    result = {
        "images_per_s": {n: b["loader"] for n, b in best.items()},
        "images_per_s_per_worker": {n: b["loader"] / max(1, workers) for n, b in best.items()},
        "images_per_s_on_device": {n: b["device"] for n, b in best.items()},
        "ratio_to_torchvision": {}, "ratio_on_device": {},
        "runs": runs, "workers": workers, "batch_size": batch_size, "batches": batches, "warmup": warmup,
        "repeats": repeats, "device": str(device), "data": {"dir": str(data_dir), "split": split,
                                                             **_files_summary(paths)},
        "machine": _machine(),
    }
    if cpu_time:
        result["cpu_ms_per_image"] = {n: min(v["loader"]) for n, v in cpu.items()}
        result["cpu_ms_per_image_on_device"] = {n: min(v["device"]) for n, v in cpu.items()}
        result["cpu_runs"] = cpu
    if "torchvision" in best:
        _add_ratios(result, best, cpu_time)
    return result


ENDS = ("loader", "device")


class _Pipelines:
    """The batches of each pipeline over one image folder, from a given number of loader processes."""

    def __init__(self, dataset, folder: Path, batch_size: int, seed: int, device: torch.device):
        self.dataset, self.folder, self.batch_size, self.seed, self.device = dataset, folder, batch_size, seed, device
        self.mean_image = Normalization(torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 224, 224).clone(),
                                        torch.ones(3, 1, 1))

    def stream(self, name: str, end: str, workers: int):
        """Batches of pipeline ``name`` as the loader hands them over (``end`` "loader") or on the device."""
        if name == "torchvision":
            return self.torchvision(workers)
        batches = self.project(name, workers)
        return batches.loader(0) if end == "loader" else batches.iterate(0)

    def project(self, policy: str, workers: int) -> FolderBatches:
        if policy == "scale":  # the paper: per-pixel mean, PCA lighting
            return FolderBatches(self.dataset, self.mean_image, self.batch_size, self.seed, self.device,
                                 workers=workers, augment=TrainAugment(policy), lighting=Lighting.imagenet())
        return FolderBatches(self.dataset, Normalization.per_channel(), self.batch_size, self.seed, self.device,
                             workers=workers, augment=TrainAugment(policy))

    def torchvision(self, workers: int):
        transform = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                               T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        folder = torchvision.datasets.ImageFolder(str(self.folder), transform)
        loader = torch.utils.data.DataLoader(folder, batch_size=self.batch_size, shuffle=True, num_workers=workers,
                                             drop_last=True, pin_memory=self.device.type == "cuda",
                                             generator=torch.Generator().manual_seed(self.seed),
                                             **({"prefetch_factor": 4} if workers else {}))
        while True:
            for x, y in loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _time_pipelines(streams: _Pipelines, pipelines: tuple[str, ...], workers: int, warmup: int, batches: int,
                    repeats: int, cpu_time: bool) -> tuple[dict, dict]:
    """Images/s of each pipeline and end, ``repeats`` times in alternation; and, with ``cpu_time``, CPU ms per image
    in one process and one thread. torchvision's pipeline has one end: its batches are already normalised."""
    runs: dict[str, dict[str, list[float]]] = {name: {end: [] for end in ENDS} for name in pipelines}
    cpu: dict[str, dict[str, list[float]]] = {name: {end: [] for end in ENDS} for name in pipelines}
    threads = torch.get_num_threads()
    for _ in range(repeats):
        for name in pipelines:
            ends = ENDS if name != "torchvision" else ("loader",)
            for end in ends:
                runs[name][end].append(_time(streams.stream(name, end, workers), warmup, batches,
                                             streams.batch_size, streams.device))
            if cpu_time:  # one process, one thread, as a loader worker runs
                torch.set_num_threads(1)
                try:
                    for end in ends:
                        cpu[name][end].append(1000.0 / _time(streams.stream(name, end, 0), 1, max(2, batches // 4),
                                                             streams.batch_size, streams.device,
                                                             clock=time.process_time))
                finally:
                    torch.set_num_threads(threads)
            if name == "torchvision":
                runs[name]["device"], cpu[name]["device"] = runs[name]["loader"], cpu[name]["loader"]
    return runs, cpu


def _add_ratios(result: dict, best: dict, cpu_time: bool) -> None:
    """Each project pipeline against torchvision's: images/s at both ends, and CPU time per image."""
    ref = best["torchvision"]
    for n in best:
        if n != "torchvision":
            result["ratio_to_torchvision"][n] = best[n]["loader"] / ref["loader"]
            result["ratio_on_device"][n] = best[n]["device"] / ref["device"]
            if cpu_time:
                for key in ("", "_on_device"):
                    ms = result[f"cpu_ms_per_image{key}"]
                    result.setdefault(f"cpu_ratio{key}", {})[n] = ms["torchvision"] / ms[n]


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pillow": features.version("pil"),
            "libjpeg_turbo": bool(features.check("libjpeg_turbo"))}


def format_bench_data(result: dict) -> str:
    d, m = result["data"], result["machine"]
    load = f", load average {m['load_average']:.1f} at the end" if m.get("load_average") is not None else ""
    lines = [f"data: {d['dir']}/{d['split']}: {d['files']} files, typically {d['typical_size']}, "
             f"{d['mean_kb']:.0f} KB on average",
             f"{result['workers']} workers, batch {result['batch_size']}, {result['batches']} timed batches after "
             f"{result['warmup']} warm-up, best of {result['repeats']}, to {result['device']}; {m['cpus']} CPUs{load}",
             "",
             f"{'':<24}{'wall clock, ' + str(result['workers']) + ' workers':^39}{'CPU time, one process':^30}",
             f"{'pipeline':<24}{'loader img/s':>13}{'per worker':>11}{'on device':>11}   "
             f"{'ms/img loader':>14}{'to device':>11}"]
    labels = {"scale": "project, paper (scale)", "random_resized_crop": "project, RRC", "torchvision": "torchvision"}
    cpu, cpu_dev = result.get("cpu_ms_per_image") or {}, result.get("cpu_ms_per_image_on_device") or {}

    def ratio(key, name):
        r = result.get(key, {}).get(name)
        return f"{r:4.2f}x" if r else ""

    for name, v in result["images_per_s"].items():
        row = (f"{labels.get(name, name):<24}{v:>13.0f}{result['images_per_s_per_worker'][name]:>11.0f}"
               f"{result['images_per_s_on_device'][name]:>11.0f}   ")
        if name in cpu:
            row += f"{cpu[name]:>14.2f}{cpu_dev[name]:>11.2f}"
        lines.append(row)
        if name != "torchvision" and "torchvision" in result["images_per_s"]:
            lines.append(f"{'  vs torchvision':<24}{ratio('ratio_to_torchvision', name):>13}"
                         f"{ratio('ratio_to_torchvision', name):>11}{ratio('ratio_on_device', name):>11}   "
                         f"{ratio('cpu_ratio', name):>14}{ratio('cpu_ratio_on_device', name):>11}")
    return "\n".join(lines)
