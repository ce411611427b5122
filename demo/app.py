#!/usr/bin/env python
"""GLIGEN web demo (Gradio): draw boxes, type phrases, generate or inpaint.

    python demo/app.py                    # released checkpoints, fetched from the Hugging Face Hub on first use
    python demo/app.py --demo             # offline, tiny RANDOM-weight checkpoints (``make web-demo``)
    python demo/app.py --ckpt my.pth --device cuda --dtype fp16

The page adapts to the chosen checkpoint's mode (read from the checkpoint, as ``gligen_inference.py``):
boxes + phrases, boxes + reference images (+ a whole-image style image), keypoints (17 draggable
points per person), spatial maps (HED / canny / depth / normal / semantic; canny can be computed
from a photo) and inpainting inside boxes drawn on an uploaded image. Height and width (multiples of 64,
256..1024) apply to every mode but the spatial maps, which generate 512x512 only. Every request becomes a
layout entry (:mod:`demo.state`), is validated by :meth:`Generation.from_dict` (the CLI's
messages) and runs through :class:`ldm.inference.pipeline.Runner`; the ``<n>.json`` it writes is
offered for download and is what ``gligen_inference.py --layout`` takes.

Scripts call the ``generate`` endpoint with a layout JSON string (one generation; its ``settings`` may
set ``height`` / ``width``)::

    from gradio_client import Client
    images, record = Client("http://127.0.0.1:7860/").predict(layout_json, api_name="/generate")

One model is in memory at a time and requests are queued: two samplings never run at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import threading
import time
import traceback
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from ldm.checkpoint import CheckpointError  # noqa: E402
from ldm.cli import guard, one_line  # noqa: E402
from ldm.inference.checkpoints import HUB_FILENAME, RELEASED, RELEASED_MODES  # noqa: E402
from ldm.inference.errors import LayoutError, ResolveError  # noqa: E402
from ldm.inference.layout import Generation, load_layout  # noqa: E402
from ldm.inference.modes import SPATIAL_LAYOUT_KEYS, Mode  # noqa: E402
from ldm.inference.pipeline import DEFAULT_NEGATIVE_PROMPT, Runner, Settings  # noqa: E402

from demo import state  # noqa: E402

DEMO_WARNING = ("**Demo mode: the checkpoints have RANDOM weights** (tiny models built locally by `make demo`), "
                "so the images are noise. Run `python demo/app.py` for the released checkpoints.")
REQUEST_SETTINGS = ("sampler", "steps", "guidance_scale", "negative_prompt", "batch_size", "height", "width")
RELEASED_SIZE = (512, 64)  # the released checkpoints' output side, and the multiple sizes need (VAE 8x, UNet 8x)
SIZE_INFO = "output pixels"
MAP_LABELS = {"hed": "HED edge map", "canny": "Canny edge map", "depth": "Depth map", "normal": "Surface normal map",
              "sem": "Semantic map (a label PNG: ADE20K class ids 0..150 per pixel)"}
MODEL_QUEUE = "model"  # every event that loads a model or samples shares this queue (one at a time)


# ====================================================================== model service (no UI)
class Service:
    """Runs layout entries on one :class:`Runner` (one checkpoint in memory), one request at a time.

    Args:
        base: device, dtype, CLIP, SD first conv and output folder of every request.
        known_modes: checkpoint choice -> :class:`Mode` known without opening the file.
        defaults: Mode -> checkpoint used when a request names none (demo mode: the tiny ones).
        allowed_roots: folders whose files an API layout may read (the server's files are private).
    """

    def __init__(self, base: Settings, known_modes: dict, defaults: dict | None = None, allowed_roots=()):
        self.base = base
        self.runner = Runner(base)
        self.known_modes = dict(known_modes)
        self.defaults = dict(defaults or {})
        self.allowed_roots = [os.path.realpath(r) for r in allowed_roots]
        self.lock = threading.Lock()

    def default_checkpoint(self, mode: Mode) -> str | None:
        """The checkpoint for a request of ``mode`` that names none (None: the released one)."""
        if mode in self.defaults:
            return self.defaults[mode]
        if self.defaults:  # demo mode: only the local tiny checkpoints
            raise LayoutError(f"no demo checkpoint for {mode.name}; demo checkpoints: "
                              + ", ".join(m.name for m in self.defaults))
        return None

    def mode_of(self, ckpt: str) -> Mode:
        """Mode of a checkpoint choice (released ones are known; others are loaded, becoming the model in memory)."""
        if ckpt in self.known_modes:
            return self.known_modes[ckpt]
        with self.lock:
            self.runner.settings = self.base
            _, mode = self.runner.load(self.runner.checkpoint_for(Generation(prompt="", ckpt=ckpt)))
        self.known_modes[ckpt] = mode
        return mode

    def check_readable(self, entry: dict, base_dir: str) -> None:
        """Files named by an API layout entry must lie under the allowed folders (checked before any is opened)."""
        if not isinstance(entry, dict):
            return  # Generation.from_dict says what is wrong
        paths = [entry.get("input_image"), *[entry.get(k) for k in SPATIAL_LAYOUT_KEYS.values()]]
        if isinstance(entry.get("images"), (list, tuple)):
            paths += list(entry["images"])
        for p in paths:
            if not isinstance(p, str) or not p:
                continue
            near = os.path.join(base_dir, os.path.expanduser(p))  # relative paths: next to the layout, then CWD
            real = os.path.realpath(near if os.path.exists(near) else os.path.expanduser(p))
            if not any(real == r or real.startswith(r + os.sep) for r in self.allowed_roots):
                raise LayoutError(f"{p} lies outside the folders this server may read (start it with --allowed-path)")

    def settings_for(self, options: dict, ckpt: str | None) -> Settings:
        unknown = [k for k in options if k not in Settings.FILE_KEYS]
        if unknown:
            raise LayoutError(f"unknown key {unknown[0]!r} in the layout's settings "
                              f"(allowed: {', '.join(Settings.FILE_KEYS)})")
        chosen = {k: v for k, v in options.items() if k in REQUEST_SETTINGS and v is not None}
        return dataclasses.replace(self.base, **chosen, ckpt=ckpt, seed=None).validate()

    def run(self, entry: dict, options: dict, ckpt: str | None = None, base_dir: str | None = None,
            notify=lambda desc: None):
        """Validate ``entry``, generate and save -> (Result, written paths). Inputs are copied next to the outputs."""
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        gen = Generation.from_dict(entry, base_dir, options.get("box_format") or "xyxy")
        ckpt = ckpt or gen.ckpt or self.default_checkpoint(gen.implied_mode())
        settings = self.settings_for(options, ckpt)
        run_dir = os.path.join(settings.folder, run_id)
        final = gen.to_entry()
        final.pop("ckpt", None)
        final["save_folder_name"] = run_id
        copy = _Copier(os.path.join(run_dir, "inputs"))
        for key in ("input_image", *SPATIAL_LAYOUT_KEYS.values()):
            if final.get(key):
                final[key] = copy(final[key])
        if final.get("images"):
            final["images"] = [copy(p) if p else None for p in final["images"]]
        gen = Generation.from_dict(final, None, "xyxy")
        with self.lock:
            if ckpt and ckpt in RELEASED_MODES and not _in_hub_cache(ckpt):
                notify(f"downloading {ckpt} from the Hugging Face Hub (first use, about 2 GB)...")
            else:
                notify("loading the checkpoint...")
            self.runner.settings = settings
            result = self.runner.generate(gen)
            paths = self.runner.save(result)
        return result, paths

    def run_layout_text(self, text: str, outdir: str, notify=lambda desc: None):
        """The ``generate`` endpoint: a layout JSON string holding one generation."""
        if not isinstance(text, str) or not text.strip():
            raise LayoutError("empty layout: pass a JSON layout (the gligen_inference.py --layout format)")
        os.makedirs(outdir, exist_ok=True)
        path = os.path.join(outdir, f"request-{uuid.uuid4().hex[:8]}.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            from ldm.inference.layout import read_layout_file

            options, entries = read_layout_file(path)
            if len(entries) != 1:
                raise LayoutError(f"the generate endpoint takes one generation, got {len(entries)}")
            self.check_readable(entries[0], outdir)
            _, (gen,) = load_layout(path, options.get("box_format"))
        finally:
            os.remove(path)
        options = {k: v for k, v in options.items() if k != "box_format"}  # to_entry() boxes are normalised xyxy
        return self.run(gen.to_entry(), options, gen.ckpt, None, notify)


class _Copier:
    """Copies input files into a run's ``inputs/`` folder (the saved layout then points at lasting copies)."""

    def __init__(self, folder: str):
        self.folder, self.done = folder, {}

    def __call__(self, path: str) -> str:
        if path not in self.done:
            os.makedirs(self.folder, exist_ok=True)
            name = f"{len(self.done)}_{os.path.basename(path)}"
            self.done[path] = shutil.copyfile(path, os.path.join(self.folder, name))
        return self.done[path]


def _in_hub_cache(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, HUB_FILENAME), str)
    except Exception:  # noqa: BLE001 - only decides whether to say "downloading"
        return False


