"""Full-size random-weight models on a GPU: what the paper-size pipeline costs per image.

No weights can be downloaded on the benchmark machines, so this writes the real architectures at
their real sizes with random weights, in the same on-disk formats the real loaders read (the tiny
factories of ``cielr_core.tiny`` do the same at toy size):

* SAM2.1 Hiera-L (``configs/sam2.1/sam2.1_hiera_l.yaml``, 224 M parameters);
* OWLv2-L/14 at 1008 px (the google/owlv2-large-patch14-ensemble shapes; a byte-level tokenizer
  instead of CLIP's 49k BPE vocabulary, so the text embedding table is smaller);
* Depth-Anything-V2-L (DINOv2-L backbone, DPT head at 518 px);
* Stable Diffusion 1.5 inpainting (UNet 320/640/1280/1280 with 9 input channels, the SD VAE, a
  CLIP ViT-L/14-size text encoder; byte-level tokenizer);
* a Qwen2.5-7B-size causal LM (28 layers, hidden 3584, GQA 28/4 heads, MLP 18944) with the tiny
  byte-level BPE tokenizer, so its vocabulary (and LM head) is small: the figures count the 7 B
  transformer body, not the 152k-token head.

Random weights: masks, labels, plans and edits are meaningless. Under the JSON grammar a random
LM still emits schema-valid answers; the reasoning bounds (``reasoning.max_text_chars``) keep
every answer short, and the run reports the tokens it actually generated.

    python bench/gpu_fullsize.py make --out /tmp/fullsize          # write the models + config.yaml
    python bench/gpu_fullsize.py models --out /tmp/fullsize        # batch 1 vs 8 per model, JSON
    python bench/throughput.py dataset --config /tmp/fullsize/config.yaml --in-flight 1 8 ...

The lead runs these on a lent GPU machine; the figures go to docs/benchmarks.md by hand, with the
machine and date.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_sam2(out: Path) -> None:
    import sam2  # noqa: F401  (registers the package's hydra config search path)
    import torch
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    (out / "sam2").mkdir(parents=True, exist_ok=True)
    cfg = compose(config_name="configs/sam2.1/sam2.1_hiera_l.yaml")
    OmegaConf.resolve(cfg)
    torch.manual_seed(0)
    model = instantiate(cfg.model, _recursive_=True)
    torch.save({"model": model.state_dict()}, out / "sam2" / "model.pt")


def make_owlv2(out: Path) -> None:
    import torch
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from cielr_core.tiny.clip_vocab import write_clip_vocab

    d = out / "owlv2"
    d.mkdir(parents=True, exist_ok=True)
    vocab = write_clip_vocab(d)
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=16, pad_token="!")
    torch.manual_seed(0)
    cfg = Owlv2Config(
        text_config={"vocab_size": len(vocab), "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "max_position_embeddings": 16,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["!"]},
        vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                       "num_attention_heads": 16, "image_size": 1008, "patch_size": 14},
        projection_dim=768,
    )
    Owlv2ForObjectDetection(cfg).eval().save_pretrained(d)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 1008, "width": 1008}),
                   tokenizer=tok).save_pretrained(d)


def make_depth(out: Path) -> None:
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    d = out / "depth-anything"
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    backbone = Dinov2Config(image_size=518, patch_size=14, hidden_size=1024, num_hidden_layers=24,
                            num_attention_heads=16, mlp_ratio=4, out_indices=[5, 12, 18, 24],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=1024,
                              neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256, head_hidden_size=32,
                              depth_estimation_type="relative")
    DepthAnythingForDepthEstimation(cfg).eval().save_pretrained(d)
    DPTImageProcessor(do_resize=True, size={"height": 518, "width": 518}, keep_aspect_ratio=True,
                      ensure_multiple_of=14, resample=3, do_rescale=True, do_normalize=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      do_pad=False).save_pretrained(d)


def make_sd_inpaint(out: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from cielr_core.tiny.clip_vocab import write_clip_vocab

    d = out / "sd-inpaint"
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=9, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                        layers_per_block=2, latent_channels=4, sample_size=512)
    tok_dir = out / "_sd_tok"
    vocab = write_clip_vocab(tok_dir)
    tok = CLIPTokenizer(vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"), model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        projection_dim=768, bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1,
                                        pad_token_id=len(vocab) - 1))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    StableDiffusionInpaintPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).save_pretrained(d)


def make_llm(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from cielr_core.tiny import llm as tiny_llm

    d = out / "qwen2-7b-size"
    tiny_llm.make(d)  # the tokenizer (and a toy model, replaced below)
    tok = AutoTokenizer.from_pretrained(d)
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                      rope_theta=1_000_000.0, tie_word_embeddings=False, eos_token_id=eos, pad_token_id=pad,
                      bos_token_id=None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False)
    for p in d.glob("model*.safetensors"):
        p.unlink()
    model.save_pretrained(d, safe_serialization=True, max_shard_size="20GB")


def make_ip2p(out: Path) -> None:
    """Instruction editing (global / transform steps) stays the TOY InstructPix2Pix: the benchmark's
    instructions are object edits, but a run checks every model its plans could need up front."""
    from cielr_core.tiny import make

    make("ip2p", out)


def write_config(out: Path, device: str) -> Path:
    import yaml

    cfg = {
        "perception": {
            "sam2": {"model": {"id": "random/sam2.1-hiera-large", "path": str(out / "sam2" / "model.pt")},
                     "config_name": "configs/sam2.1/sam2.1_hiera_l.yaml", "points_per_side": 16,
                     "points_per_batch": 128, "crop_n_layers": 1, "pred_iou_thresh": 0.0,
                     "stability_score_thresh": 0.0},
            "owlv2": {"model": {"id": "random/owlv2-large-patch14", "path": str(out / "owlv2")}},
            "depth": {"model": {"id": "random/depth-anything-v2-large", "path": str(out / "depth-anything")}},
            "device": device, "dtype": "auto",
        },
        "llm": {"backend": "transformers", "device": device, "dtype": "bfloat16", "max_new_tokens": 256,
                "model": {"id": "random/qwen2.5-7b-size", "path": str(out / "qwen2-7b-size")}},
        "reasoning": {"max_text_chars": 32, "max_subtasks": 2, "sandbox": {"isolation": "python-only"}},
        "editing": {"backend": "diffusers", "remove_backend": "diffusers", "steps": 30, "resolution": 512,
                    "model": {"id": "random/sd-1.5-inpainting", "path": str(out / "sd-inpaint")},
                    "instruct": {"model": {"id": "tiny/ip2p", "path": str(out / "ip2p")}, "steps": 2,
                                 "resolution": 64},
                    "verify": {"enabled": False}, "device": device, "dtype": "auto"},
    }
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cmd_make(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    for name, fn in [("sam2", make_sam2), ("owlv2", make_owlv2), ("depth", make_depth),
                     ("sd_inpaint", make_sd_inpaint), ("llm", make_llm), ("ip2p", make_ip2p)]:
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        fn(out)
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"made {name} in {times[name]} s", flush=True)
    print(json.dumps({"config": str(write_config(out, args.device)), "make_seconds": times}))


def _timed(fn, repeat: int) -> float:
    import torch

    fn()  # warm-up
    torch.cuda.synchronize()
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        t.append(time.perf_counter() - t0)
    return sorted(t)[len(t) // 2]


def cmd_models(args: argparse.Namespace) -> None:
    """Each model's forward at batch 1 and batch B on the GPU: seconds per call and per image."""
    import numpy as np
    import torch

    out = Path(args.out)
    dev = "cuda"
    res: dict[str, dict] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    rng = np.random.default_rng(0)
    B = args.batch

    def record(name: str, fn_for_batch) -> None:
        row = {}
        for b in (1, B):
            torch.cuda.reset_peak_memory_stats()
            s = _timed(fn_for_batch(b), args.repeat)
            row[f"b{b}_s_per_call"] = round(s, 4)
            row[f"b{b}_s_per_image"] = round(s / b, 4)
            row[f"b{b}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        row["speedup_per_image"] = round(row["b1_s_per_image"] / row[f"b{B}_s_per_image"], 2)
        res[name] = row
        print(name, json.dumps(row), flush=True)

    with torch.inference_mode():
        # SAM2-L image encoder at 1024 (what set_image / set_image_batch run)
        from sam2.build_sam import build_sam2

        sam = build_sam2("configs/sam2.1/sam2.1_hiera_l.yaml", str(out / "sam2" / "model.pt"), device=dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            record("sam2_l_image_encoder_1024",
                   lambda b: (lambda x=torch.randn(b, 3, 1024, 1024, device=dev): sam.image_encoder(x)))
        del sam
        # OWLv2-L at 1008 with 1,203 LVIS queries (text embedded once, as the detector caches it)
        from transformers import Owlv2ForObjectDetection

        owl = Owlv2ForObjectDetection.from_pretrained(out / "owlv2", dtype=torch.float16).to(dev).eval()
        ids = torch.randint(0, 200, (1203, 16), device=dev)
        q = owl.owlv2.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids))
        q = getattr(q, "pooler_output", q)

        def owl_fn(b):
            px = torch.randn(b, 3, 1008, 1008, device=dev, dtype=torch.float16)

            def f():
                feats = owl.image_embedder(pixel_values=px)[0]
                bsz, h, w, d = feats.shape
                feats = feats.reshape(bsz, h * w, d)
                owl.class_predictor(feats, q[None].expand(bsz, -1, -1).to(feats.dtype), None)
                owl.box_predictor(feats, feature_map=feats.reshape(bsz, h, w, d))
            return f

        record("owlv2_l_1008_lvis", owl_fn)
        del owl
        from transformers import DepthAnythingForDepthEstimation

        depth = DepthAnythingForDepthEstimation.from_pretrained(out / "depth-anything", dtype=torch.float16).to(dev)
        record("depth_anything_v2_l_518",
               lambda b: (lambda x=torch.randn(b, 3, 518, 686, device=dev, dtype=torch.float16): depth(pixel_values=x)))
        del depth
        from diffusers import StableDiffusionInpaintPipeline
        from PIL import Image

        pipe = StableDiffusionInpaintPipeline.from_pretrained(out / "sd-inpaint", dtype=torch.float16).to(dev)
        pipe.set_progress_bar_config(disable=True)
        img = Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8))
        mask = Image.fromarray((rng.random((512, 512)) > 0.5).astype(np.uint8) * 255)
        record("sd15_inpaint_512_30steps",
               lambda b: (lambda: pipe(prompt=["a cup"] * b, image=[img] * b, mask_image=[mask] * b,
                                       num_inference_steps=30, output_type="np")))
        del pipe
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(out / "qwen2-7b-size", dtype=torch.bfloat16).to(dev).eval()

        def lm_fn(b):
            ids = torch.randint(3, 500, (b, 1500), device=dev)

            def f():
                lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, min_new_tokens=64,
                            do_sample=False)
            return f

        record("qwen2_7b_size_prefill1500_decode64", lm_fn)
    print(json.dumps(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--device", default="cuda")
    m.add_argument("--only", nargs="*")
    m.set_defaults(fn=cmd_make)
    b = sub.add_parser("models")
    b.add_argument("--out", required=True)
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--json")
    b.set_defaults(fn=cmd_models)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
