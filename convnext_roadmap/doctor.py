"""`roadmap doctor`: whether this machine trains the paper's recipe as it should, before 24 runs of 300 epochs.

Each check is a short, real use of the tool: tiny runs through the executors a user would launch, read back from
their summaries, so that what passes here is what the runs will do. One PASS / FAIL / INFO line each."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from . import plan, preflight, results, roadmap
from .device import autocast_dtype, cpu_name, cpus_per_process, pick_device
from .errors import RoadmapError

ENDS = {"resnet50": "resnet50", "layer_scale": "convnext_tiny"}  # the path's two ends and their timm twins
TINY = ["stages.width_mult=0.25", "stages.depth_mult=0.34", "data.img_size=64", "train.epochs=2",
        "train.warmup_epochs=0", "train.target_batch=null", "train.batch_size=4", "train.cudnn_benchmark=false"]


@dataclasses.dataclass
class Line:
    verdict: str  # PASS, FAIL or INFO
    check: str
    text: str

    def __str__(self) -> str:
        return f"{self.verdict:<5} {self.check}: {self.text}"


def jpegs(root: Path, classes: int = 2, train: int = 8, val: int = 4, size: tuple[int, int] = (500, 375)) -> str:
    """A small ImageFolder of photo-sized JPEGs (smooth colour fields with grain, ImageNet's typical 500×375), as
    an imagefolder: spec."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
                grain = rng.normal(0, 12, (size[1], size[0], 3))
                pixels = np.clip(np.asarray(coarse, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return f"imagefolder:{root}"


class Doctor:
    """The checks on one device, in a scratch folder removed afterwards (kept, and named, when a check failed)."""

    def __init__(self, device: str, data: str | None, say=print):
        self.device = pick_device(device)  # --device cuda where there is none: one error line
        if data is not None:
            from .data import load_splits

            load_splits(data)  # a bad --data: one error line, before any check
        self.device_flag, self.data, self.say = device, data, say
        self.lines: list[Line] = []
        self.scratch = Path(tempfile.mkdtemp(prefix="roadmap-doctor-"))
        self.log = self.scratch / "runs.log"
        self.cuda = self.device.type == "cuda"
        self.batch = 32 if self.cuda else 4
        self.train_img_s: dict[str, float] = {}  # each end's measured training speed, for the data path's check

    def run(self) -> int:
        checks = [self.versions, self.devices, self.ends, self.resume, self.pinned, self.ddp, self.throughput,
                  self.data_path]
        for check in checks:
            try:
                found = check()
            except Exception as e:  # noqa: BLE001 - one broken check is a FAIL line, the others still run
                found = [Line("FAIL", check.__name__.replace("_", " "), f"{type(e).__name__}: {e}")]
            for line in found:
                self.lines.append(line)
                self.say(str(line))
        failed = [ln for ln in self.lines if ln.verdict == "FAIL"]
        if failed:
            self.say(f"{len(failed)} check(s) failed; the runs' output is in {self.log}")
        else:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.say("every check passed")
        return 1 if failed else 0

    # ------------------------------------------------------------------------------------------- the checks

    def versions(self) -> list[Line]:
        import timm

        cuda = f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if torch.version.cuda else \
            "a CPU-only torch"
        return [Line("INFO", "versions", f"python {platform.python_version()}, torch {torch.__version__}, timm "
                                         f"{timm.__version__}, {cuda}")]

    def devices(self) -> list[Line]:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        out = [Line("INFO", "cpu", f"{cpu_name()}, {cpus_per_process()} CPU(s) for this process of "
                                   f"{os.cpu_count()}")]
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        names = [f"{i}: {torch.cuda.get_device_name(i)}, {torch.cuda.get_device_properties(i).total_memory / 2**30:.0f}"
                 f" GiB" for i in range(gpus)]
        said = "; ".join(names) if names else "none"
        out.append(Line("INFO", "gpus", f"{said} (CUDA_VISIBLE_DEVICES={visible if visible is not None else 'unset'}"
                                        f"); training on {self.device}"))
        return out

    def ends(self) -> list[Line]:
        """Two optimizer steps of each end under the paper's recipe, at 224², on this device."""
        data = jpegs(self.scratch / "photos", classes=2, train=self.batch // 2, val=self.batch // 4)  # 2 batches
        overrides = ["train.epochs=1", "train.warmup_epochs=0", "train.target_batch=null",
                     f"train.batch_size={self.batch // 2}"]
        runs = self._train(self._variants(list(ENDS), data, overrides), "ends")
        dtype, _ = autocast_dtype("auto", self.device)
        want = str(dtype).removeprefix("torch.") if dtype else None
        out = []
        for (name, _), (summary, metrics) in runs.items():
            check = f"{name} ({ENDS[name]}) under paper_in1k"
            if summary.get("status") != "completed":
                out.append(Line("FAIL", check, summary.get("error", "no summary")))
                continue
            problems = [what for what, ok in (
                (f"trained on {summary['hardware']['device']}", summary["hardware"]["device"].split(":")[0]
                 == self.device.type),
                ("not channels_last", summary["channels_last"]), ("AdamW not fused", summary.get("fused_optimizer")),
                (f"autocast {summary['autocast']}, expected {want}", summary["autocast"] == want),
                ("a loss not finite", all(math.isfinite(m["train_loss"]) for m in metrics))) if not ok]
            text = (f"2 optimizer steps on {summary['hardware']['device']}, channels_last, fused AdamW, "
                    f"{summary['autocast'] or 'fp32'}, loss {metrics[-1]['train_loss']:.3f}")
            out.append(Line("FAIL" if problems else "PASS", check, "; ".join(problems) or text))
        return out

    def resume(self) -> list[Line]:
        """A tiny run stopped after its first epoch and resumed here ends as the uninterrupted one does."""
        variants = self._variants(["layer_scale"], self._tiny(), TINY)
        straight = self._train(variants, "straight")["layer_scale", 0]
        self._train(variants, "resumed", stop_after=1)
        resumed = self._train(variants, "resumed")["layer_scale", 0]
        if straight[0].get("status") != "completed" or resumed[0].get("status") != "completed":
            return [Line("FAIL", "resume", straight[0].get("error") or resumed[0].get("error") or "no summary")]
        tolerance = 1e-3 if self.cuda else 1e-6  # GPU kernels add in varying order
        worst = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-9) for a, b in zip(straight[1], resumed[1])
                    for k in ("train_loss", "val_loss"))
        epochs = [m["epoch"] for m in resumed[1]]
        ok = worst <= tolerance and epochs == [1, 2]
        return [Line("PASS" if ok else "FAIL", "resume", f"stopped after epoch 1 and resumed on {self.device}: "
                                                        f"losses within {worst:.1e} (relative) of the uninterrupted "
                                                        f"run's, epochs {epochs}")]

    def pinned(self) -> list[Line]:
        """One local run per visible GPU, each on its own."""
        gpus = torch.cuda.device_count() if self.cuda else 0
        if not gpus:
            return [Line("INFO", "local runs per GPU", "no GPU: not checked")]
        variants = self._variants(["layer_scale"], self._tiny(), [*TINY, "train.epochs=1"])
        runs = self._train(variants, "pinned", seeds=list(range(gpus)), executor=("local", {"parallel": gpus}))
        launch = os.environ.get("CUDA_VISIBLE_DEVICES")
        expected = sorted(launch.split(",")) if launch else [str(i) for i in range(gpus)]
        seen = sorted(s.get("hardware", {}).get("visible_gpus") or "?" for s, _ in runs.values())
        ok = seen == expected and all(s.get("status") == "completed" for s, _ in runs.values())
        return [Line("PASS" if ok else "FAIL", "local runs per GPU", f"{gpus} run(s) at once saw GPU(s) {seen}, "
                                                                    f"expected one each of {expected}")]

    def ddp(self) -> list[Line]:
        """One data-parallel run of two processes: two GPUs where there are, else two CPU processes (gloo)."""
        gpus = torch.cuda.device_count() if self.cuda else 0
        if self.cuda and gpus < 2:
            return [Line("INFO", "DDP", f"{gpus} GPU: DDP over 2 GPUs not checked")]
        options = {"gpus_per_job": 2, "parallel": 1} if self.cuda else {"tasks_per_job": 2, "parallel": 1}
        variants = self._variants(["layer_scale"], self._tiny(), [*TINY, "train.epochs=1", "train.batch_size=2"])
        summary, _ = self._train(variants, "ddp", executor=("local", options))["layer_scale", 0]
        what = "2 GPUs (NCCL)" if self.cuda else "2 CPU processes (gloo)"
        ok = summary.get("status") == "completed" and summary.get("processes") == 2
        return [Line("PASS" if ok else "FAIL", "DDP", f"one run over {what}: "
                                                      f"{summary.get('status')}, {summary.get('processes')} ranks"
                                                      + (f" ({summary['error']})" if "error" in summary else ""))]

    def throughput(self) -> list[Line]:
        """Both ends' training speed beside timm's own models with the same weights, cuDNN and TF32 as they train."""
        import timm

        from .measure import measure_speed
        from .model import build_model, load_timm_state_dict

        dtype, _ = autocast_dtype("auto", self.device)
        batch, rounds = (128, 5) if self.cuda else (4, 1)  # a CPU: the order of magnitude, in seconds
        out = []
        for name, twin in ENDS.items():
            ours = build_model(roadmap.resolve_config(name))
            theirs = timm.create_model(twin, pretrained=False)
            load_timm_state_dict(ours, theirs.state_dict())
            speeds = measure_speed({name: ours, twin: theirs}, batch_size=batch, img_size=224,
                                   device=str(self.device), rounds=rounds, peak_memory=False,
                                   amp=dtype == torch.bfloat16)
            self.train_img_s[name] = speeds[name].train_img_s
            ratio = speeds[name].train_img_s / speeds[twin].train_img_s
            out.append(Line("INFO", f"throughput {name}", f"{speeds[name].train_img_s:,.1f} img/s training (batch "
                                                            f"{batch}, 224², {'bf16' if dtype else 'fp32'}), timm's "
                                                            f"{twin} {speeds[twin].train_img_s:,.1f}: ×{ratio:.2f}"))
            del ours, theirs
        return out

    def data_path(self) -> list[Line]:
        """The input path's CPU time per training image on the data (224², the paper's augmentations), beside
        timm's create_loader on the same images; the loader workers a GPU's speed needs."""
        spec = self.data or jpegs(self.scratch / "photos-224", train=32, val=2)
        ours, theirs, images = input_path_cpu_s(spec, self.device)
        where = self.data or "generated 500×375 JPEGs"
        per_worker = 1 / ours
        line = (f"{1000 * ours:.1f} ms of CPU per image, timm's create_loader {1000 * theirs:.1f} ms (×"
                f"{theirs / ours:.2f} ours), over {images} images of {where}: one loader worker makes "
                f"{per_worker:,.0f} img/s")
        out = [Line("INFO", "data path", line)]
        fastest = max(self.train_img_s.values(), default=None)
        if fastest is not None:
            need = math.ceil(fastest / per_worker)
            have = cpus_per_process()
            short = f", {need - have} short: the GPU would wait for data" if have < need and self.cuda else ""
            out.append(Line("INFO", "loader workers", f"the faster end trains at {fastest:,.0f} img/s here: "
                                                      f"{need} worker(s) per process keep it fed; this process may "
                                                      f"use {have} CPU(s) (data.workers: auto takes them){short}"))
        return out

    # --------------------------------------------------------------------------------------------- helpers

    def _tiny(self) -> str:
        folder = self.scratch / "tiny"
        return f"imagefolder:{folder}" if folder.is_dir() else jpegs(folder, train=8, val=4, size=(96, 80))

    def _variants(self, names: list[str], data: str, overrides: list[str]):
        context = roadmap.Context(roadmap.DEFAULT_BASE, "paper_in1k", data, tuple(overrides))
        variants = roadmap.request(context, steps=names)
        preflight.check_configs(variants)
        return variants

    def _train(self, variants, experiment: str, stop_after: int | None = None, seeds=(0,),
               executor=("inprocess", {})) -> dict:
        """Train the variants in a scratch experiment through an executor, as `roadmap run` would, its output into
        the log; each run's (summary, metrics) by (name, seed)."""
        from .executors import make

        exp = self.scratch / experiment
        kind, options = executor
        runner = make(kind, exp, options)
        runner.check(self.device_flag)
        jobs = plan.make_jobs(variants, list(seeds), exp, self.device_flag, {"experiment": experiment},
                              plan.complexities(variants, 2))
        jobs = [dataclasses.replace(j, stop_after=stop_after) for j in jobs]
        start = time.time()
        with open(self.log, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            print(f"## {experiment}: {[j.name for j in jobs]} on {self.device_flag} ({kind})", flush=True)
            runner.submit(jobs)
            print(f"## {experiment}: {time.time() - start:.0f} s", flush=True)
        out = {}
        for job in jobs:
            folder = Path(job.run_dir)
            out[job.name, job.seed] = (results.read_json(folder / "summary.json") or {}, results.read_metrics(folder))
        return out


def input_path_cpu_s(spec: str, device: torch.device, images: int | None = None) -> tuple[float, float, int]:
    """CPU seconds per training image of the paper's input path on `spec`'s training images at 224², ours and timm's
    create_loader (same transforms, prefetcher, erasing), each in this process (no worker: its CPU time is a
    worker's), alternated twice; and the images each pass took."""
    from timm.data import create_loader

    from .data import SkippedImages, load_splits
    from .data.pil import ImageDataset
    from .data.pil import image_loaders
    from .roadmap import resolve_config

    d = resolve_config(recipe="paper_in1k", data=spec, overrides=["data.workers=0"]).data
    train_split, val_split = load_splits(spec)
    n = min(images or 64, len(train_split.samples))
    if n < 8:
        raise RoadmapError(f"--data {spec}: {n} training images; the data path needs 8 or more to be timed")
    split = dataclasses.replace(train_split, samples=train_split.samples[:n])
    batch = 8

    def ours():
        train, _ = image_loaders(d, split, val_split, batch, batch, 0, 0, 1, SkippedImages(), device)
        train.set_epoch(0)
        for _ in train:
            pass
        return len(train) * batch

    def timms():
        loader = create_loader(ImageDataset(split, None), (3, 224, 224), batch, is_training=True, use_prefetcher=True,
                               scale=tuple(d.crop_scale), hflip=0.5, auto_augment=d.auto_augment,
                               re_prob=d.random_erasing, re_mode="pixel", interpolation=d.interpolation,
                               mean=tuple(d.mean), std=tuple(d.std), num_workers=0, device=device,
                               pin_memory=device.type == "cuda")  # as ours pins: like for like
        for _ in loader:
            pass
        return len(loader.dataset)

    spent = {ours: [], timms: []}
    for _ in range(2):
        for path in (ours, timms):
            start = time.process_time()
            made = path()
            spent[path].append((time.process_time() - start) / made)
            if device.type == "cuda":  # after the timer: a synchronize spins on the CPU while the GPU finishes
                torch.cuda.synchronize(device)
    return min(spent[ours]), min(spent[timms]), n // batch * batch