def result_gallery(paths: list[str]) -> list[tuple[str, str]]:
    """Runner.save's paths -> gallery items: each image, then its annotated copy."""
    pngs = [p for p in paths if p.endswith(".png")]
    return [(p, f"#{k // 2}" + (" annotated" if "_annotated" in p else "")) for k, p in enumerate(pngs)]


# ====================================================================== checkpoints offered
def checkpoint_choices(args) -> tuple[list, dict, dict, str]:
    """(dropdown choices, known modes, default checkpoint per mode, initial choice)."""
    choices, modes, defaults = [], {}, {}
    if args.demo:
        from ldm.inference.demo import CHECKPOINTS, build_assets
        from ldm.tiny import write_tiny_checkpoint

        build_assets(args.cache)
        extra = {"gligen_canny.pth": ("canny", False)}
        for name, (family, inpaint) in {**CHECKPOINTS, **extra}.items():
            path = os.path.join(args.cache, name)
            if not os.path.isfile(path):
                write_tiny_checkpoint(path, family, inpaint=inpaint, seed=0)
            mode = Mode(family, inpaint)
            choices.append((f"demo (random weights): {mode.name}", path))
            modes[path], defaults[mode] = mode, path
    else:
        for (family, inpaint), (repo, local) in RELEASED.items():
            local_path = os.path.join(args.ckpt_dir, local) if args.ckpt_dir else None
            value = local_path if local_path and os.path.isfile(local_path) else repo
            choices.append((f"{Mode(family, inpaint).name} ({value})", value))
            modes[value] = Mode(family, inpaint)
    for path in args.ckpt or []:
        choices.insert(0, (f"local: {os.path.basename(path)}", os.path.abspath(path)))
    return choices, modes, defaults, choices[0][1]


