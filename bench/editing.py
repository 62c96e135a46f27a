"""Benchmark the editing stage: time per step and peak memory per inpainter configuration.

Each configuration runs in its own subprocess (so its peak RSS is its own) on a few CIEBench
photos, with the sample's ground-truth mask as the target object. Per configuration we report the
pipeline load time, the first (warm-up) step and the median of ``--repeats`` further steps per image.

Configurations:

* ``opencv-telea`` / ``opencv-ns``: ``remove`` with the classical inpainter (CPU, no weights);
* ``tiny-64``: ``replace`` with the tiny random-weight SD inpaint pipeline, tiny profile (64 px, 2 steps);
* ``tiny-512``: the same toy pipeline at SD's 512 px working resolution, 4 steps (cost of the
  resolution, not of the real network);
* ``full-random-sd15``: the SD 1.5 inpaint architecture at full size with random weights (built in
  memory, no download), 512 px, 30 steps, fp16 -- only on a CUDA device (``--full``).

Usage::

    python bench/editing.py                    # CPU configurations, prints a markdown section
    python bench/editing.py --write            # ... and appends it to docs/benchmarks.md
    python bench/editing.py --full --write     # add the full-size GPU row when CUDA is available
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CIEBENCH = REPO.parent / "shared" / "datasets" / "ciebench"

CONFIGS: dict[str, dict] = {
    "opencv-telea": {"backend": "opencv", "op": "remove", "editing": {"opencv_method": "telea"}},
    "opencv-ns": {"backend": "opencv", "op": "remove", "editing": {"opencv_method": "ns"}},
    "tiny-64": {"backend": "diffusers", "op": "replace", "editing": {}},
    "tiny-512": {"backend": "diffusers", "op": "replace", "editing": {"resolution": 512, "steps": 4}},
    "full-random-sd15": {"backend": "diffusers", "op": "replace", "gpu": True,
                         "editing": {"resolution": 512, "steps": 30, "dtype": "float16", "device": "cuda"}},
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load_sample(sample: str, scale: float = 1.0):
    import cv2
    import numpy as np

    from cielr_core.images import decode_image_file
    from cielr_core.ssr import SSR, Scene, make_object

    rgb = decode_image_file(CIEBENCH / sample / f"{sample}.png", max_pixels=40_000_000)
    mask = np.asarray(cv2.imread(str(CIEBENCH / sample / f"{sample}_mask.png"), cv2.IMREAD_GRAYSCALE)) > 127
    if scale != 1.0:
        size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    if mask.shape != rgb.shape[:2]:
        raise SystemExit(f"sample {sample}: mask {mask.shape} vs image {rgb.shape[:2]} (pick another sample)")
    h, w = mask.shape
    ssr = SSR(image_sha256="0" * 64, width=w, height=h, objects={1: make_object(1, mask, label="target")})
    return rgb, Scene(ssr, {1: mask})


def full_random_sd15(device: str, dtype):
    """SD 1.5 inpaint architecture at full size, random weights, built in memory (no download)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from cielr_core.tiny.inpaint import write_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, in_channels=9, out_channels=4, cross_attention_dim=768,
                                attention_head_dim=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    tok_dir = Path(tempfile.mkdtemp(prefix="bench-tok-"))
    n = write_tokenizer(tok_dir)
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=n, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77,
                                        bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def worker(name: str, samples: list[str], repeats: int, models_dir: str, scale: float) -> dict:
    import numpy as np
    import torch

    from cielr_core.config import load_settings
    from cielr_core.editing import DiffusersInpainter, execute_step, make_inpainter
    from cielr_core.models import resolve_dtype
    from cielr_core.plan import EditStep
    from cielr_core.tiny import make

    spec = CONFIGS[name]
    gpu = bool(spec.get("gpu"))
    make("sd-inpaint", models_dir)
    s = load_settings(profile="tiny", overrides={"models_dir": models_dir, "editing": spec["editing"]})
    data = {sid: load_sample(sid, scale) for sid in samples}
    rss0 = rss_mb()
    t0 = time.perf_counter()
    if name == "full-random-sd15":
        dtype = resolve_dtype(s.editing.dtype, "cuda")
        pipe = full_random_sd15("cuda", dtype)

        def loader(dtype_name: str):  # the float32 fallback (NaN/black in half precision) gets its own copy
            return pipe if dtype_name == s.editing.dtype else full_random_sd15("cuda", resolve_dtype(dtype_name, "cuda"))

        inp = DiffusersInpainter("bench/full-random-sd15", device="cuda", dtype=s.editing.dtype,
                                 resolution=s.editing.resolution, steps=s.editing.steps,
                                 guidance_scale=s.editing.guidance_scale, loader=loader)
        inp.pipeline()
    else:
        inp = make_inpainter(spec["backend"], s)
    load_s = time.perf_counter() - t0
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    op = spec["op"]
    st = EditStep(subtask=f"{op} the target", operation=op, target_ids=[1],
                  prompt="a floor-standing lamp" if op != "remove" else "")
    per_image = {}
    first = None
    for sid, (rgb, scene) in data.items():
        times = []
        for k in range(repeats + (1 if first is None else 0)):
            t = time.perf_counter()
            r = execute_step(rgb, st, scene, s, seed=k, inpainter=inp)
            if gpu:
                torch.cuda.synchronize()
            dt_s = time.perf_counter() - t
            assert not r.skipped and np.array_equal(r.image[~r.mask], rgb[~r.mask])
            if first is None:
                first = dt_s
                continue
            times.append(dt_s)
        x0, y0, x1, y1 = r.crop
        per_image[sid] = {"size": f"{rgb.shape[1]}x{rgb.shape[0]}", "mask_px": int(r.mask.sum()),
                          "crop": f"{x1 - x0}x{y1 - y0}", "median_s": statistics.median(times),
                          "min_s": min(times)}
    out = {
        "config": name, "backend": inp.name, "op": op, "load_s": load_s, "first_step_s": first,
        "per_image": per_image, "rss_before_load_mb": rss0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "fp32_retries": getattr(inp, "retried_fp32", 0),
        "editing": {k: getattr(s.editing, k) for k in ("resolution", "steps", "dilate_px", "feather_px", "crop_mode",
                                                       "crop_margin", "dtype", "device")},
    }
    if gpu:
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f", {int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs visible{mem}, {platform.system()} {platform.release()}"


