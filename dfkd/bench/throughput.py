"""Throughput at paper scale: `python -m dfkd.bench --throughput [--full] [--out bench]`.

For each method's paper recipe, with a random CIFAR-size ResNet-34 teacher and ResNet-18 student (no data, no
weights needed): synthesis images per second (one `synthesize()` call is one generator step / one batch of
pixel optimization) and distillation steps per second (teacher forward + student forward/backward + SGD step).
On a GPU it runs the paper batch sizes in three variants: fp32; bf16 autocast + channels_last; and the same
with `torch.compile` on the student's KD step (the synthesizers keep eager mode: their forward hooks on the
teacher are what torch.compile handles worst). On a CPU it runs a short fp32 version (small batches, few
steps) unless `--full`.

DeepInversion's one call is `iterations` optimizer steps on one batch; it is timed over a few steps and its
images/s is extrapolated to the recipe's iteration count (the column says so).
"""
from __future__ import annotations

import contextlib
import csv
import platform
import time
from pathlib import Path

import torch

# method -> (paper recipe, synthesizer override); every one is run with a ResNet-34 -> ResNet-18 pair
METHODS = {
    "deepinversion": ("deepinversion_cifar10_resnet34", []),
    "dafl": ("dafl_cifar10_resnet34", []),
    "dfad": ("dfad_cifar10_resnet34", []),
    "zskt": ("zskt_cifar10_wrn40_2", []),
    "fastdfkd (Fast-2)": ("fastdfkd_cifar10_resnet34", []),
    "fastdfkd (Fast-10)": ("fastdfkd_cifar10_resnet34", ["synthesizer=fastdfkd10", "synthesizer.oh=0.5",
                                                        "synthesizer.adv=1.33"]),
    "kegnet": ("kegnet_svhn_resnet14", []),
}
PAIR = ["data=cifar10", "teacher=resnet34_cifar10", "teacher.checkpoint=null",
        "teacher.random_init=true", "student=resnet18"]
FIELDS = ("method", "variant", "device", "synth_batch", "synth_images_per_s", "synth_note", "kd_batch",
          "kd_steps_per_s", "kd_images_per_s")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, n: int, device: torch.device) -> float:
    """Seconds per call of fn over n calls, after one warm-up call."""
    fn(0)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        fn(i)
    _sync(device)
    return (time.perf_counter() - t0) / n


def measure(method: str, device: torch.device, variant: str, synth_batch: int | None, kd_batch: int,
            calls: int, di_iters: int) -> dict:
    from dfkd.data import image_shape
    from dfkd.losses import KD_LOSSES
    from dfkd.runs.build import build_student, build_synthesizer
    from dfkd.runs.config import compose
    from dfkd.teachers.build import build_teacher
    from dfkd.synthesizers.base import SynthContext

    recipe, extra = METHODS[method]
    base = compose(recipe)
    over = [*PAIR, *extra]
    if base.student.arch == "tucker":
        over += ["~student.arch_kwargs", "+student.arch_kwargs={}"]  # KegNet's recipe compresses its teacher; here every method gets ResNet-18
    if synth_batch:
        over.append(f"synthesizer.batch_size={synth_batch}")
    paper_iters = int(base.synthesizer.get("iterations", 0))
    if base.synthesizer.name == "deepinversion":
        over.append(f"synthesizer.iterations={di_iters}")
    if "adversarial_after" in base.synthesizer:
        over.append("synthesizer.adversarial_after=0")  # time every loss term, the adversarial one included
    cfg = compose(recipe, over)
    name = cfg.synthesizer.name
    note = f"extrapolated from {di_iters} of {paper_iters} steps" if name == "deepinversion" else ""
    torch.manual_seed(0)
    teacher = build_teacher(cfg).to(device)
    student = build_student(cfg, teacher).classifier.to(device)
    bf16 = "bf16" in variant
    if "channels_last" in variant:
        teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
    d = cfg.data
    synth = build_synthesizer(cfg, teacher).to(device)
    synth.optimizers()
    synth.attach(teacher, student, SynthContext(num_classes=int(d.num_classes), image_shape=image_shape(d),
                                                mean=tuple(d.mean), std=tuple(d.std), device=device))
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def synth_call(_):
        with autocast():
            synth.synthesize()

    sec = _timed(synth_call, calls, device)
    batch = synth.batch_size
    images_per_s = batch / (sec / di_iters * paper_iters) if name == "deepinversion" else batch / sec
    synth.detach()

    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    x = torch.rand(kd_batch, int(d.channels), int(d.image_size), int(d.image_size), device=device)
    if "channels_last" in variant:
        x = x.contiguous(memory_format=torch.channels_last)
    s_forward = torch.compile(student) if "compile" in variant else student
    tau = float(cfg.distill.tau)

    def kd_step(_):
        with autocast():
            with torch.no_grad():
                t = teacher(x)
            s = s_forward(x)
            loss = KD_LOSSES[cfg.distill.kd_loss](s.float(), t.float(), tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    kd_sec = _timed(kd_step, calls, device)
    return {"method": method, "variant": variant, "device": device_name(device), "synth_batch": batch,
            "synth_images_per_s": float(f"{images_per_s:.3g}"), "synth_note": note, "kd_batch": kd_batch,
            "kd_steps_per_s": float(f"{1 / kd_sec:.3g}"), "kd_images_per_s": float(f"{kd_batch / kd_sec:.3g}")}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def run_throughput(out: Path, full: bool = False, command: str = "python -m dfkd.bench --throughput") -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    if gpu or full:
        variants = ["fp32", "bf16+channels_last", "bf16+channels_last+compile"] if gpu else ["fp32"]
        synth_batch, kd_batch, calls, di_iters = None, 256, 5, 10
    else:  # the short CPU version
        variants, synth_batch, kd_batch, calls, di_iters = ["fp32"], 8, 16, 1, 2
    if gpu:
        torch.backends.cudnn.benchmark = True
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        for method in METHODS:
            print(f"{method:<20} {variant:<28}", end=" ", flush=True)
            try:
                row = measure(method, device, variant, synth_batch, kd_batch, calls, di_iters)
            except Exception as e:  # a variant that does not work here (e.g. compile) is reported, not fatal
                row = {"method": method, "variant": variant, "device": device_name(device),
                       "synth_note": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"}
            rows.append(row)
            print(f"synthesis {row.get('synth_images_per_s', '-')} img/s   KD {row.get('kd_steps_per_s', '-')} "
                  f"steps/s {row.get('synth_note', '')}", flush=True)
    with (out / "throughput.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    lines = ["# dfkd throughput", "", f"- command: `{command.strip()}`", f"- device: {device_name(device)}; "
             f"torch {torch.__version__}; {'full' if gpu or full else 'short CPU'} version",
             "- ResNet-34 teacher -> ResNet-18 student, 32x32x3, random weights; each method's paper recipe", "",
             "| method | variant | synthesis batch | synthesis images/s | KD batch | KD steps/s | KD images/s | note |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['variant']} | {r.get('synth_batch', '-')} | {r.get('synth_images_per_s', '-')} | "
              f"{r.get('kd_batch', '-')} | {r.get('kd_steps_per_s', '-')} | {r.get('kd_images_per_s', '-')} | "
              f"{r.get('synth_note', '')} |" for r in rows]
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all("failed" not in r.get("synth_note", "") for r in rows) else 1