def native_size(service: Service, args, defaults: dict) -> tuple[int, int]:
    """(output side in pixels, the multiple sizes need) of the offered checkpoints: SD-1.x's (512, 64), or
    with ``--demo`` the tiny checkpoints' own (read from one of them)."""
    if not args.demo:
        return RELEASED_SIZE
    models, _ = service.runner.load(next(iter(defaults.values())))
    step = models.autoencoder.downsample_factor * 2 ** (len(models.model.channel_mult) - 1)
    return models.image_resolution, step


# ====================================================================== the page
def build_app(args):
    """-> (gr.Blocks, Service, launch keyword arguments)."""
    import gradio as gr
    from gradio_image_annotation import image_annotator
    from PIL import Image

    from ldm.inference.visualize import PALETTE

    outdir = os.path.abspath(args.outdir)
    os.makedirs(outdir, exist_ok=True)
    choices, modes, defaults, initial = checkpoint_choices(args)
    clip = args.clip or (os.path.join(args.cache, "tiny_clip") if args.demo else None)
    sd_conv = args.sd_first_conv or (os.path.join(args.cache, "tiny_sd.ckpt") if args.demo else None)
    base = Settings.merged(None, device=args.device or ("cpu" if args.demo else None), dtype=args.dtype, clip=clip,
                           sd_first_conv=sd_conv, folder=outdir, progress=True)
    roots = [ROOT, os.getcwd(), outdir, _gradio_temp_dir(), *(args.allowed_path or [])]
    service = Service(base, modes, defaults, roots)

    native, size_step = native_size(service, args, defaults)
    sizes = state.size_choices(native, size_step)

    def blank(height, width) -> str:
        """The blank drawing canvas (a PNG under outdir) with the aspect of a ``height`` x ``width`` output."""
        w, h = state.canvas_size(height or native, width or native)
        path = os.path.join(outdir, f"canvas-{w}x{h}.png")
        if not os.path.isfile(path):
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp.png"
            Image.new("RGB", (w, h), (250, 250, 250)).save(tmp)
            os.replace(tmp, path)
        return path

    def bg(mode: Mode, inpaint_image, height, width):
        return inpaint_image if mode.inpaint and inpaint_image else blank(height, width)

    def keypoint_canvas(persons, height, width):
        return {"image": blank(height, width),
                "boxes": colored(state.keypoint_boxes(persons, state.canvas_size(height or native, width or native)))}

    def size_controls(mode: Mode):
        """Height and width: free for box / keypoint / inpainting modes, fixed (with the reason) for spatial maps.
        One update dict per control: Gradio consumes an update's keys, so a shared one reaches only the first."""
        if mode.is_spatial:
            info = f"spatial-map checkpoints generate {native}x{native} only (fixed-size condition latent)"
            return [gr.update(value=native, interactive=False, info=info) for _ in "hw"]
        return [gr.update(interactive=True, info=SIZE_INFO) for _ in "hw"]

    def rebase(annotation, image):
        """Same boxes (normalised) on a new background image."""
        boxes = state.normalised_boxes(annotation)
        labels = [b.get("label", "") for b in (annotation or {}).get("boxes") or []]
        return {"image": image, "boxes": state.annotation_boxes(boxes, state.image_size(image), labels)}

    def colored(boxes):
        for b in boxes:
            person = int(b["label"].split()[0][1:]) - 1 if b.get("label", "").startswith("p") else 0
            b["color"] = PALETTE[person % len(PALETTE)]
        return boxes

    def visibility(mode: Mode):
        return [gr.update(visible=mode.is_box), gr.update(visible=mode.family == "text_image"),
                gr.update(visible=mode.family == "keypoint"), gr.update(visible=mode.is_spatial),
                gr.update(visible=mode.family == "canny"), gr.update(visible=mode.inpaint),
                gr.update(label=MAP_LABELS.get(mode.family, "condition map"))]

    def guarded(fn):
        """Bad input or a missing model: its one-line message; anything else: logged, one line shown."""
        def wrapper(*a, **k):
            try:
                return fn(*a, **k)
            except (LayoutError, ResolveError, CheckpointError, ValueError) as e:
                raise gr.Error(one_line(e), print_exception=False) from None
            except gr.Error:
                raise
            except Exception as e:  # noqa: BLE001 - the app keeps serving
                traceback.print_exc()
                raise gr.Error(f"{type(e).__name__}: {one_line(e)}", print_exception=False) from None
        wrapper.__name__ = fn.__name__
        return wrapper

    initial_mode = modes.get(initial) or service.mode_of(initial)
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    css = "#demo-warning {background: #fff3cd; padding: 8px 12px; border-radius: 6px;} footer {display: none !important}"

    with gr.Blocks(title="GLIGEN demo") as page:
        gr.Markdown("## GLIGEN: grounded text-to-image generation\nDraw boxes, name them, generate. "
                    "The controls follow the checkpoint's mode.")
        if args.demo:
            gr.Markdown(DEMO_WARNING, elem_id="demo-warning")
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    ckpt = gr.Dropdown(choices, value=initial, label="Checkpoint", allow_custom_value=True, scale=3, elem_id="ckpt",
                                       info="released checkpoints download on first use; or type a local file path")
                    mode_md = gr.Markdown(f"**Mode:** {initial_mode.name}", elem_id="mode")
                prompt = gr.Textbox(label="Prompt", placeholder="a teddy bear sitting next to a bird", elem_id="prompt")
                with gr.Row():
                    spatial = initial_mode.is_spatial
                    height = gr.Dropdown(sizes, value=native, label="Height", elem_id="height", interactive=not spatial,
                                         info=SIZE_INFO)
                    width = gr.Dropdown(sizes, value=native, label="Width", elem_id="width", interactive=not spatial,
                                        info=SIZE_INFO)
                with gr.Group(visible=initial_mode.inpaint) as inpaint_group:
                    inpaint_image = gr.Image(type="filepath", sources=["upload"], height=180, elem_id="inpaint-image",
                                             label="Image to inpaint (then draw boxes on it: they are regenerated)")
                with gr.Group(visible=initial_mode.is_box) as box_group:
                    canvas = image_annotator(value={"image": bg(initial_mode, None, native, native), "boxes": []},
                                             image_type="numpy",
                                             label="Boxes: 'Create box' (C) and drag; 'Drag boxes' (D) moves and resizes",
                                             disable_edit_boxes=True, sources=[], show_clear_button=False,
                                             show_remove_button=True, show_download_button=False, height=360,
                                             elem_id="canvas")
                    table = gr.Dataframe(headers=state.TABLE_HEADERS, datatype=["str", "str", "str"], value=[],
                                         type="array", interactive=True, label="Phrases: one row per box",
                                         elem_id="phrases")
                    with gr.Row(visible=initial_mode.family == "text_image") as refs_row:
                        refs = gr.File(file_count="multiple", file_types=["image"], elem_id="refs",
                                       label="Reference images (name one per box in the table's last column)")
                        style = gr.Image(type="filepath", sources=["upload"], height=160, elem_id="style",
                                         label="Style image (grounds the whole image)")
                with gr.Group(visible=initial_mode.family == "keypoint") as kp_group:
                    kp_canvas = image_annotator(value={"image": blank(native, native), "boxes": []}, image_type="numpy",
                                                label="Keypoints: 'Add person', then 'Drag boxes' (D) to move points; "
                                                      "remove a point to mark it absent",
                                                disable_edit_boxes=True, sources=[], show_clear_button=False,
                                                show_remove_button=True, show_download_button=False, box_min_size=4,
                                                handle_size=3, height=420, elem_id="keypoints")
                    with gr.Row():
                        add_person = gr.Button("Add person")
                        clear_persons = gr.Button("Remove all persons")
                with gr.Group(visible=initial_mode.is_spatial) as spatial_group:
                    condition = gr.Image(type="filepath", sources=["upload"], height=200, image_mode=None,
                                         label=MAP_LABELS.get(initial_mode.family, "condition map"),
                                         elem_id="condition")
                    with gr.Row(visible=initial_mode.family == "canny") as canny_row:
                        photo = gr.Image(type="filepath", sources=["upload"], height=160, label="...or a photo")
                        canny_button = gr.Button("Compute canny edges from the photo")
                negative = gr.Textbox(label="Negative prompt", value=DEFAULT_NEGATIVE_PROMPT, lines=1)
                with gr.Accordion("Sampling", open=False):
                    with gr.Row():
                        beta = gr.Slider(0, 1, value=0.3, step=0.05, elem_id="beta",
                                         label="Scheduled sampling β: fraction of steps with grounding on")
                        guidance = gr.Slider(1, 20, value=7.5, step=0.5, label="Guidance scale")
                    with gr.Row():
                        steps = gr.Slider(1, 250, value=50, step=1, label="Steps")
                        sampler = gr.Radio(["plms", "ddim"], value="plms", label="Sampler")
                    with gr.Row():
                        seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="seed")
                        n_images = gr.Slider(1, 8, value=2, step=1, label="Number of images")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Row():
                    layout_file = gr.File(file_types=[".json", ".yaml", ".yml"], label="Load a layout (JSON / YAML)",
                                          elem_id="layout-upload", height=120)
                    download = gr.DownloadButton("Download layout JSON", interactive=False, elem_id="download")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Results: image, annotated", columns=2, height=520, elem_id="gallery")
                seed_used = gr.Textbox(label="Seed used", interactive=False, elem_id="seed-used")
        groups = [box_group, refs_row, kp_group, spatial_group, canny_row, inpaint_group, condition]

        # ---------------------------------------------------------- checkpoint -> mode -> controls
        @guarded
        def on_checkpoint(choice, annotation, image, height_, width_):
            mode = service.mode_of(choice)
            if mode.is_spatial:
                height_ = width_ = native
            return [f"**Mode:** {mode.name}", *visibility(mode), rebase(annotation, bg(mode, image, height_, width_)),
                    *size_controls(mode)]

        ckpt.change(on_checkpoint, [ckpt, canvas, inpaint_image, height, width],
                    [mode_md, *groups, canvas, height, width], concurrency_id=MODEL_QUEUE, api_visibility="private")

        def on_inpaint_image(image, annotation, height_, width_):
            return rebase(annotation, image or blank(height_, width_))

        for event in (inpaint_image.upload, inpaint_image.clear):
            event(on_inpaint_image, [inpaint_image, canvas, height, width], canvas, api_visibility="private")

        @guarded
        def on_size(choice, height_, width_, annotation, kp_annotation, image):
            """A new output size: the canvases take its aspect; boxes and points keep their relative places."""
            mode = service.mode_of(choice)
            persons = state.persons_from_annotation(kp_annotation)
            return rebase(annotation, bg(mode, image, height_, width_)), keypoint_canvas(persons, height_, width_)

        for control in (height, width):
            control.change(on_size, [ckpt, height, width, canvas, kp_canvas, inpaint_image], [canvas, kp_canvas],
                           api_visibility="private")

        # ---------------------------------------------------------- boxes <-> table, references, keypoints, canny
        def on_boxes(annotation, rows):
            labels = [b.get("label", "") for b in (annotation or {}).get("boxes") or []]
            return state.sync_rows(state.normalised_boxes(annotation), rows, labels)

        canvas.change(on_boxes, [canvas, table], table, api_visibility="private")

        def on_refs(files, rows):
            names = [os.path.basename(f) for f in files or []]
            used = {str(r[2]) for r in rows or [] if len(r) > 2 and r[2]}
            free = iter(n for n in names if n not in used)
            return [[r[0], r[1], (r[2] if len(r) > 2 and r[2] else next(free, ""))] for r in rows or []]

        refs.upload(on_refs, [refs, table], table, api_visibility="private")

        def on_add_person(annotation, height_, width_):
            persons = state.persons_from_annotation(annotation)
            persons.append(state.pose_person(len(persons)))
            return keypoint_canvas(persons, height_, width_)

        add_person.click(guarded(on_add_person), [kp_canvas, height, width], kp_canvas, api_visibility="private")
        clear_persons.click(lambda h, w: keypoint_canvas([], h, w), [height, width], kp_canvas,
                            api_visibility="private")

        @guarded
        def on_canny(path):
            if not path:
                raise LayoutError("upload a photo first")
            out = os.path.join(outdir, f"canny-{uuid.uuid4().hex[:8]}.png")
            state.canny_map(path).save(out)
            return out

        canny_button.click(on_canny, photo, condition, api_visibility="private")

        # ---------------------------------------------------------- generate
        @guarded
        def on_generate(choice, prompt_, annotation, rows, ref_files, style_, kp_annotation, condition_, image,
                        negative_, beta_, guidance_, steps_, sampler_, seed_, n_, height_, width_,
                        progress=gr.Progress(track_tqdm=True)):
            mode = service.mode_of(choice)
            entry = state.entry_from_ui(
                mode.family, prompt=prompt_, boxes=state.normalised_boxes(annotation), rows=rows or [],
                reference_files=list(ref_files or []), style_image=style_,
                persons=state.persons_from_annotation(kp_annotation) if mode.family == "keypoint" else [],
                condition=condition_, input_image=image if mode.inpaint else None, beta=beta_,
                seed=None if seed_ is None else int(seed_))
            options = state.options_from_ui(sampler=sampler_, steps=steps_, guidance_scale=guidance_, batch_size=n_,
                                            negative_prompt=negative_, height=height_, width=width_)
            result, paths = service.run(entry, options, choice, notify=lambda d: progress(0, desc=d))
            record = next(p for p in paths if p.endswith(".json"))
            return result_gallery(paths), str(result.seed), gr.update(value=record, interactive=True)

        generate.click(on_generate, [ckpt, prompt, canvas, table, refs, style, kp_canvas, condition, inpaint_image,
                                     negative, beta, guidance, steps, sampler, seed, n_images, height, width],
                       [gallery, seed_used, download], concurrency_id=MODEL_QUEUE, api_visibility="private")

        # ---------------------------------------------------------- layout upload -> page state
        @guarded
        def on_layout(path):
            if not path:
                return [gr.update()] * 21
            settings, gens = load_layout(path)
            gen = gens[0]
            copy = _Copier(os.path.join(outdir, "restored-" + uuid.uuid4().hex[:8]))  # files the page may serve
            gen = dataclasses.replace(gen, input_image=gen.input_image and copy(gen.input_image),
                                      images=[p and copy(p) for p in gen.images],
                                      condition={k: copy(v) for k, v in gen.condition.items()})
            if len(gens) > 1:
                gr.Warning(f"the layout holds {len(gens)} generations; the first is shown")
            mode = gen.implied_mode()
            choice = gen.ckpt or service.default_checkpoint(mode) or next(
                r for r, m in RELEASED_MODES.items() if m == mode)
            style_img = None
            boxes, phrases, images = list(gen.boxes), list(gen.phrases), list(gen.images)
            if boxes and boxes[-1] == state.STYLE_BOX and images and images[-1] and not (phrases and phrases[-1]):
                style_img = images[-1]
                boxes, phrases, images = boxes[:-1], phrases[:-1], images[:-1]
            height_, width_ = settings.get("height") or native, settings.get("width") or native
            image = bg(mode, gen.input_image, height_, width_)
            rows = [[str(i + 1), (phrases[i] if i < len(phrases) and phrases[i] else ""),
                     (os.path.basename(images[i]) if i < len(images) and images[i] else "")] for i in range(len(boxes))]
            annotation = {"image": image, "boxes": state.annotation_boxes(boxes, state.image_size(image),
                                                                          [r[1] for r in rows])}
            kp = keypoint_canvas(gen.keypoints, height_, width_)
            negative_ = gen.negative_prompt if gen.negative_prompt is not None else settings.get("negative_prompt")
            sampler_ = settings.get("sampler", "plms")
            return [gr.update(choices=choices + ([] if any(c[1] == choice for c in choices) else [(choice, choice)]),
                              value=choice),
                    gen.prompt, gen.input_image, annotation, rows, [p for p in images if p] or None, style_img, kp,
                    next(iter(gen.condition.values()), None),
                    negative_ if negative_ is not None else DEFAULT_NEGATIVE_PROMPT,
                    gen.alpha_type[0] if gen.alpha_type else 1.0, settings.get("guidance_scale", 7.5),
                    settings.get("steps") or (50 if sampler_ == "plms" else 250), sampler_,
                    gen.seed if gen.seed is not None else -1, min(int(settings.get("batch_size", 2)), 8),
                    *[gr.update(choices=sorted({*sizes, v}), value=v) for v in (height_, width_)],
                    *[gr.update()] * 3]

        layout_file.upload(on_layout, layout_file,
                           [ckpt, prompt, inpaint_image, canvas, table, refs, style, kp_canvas, condition, negative,
                            beta, guidance, steps, sampler, seed, n_images, height, width, gallery, seed_used, download],
                           api_visibility="private")

        # ---------------------------------------------------------- the scripting endpoint
        api_layout = gr.Textbox(visible="hidden", label="layout JSON")
        api_images = gr.Gallery(visible="hidden", label="images")
        api_record = gr.Textbox(visible="hidden", label="saved layout JSON")

        @guarded
        def generate_endpoint(layout_json: str, progress=gr.Progress(track_tqdm=True)):
            """Generate from a layout JSON string (the gligen_inference.py --layout format, one generation).
            Returns the images and the saved layout (seed included)."""
            result, paths = service.run_layout_text(layout_json, os.path.join(outdir, "requests"),
                                                    notify=lambda d: progress(0, desc=d))
            record = next(p for p in paths if p.endswith(".json"))
            with open(record, encoding="utf-8") as f:
                text = f.read()
            return [p for p in paths if p.endswith(".png") and "_annotated" not in p], text

        api_layout.submit(generate_endpoint, api_layout, [api_images, api_record], api_name="generate",
                          concurrency_id=MODEL_QUEUE)

    page.queue(default_concurrency_limit=1)
    launch = dict(server_name=args.host, server_port=args.port, theme=theme, css=css, allowed_paths=[outdir],
                  ssr_mode=False, show_error=True)
    return page, service, launch