def markdown(results: list[dict], args, gpu_note: str | None) -> str:
    import diffusers
    import torch

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    e0 = results[0]["editing"]
    sizes = ", ".join(sorted({v["size"] for r in results for v in r["per_image"].values()}))
    lines = [
        f"\n## Editing (`bench/editing.py`) — {now}\n",
        (f"- Machine: {machine()}; torch {torch.__version__} (CPU threads "
         f"{results[0]['torch_threads'] if results else '?'}), diffusers {diffusers.__version__}, "
         f"Python {platform.python_version()}."),
        (f"- Inputs: CIEBench samples {', '.join(args.samples)} ({sizes}"
         + (f", scaled x{args.scale}" if args.scale != 1 else "") + "), the ground-truth mask as the target; "
         f"`remove` for OpenCV, `replace` for diffusers; crop mode {'on' if e0['crop_mode'] else 'off'}, "
         f"dilation {e0['dilate_px']} px, feather {e0['feather_px']} px, margin {e0['crop_margin']}; "
         f"device {e0['device']}, dtype {e0['dtype']} (GPU row: its own)."),
        (f"- Step time: median of {args.repeats} runs per image after one warm-up step (its time is listed apart); "
         "includes mask prep, crop, inpaint, paste. Load: pipeline load through the model registry. Peak RSS: the "
         "worker process's maximum resident set (Python + torch + the models), one process per configuration."),
        "- Random weights: outputs are meaningless; these measure cost, not quality.",
        f"- Load average (1 min) before / after the run: {args.load_before:.2f} / {os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} CPUs" + (" -- a shared machine, other jobs were running: expect noisy timings"
                                     if max(args.load_before, os.getloadavg()[0]) > 0.5 * (os.cpu_count() or 1)
                                     else "") + ".\n",
        "| config | backend | resolution / steps | load s | warm-up s | " + " | ".join(
            f"step s ({sid}) median (min)" for sid in args.samples) + " | crop px | peak RSS MB (+ over pre-load) |",
        "|---" * (7 + len(args.samples)) + "|",
    ]
    for r in results:
        e = r["editing"]
        res = "any / -" if r["backend"].startswith("opencv") else f"{e['resolution']} / {e['steps']}"
        cells = [f"{r['per_image'][sid]['median_s']:.3f} ({r['per_image'][sid]['min_s']:.3f})" for sid in args.samples]
        crops = ", ".join(r["per_image"][sid]["crop"] for sid in args.samples)
        mem = f"{r['peak_rss_mb']:.0f} (+{r['peak_rss_mb'] - r['rss_before_load_mb']:.0f})"
        if "cuda_peak_allocated_mb" in r:
            mem += f" (CUDA peak {r['cuda_peak_allocated_mb']:.0f})"
        lines.append(f"| {r['config']} | {r['backend']} | {res} | {r['load_s']:.2f} | {r['first_step_s']:.3f} | "
                     + " | ".join(cells) + f" | {crops} | {mem} |")
    retried = [r["config"] for r in results if r.get("fp32_retries")]
    if retried:
        lines.append(f"\nNaN/black half-precision output retried in float32 in: {', '.join(retried)}.")
    if gpu_note:
        lines.append(f"\nFull size on GPU: {gpu_note}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", nargs="+", default=["0", "1"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="resize the photos (test large inputs)")
    ap.add_argument("--configs", nargs="+", default=["opencv-telea", "opencv-ns", "tiny-64", "tiny-512"])
    ap.add_argument("--full", action="store_true", help="also run full-random-sd15 when CUDA is available")
    ap.add_argument("--models-dir", default=None, help="tiny models (default: a temp dir)")
    ap.add_argument("--write", action="store_true", help="append the section to docs/benchmarks.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.load_before = os.getloadavg()[0]
    models_dir = args.models_dir or os.path.join(tempfile.gettempdir(), "cielr-bench-models")

    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.samples, args.repeats, models_dir, args.scale)))
        return

    import torch

    configs = list(args.configs)
    gpu_note = None
    if args.full:
        if torch.cuda.is_available():
            configs.append("full-random-sd15")
        else:
            gpu_note = "not run (no GPU lent)"
    else:
        gpu_note = "not run (no GPU lent)" if not torch.cuda.is_available() else "not run (pass --full)"
    results = []
    for name in configs:
        cmd = [sys.executable, __file__, "--worker", name, "--samples", *args.samples, "--repeats", str(args.repeats),
               "--models-dir", models_dir, "--scale", str(args.scale)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=REPO)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{name}: worker failed (rc {proc.returncode})")
        r = json.loads(line[len("RESULT "):])
        print(json.dumps(r), file=sys.stderr)
        results.append(r)
    md = markdown(results, args, gpu_note)
    print(md)
    if args.write:
        with open(REPO / "docs" / "benchmarks.md", "a") as f:  # append: other sections may be added meanwhile
            f.write(md)


if __name__ == "__main__":
    main()
