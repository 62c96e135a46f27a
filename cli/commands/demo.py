"""`cielr demo`: the whole job on a fresh machine, offline, with tiny random-weight models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cli.commands.common import VerboseOpt

SKIMAGE_SAMPLES = [
    ("chelsea", "chelsea", "remove the animal that likes to chase mice"),
    ("coffee", "coffee", "replace the drink that keeps people awake with a glass of orange juice"),
    ("astronaut", "astronaut", "remove the object that a space traveller wears on the head"),
]

NOTE = (
    "NOTE: the tiny profile uses toy-size models with RANDOM weights, so the masks, labels, plans and edits "
    "above are meaningless; they only show the pipeline working end to end. For real edits use "
    "`--profile default` with the real weights in your Hugging Face cache (or local paths in a config file), "
    "and an LLM: in-process Qwen2.5-7B-Instruct on a GPU, or any OpenAI-compatible endpoint via "
    "CIELR_LLM__BACKEND=openai CIELR_LLM__BASE_URL=... CIELR_LLM__API_KEY=...  (see README)."
)


def write_demo_inputs(folder: Path, ciebench: str | None, n: int) -> tuple[Path, list[dict]]:
    """Real photos + instructions and a Parquet manifest in ``folder``."""
    from PIL import Image

    from cielr_core.manifest import write_manifest

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if ciebench:
        meta = json.loads((Path(ciebench) / "updated_data.json").read_text())
        for sid in sorted(meta, key=int)[:n]:
            src = Path(ciebench) / meta[sid]["image path"]
            dst = images / f"ciebench-{sid}.png"
            Image.open(src).convert("RGB").save(dst)
            rows.append({"image_id": f"ciebench-{sid}", "image_uri": str(dst), "instruction": meta[sid]["instruction"]})
    else:
        from skimage import data

        for image_id, name, instruction in SKIMAGE_SAMPLES[:n]:
            dst = images / f"{image_id}.png"
            Image.fromarray(getattr(data, name)()).convert("RGB").save(dst)
            rows.append({"image_id": image_id, "image_uri": str(dst), "instruction": instruction})
    manifest = folder / "manifest.parquet"
    write_manifest(rows, str(manifest))
    return manifest, rows


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        folder: str = typer.Option("cielr-demo", "--dir", help="where the demo writes its inputs, store and outputs"),
        ciebench: Optional[str] = typer.Option(None, "--ciebench", help="use the first N CIEBench samples from this folder"),
        n: int = typer.Option(3, "-n", help="number of images"),
        verbose: bool = VerboseOpt,
    ) -> None:
        """Make tiny models if missing, write a small manifest of real photos, run edit_dataset on the
        embedded defaults (ephemeral Prefect API, local store) and say where the outputs are. Exit codes
        as `cielr run`'s."""
        from cli.live import quiet_progress_bars

        quiet_progress_bars(verbose)
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from cielr_core.config import load_settings
        from cielr_core.tiny import FAMILIES, is_complete, make
        from cli.commands.run import run_dataset_flow, summarize_results

        console = Console(stderr=True)
        settings = load_settings(profile="tiny")
        todo = [f for f in FAMILIES if not is_complete(settings.models_dir, f)]
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
        if todo:
            with Progress(*columns, console=console) as progress:
                bar = progress.add_task("making tiny models", total=len(todo))
                for fam in todo:
                    progress.update(bar, description=f"making tiny {fam}")
                    make(fam, settings.models_dir)
                    progress.advance(bar)
        root = Path(folder).resolve()
        manifest, rows = write_demo_inputs(root, ciebench, n)
        console.print(f"manifest: {manifest} ({len(rows)} images)")
        store = str(root / "store")
        config = {"limits": {"allowed_input_roots": [str(root / "images")]}}
        from flows.edit_dataset import edit_dataset

        uri = run_dataset_flow(edit_dataset, f"edit_dataset over {len(rows)} images (tiny models, CPU)", verbose,
                               manifest_uri=str(manifest), store=store, profile="tiny", config=config)
        code = summarize_results(uri, store, "tiny", config)
        console.print(f"store (SSRs, masks, traces, edited images): {store}")
        from tasks.keys import OUTPUT_FILES, OUTPUT_LAYOUT

        console.print(f"edited images: {store}/{OUTPUT_LAYOUT}{OUTPUT_FILES['edited']} "
                      "(paths per row in results.parquet)")
        console.print(NOTE, style="yellow")
        typer.echo(uri)
        raise typer.Exit(code)