def _gradio_temp_dir() -> str:
    import tempfile

    return os.environ.get("GRADIO_TEMP_DIR") or os.path.join(tempfile.gettempdir(), "gradio")


def build_parser() -> argparse.ArgumentParser:
    from ldm.inference.demo import CACHE
    from ldm.inference.pipeline import DEVICES, DTYPES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", action="store_true", help="offline: tiny random-weight checkpoints (built if missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", choices=DEVICES, default=None, help="default auto (cpu with --demo)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default fp32")
    p.add_argument("--ckpt", action="append", help="a local checkpoint to offer (repeatable)")
    p.add_argument("--ckpt_dir", "--ckpt-dir", dest="ckpt_dir", default=None,
                   help="folder with the original's local checkpoint names, used instead of downloading")
    p.add_argument("--clip", default=None, help="CLIP model for phrase / image features (default openai/clip-vit-large-patch14)")
    p.add_argument("--sd_first_conv", "--sd-first-conv", dest="sd_first_conv", default=None,
                   help="SD v1.4 first conv for spatial-map models (see gligen_inference.py)")
    p.add_argument("--outdir", default=os.path.join("generation_samples", "web_demo"),
                   help="where results and the inputs they used are written")
    p.add_argument("--allowed-path", dest="allowed_path", action="append",
                   help="a folder whose images layouts sent to the generate endpoint may name (repeatable)")
    p.add_argument("--cache", default=CACHE, help=argparse.SUPPRESS)  # where --demo builds its tiny models
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.demo:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        torch.set_num_threads(min(4, torch.get_num_threads()))
    with guard((LayoutError, ResolveError, CheckpointError), status=2) as g:
        page, _, launch = build_app(args)
    if g.status:
        return g.status
    try:
        page.launch(**launch)
    except OSError as e:  # e.g. the port is taken
        print(f"error: cannot serve on {args.host}:{args.port}: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
