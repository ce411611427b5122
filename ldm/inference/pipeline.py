"""The inference pipeline of ``gligen_inference.py`` (the original's ``run(meta, config)``), one generation at a time.

:class:`Settings` holds the run options, :class:`Runner` loads checkpoints on demand (one at a
time), prepares the batch for the checkpoint's mode, samples with classifier-free guidance and
scheduled gates (:mod:`ldm.models.diffusion.sampling` over a
:class:`~ldm.models.diffusion.denoiser.GroundedDenoiser`; the model is never modified), decodes and saves::

    runner = Runner(Settings(batch_size=2, steps=50, seed=1))
    paths = runner.run(Generation.from_dict({...}))
"""
from __future__ import annotations

import dataclasses
import math
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

import torch

from .batch import boxes_tensor, inpainting_image, open_image, prepare_batch
from ldm.checkpoint import CheckpointError, load_sd_first_conv
from ldm.constants import MAX_PERSONS
from ldm.devices import DTYPES, resolve_device

from .checkpoints import RELEASED_MODES, resolve_checkpoint
from .errors import LayoutError, ResolveError
from .layout import BOX_FORMATS, Generation
from .modes import SPATIAL_LAYOUT_KEYS, Mode, mode_of_models
from .saving import check_writable, next_index, save_png, to_uint8, write_json

DEFAULT_NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
                           "cropped, worst quality, low quality")
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEVICES = ("auto", "cpu", "cuda", "mps")
SAMPLERS = ("plms", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "euler")
#: default steps per sampler: the original's for PLMS / DDIM; the few-step solvers' match PLMS-50's
#: accuracy at these counts (bench/RESULTS.md, "Sampler accuracy")
DEFAULT_STEPS = {"plms": 50, "ddim": 250, "dpmpp_2m": 20, "dpmpp_2m_karras": 20, "unipc": 20, "euler": 50}
MAX_STEPS = 1000  # the schedule's length
MAX_BATCH_SIZE = 256
MAX_GUIDANCE_SCALE = 100.0
MAX_SEED = 2 ** 63 - 1


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)

#: output sub-folder per mode when a layout names none (the original examples' names)
DEFAULT_FOLDERS = {
    Mode("text"): "generation_box_text", Mode("text_image"): "generation_box_image",
    Mode("text", True): "inpainting_box_text", Mode("text_image", True): "inpainting_box_image",
    Mode("keypoint"): "keypoint", **{Mode(f): f for f in SPATIAL_LAYOUT_KEYS},
}


@dataclass
class Settings:
    """Run options (CLI flags; a layout file's ``settings`` block gives defaults for them)."""

    sampler: str = "plms"
    steps: int | None = None  # None: DEFAULT_STEPS[sampler] (50 PLMS / 250 DDIM, as the original)
    guidance_scale: float = 7.5
    negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT
    batch_size: int = 5
    seed: int | None = None
    device: str = "auto"
    dtype: str = "fp32"
    folder: str = "generation_samples"
    clip: str = DEFAULT_CLIP
    ckpt: str | None = None
    ckpt_dir: str | None = None
    sd_first_conv: str | None = None
    box_format: str = "xyxy"
    progress: bool = True
    base_model: str | None = None  # SD-1.x model for the frozen UNet / VAE / text encoder (ldm.base_model)
    height: int | None = None  # image size in pixels (None: the checkpoint's, 512)
    width: int | None = None

    #: keys a layout file's ``settings`` may set
    FILE_KEYS = ("sampler", "steps", "guidance_scale", "negative_prompt", "batch_size", "dtype", "clip",
                 "sd_first_conv", "box_format", "device", "folder", "base_model", "height", "width")

    def __post_init__(self):
        self.validate()

    def validate(self) -> "Settings":
        """Raise :class:`LayoutError` (one line) for an option of the wrong type or out of range;
        NaN / infinite numbers are never accepted (they would give a black image)."""
        for name in ("negative_prompt", "clip", "ckpt", "ckpt_dir", "sd_first_conv"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise LayoutError(f"{name} must be a string, got {v!r}")
        if not isinstance(self.folder, str) or not self.folder or "\0" in self.folder:
            raise LayoutError(f"folder must be a folder path, got {self.folder!r}")
        if self.sampler not in SAMPLERS:
            raise LayoutError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.steps is not None and (not _is_int(self.steps) or not 1 <= self.steps <= MAX_STEPS):
            raise LayoutError(f"steps must be a positive integer (1..{MAX_STEPS}), got {self.steps!r}")
        if self.steps is not None and self.sampler in ("plms", "ddim"):
            from ldm.models.diffusion.sampling import make_ddim_timesteps

            try:
                make_ddim_timesteps(self.steps)
            except ValueError as e:
                raise LayoutError(str(e)) from None
        if not _is_int(self.batch_size) or not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise LayoutError(f"batch_size must be a positive integer (1..{MAX_BATCH_SIZE}), got {self.batch_size!r}")
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) \
                or not 0 <= g <= MAX_GUIDANCE_SCALE:
            raise LayoutError(f"guidance_scale must be a finite number in [0, {MAX_GUIDANCE_SCALE:g}], got {g!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise LayoutError(f"seed must be an integer in 0..{MAX_SEED}, got {self.seed!r}")
        if self.dtype not in DTYPES:
            raise LayoutError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise LayoutError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.box_format not in BOX_FORMATS:
            raise LayoutError(f"box format must be one of {BOX_FORMATS}, got {self.box_format!r}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 8 or v % 8):
                raise LayoutError(f"{name} must be a positive multiple of 8 pixels (of 64 for SD checkpoints), got {v!r}")
        return self

    @classmethod
    def merged(cls, file_settings: dict | None, **cli: Any) -> "Settings":
        """Defaults < the layout file's ``settings`` < explicit CLI values (``None`` = not given)."""
        file_settings = dict(file_settings or {})
        unknown = [k for k in file_settings if k not in cls.FILE_KEYS]
        if unknown:
            raise LayoutError(f"unknown key {unknown[0]!r} in the layout's settings (allowed: {', '.join(cls.FILE_KEYS)})")
        values = {**file_settings, **{k: v for k, v in cli.items() if v is not None}}
        return cls(**values)

    @property
    def num_steps(self) -> int:
        return self.steps if self.steps is not None else DEFAULT_STEPS[self.sampler]

    def record(self) -> dict:
        """The settings a saved run needs to be repeated (see ``FILE_KEYS``)."""
        d = dataclasses.asdict(self)
        d["steps"] = self.num_steps
        d["box_format"] = "xyxy"  # saved layouts hold normalised xyxy boxes
        return {k: d[k] for k in self.FILE_KEYS if k not in ("device", "folder")}


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device must be available."""
    try:
        return resolve_device(name)
    except ValueError as e:
        raise ResolveError(str(e)) from None


@dataclass
class Result:
    """One generation: decoded images (B, 3, H, W) in ~[-1, 1] and what produced them."""

    images: torch.Tensor
    latents: torch.Tensor
    generation: Generation
    mode: Mode
    checkpoint: str
    seed: int
    paths: list = field(default_factory=list)


class Runner:
    """Runs :class:`Generation` requests with cached models (one checkpoint loaded at a time)."""

    def __init__(self, settings: Settings | None = None):
        self.settings = (settings or Settings()).validate()
        self.device = pick_device(self.settings.device)
        self.dtype = DTYPES[self.settings.dtype]
        self._loaded: tuple[str, Any, Mode] | None = None
        self._features = None
        self._sd_conv = load_sd_first_conv(self.settings.sd_first_conv) if self.settings.sd_first_conv else None
        self._base = None  # ldm.base_model.BaseModel, read once

    # ---------------------------------------------------------------- resources
    def checkpoint_for(self, gen: Generation) -> str:
        """Local path of the checkpoint for ``gen``: ``--ckpt``, else the layout's ``ckpt``, else the
        released checkpoint for the mode the layout implies."""
        spec = self.settings.ckpt or gen.ckpt
        return resolve_checkpoint(spec, None if spec else gen.implied_mode(), self.settings.ckpt_dir)

    def load(self, path: str):
        """``(GLIGENModels, Mode)`` for a checkpoint file (cached for consecutive calls)."""
        if self._loaded is not None and self._loaded[0] == path:
            return self._loaded[1], self._loaded[2]
        from ldm.checkpoint import build_from_checkpoint, load_checkpoint_file

        self._loaded = None  # free the previous model first
        if os.path.isdir(path):  # a diffusers folder (resolve_checkpoint only returns those)
            from ldm.diffusers_format import from_diffusers

            ckpt = from_diffusers(path)
        else:
            ckpt = load_checkpoint_file(path)
        if self.settings.base_model:
            from ldm.base_model import merge_base

            ckpt = merge_base(ckpt, self.base())
        config = None
        if "config_dict" not in ckpt:
            config = fallback_config(ckpt.get("model", {}))
        models = build_from_checkpoint(ckpt, device="cpu", config=config, source=path)
        del ckpt
        models.to(self.device, self.dtype)
        mode = mode_of_models(models)
        self._loaded = (path, models, mode)
        return models, mode

    def base(self):
        """The ``--base_model`` SD-1.x weights (:class:`ldm.base_model.BaseModel`), read once."""
        if self._base is None:
            from ldm.base_model import read_base

            self._base = read_base(self.settings.base_model)
        return self._base

    def image_size(self, models, mode: Mode) -> tuple[int, int]:
        """``(H, W)`` in pixels: ``--height/--width`` (each defaults to the checkpoint's resolution), multiples
        of the UNet's total downsampling in pixels (64 for SD). Spatial-map models keep their trained size."""
        res = models.image_resolution
        size = (self.settings.height or res, self.settings.width or res)
        step = models.autoencoder.downsample_factor * 2 ** (len(models.model.channel_mult) - 1)
        if size[0] % step or size[1] % step:
            raise LayoutError(f"height and width must be multiples of {step} for this checkpoint, got "
                              f"{size[0]}x{size[1]}")
        if mode.is_spatial and size != (res, res):
            raise LayoutError(f"{mode.name} checkpoints generate {res}x{res} only: their downsampler turns the "
                              f"condition map into a fixed {models.model.image_size}x{models.model.image_size} "
                              f"latent map (got --height {size[0]} --width {size[1]})")
        return size

    def features(self):
        """CLIP phrase / reference-image features (loaded once, only for box modes)."""
        if self._features is None:
            from ldm.modules.encoders.clip_features import CLIPGroundingFeatures

            try:
                self._features = CLIPGroundingFeatures(self.settings.clip, device=self.device, dtype=torch.float32)
            except OSError as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ResolveError(f"cannot load the CLIP model {self.settings.clip!r} for phrase/image features: {msg}") \
                    from None
        return self._features

    def sd_first_conv(self):
        """SD v1.4's 4-channel first conv, needed by spatial-map models at steps whose gate scale is 0:
        ``--sd_first_conv`` if given, else the ``--base_model``'s own first conv, else
        :func:`ldm.checkpoint.load_sd_first_conv` (the original's file name in the working directory,
        Hub cache, or a 46 KB ranged read from the Hub). None (with a warning) if unavailable."""
        if self._sd_conv is None and self.settings.base_model:
            self._sd_conv = self.base().first_conv()  # the base's own first conv
        if self._sd_conv is None:
            try:
                self._sd_conv = load_sd_first_conv()
            except (CheckpointError, OSError) as e:
                import warnings

                warnings.warn(f"SD v1.4 first conv unavailable ({e}); pass --sd_first_conv", stacklevel=2)
                return None
        return self._sd_conv

    # ---------------------------------------------------------------- one generation
    @torch.no_grad()
    def generate(self, gen: Generation, starting_noise: torch.Tensor | None = None) -> Result:
        """Sample ``batch_size`` images for ``gen`` (load, prepare the batch, encode the prompts,
        sample, decode: the original's ``run`` without the saving).

        ``starting_noise`` (B, 4, h, w): the initial latent; None draws it from the seeded global
        generator (as the original, which always passes None).
        """
        from inpaint_mask_func import draw_masks_from_boxes
        from ldm.models.diffusion.denoiser import GroundedDenoiser
        from ldm.models.diffusion.sampling import SAMPLERS as LOOPS
        from ldm.models.diffusion.sampling import KnownRegion, alpha_generator, make_schedule
        from ldm.models.diffusion.solvers import SOLVERS, make_grid

        s = self.settings
        path = self.checkpoint_for(gen)
        models, mode = self.load(path)
        gen.check_compatible(mode, f"checkpoint {os.path.basename(path)}")
        model, dev, dt = models.model, self.device, self.dtype
        if s.sampler in SOLVERS:  # few-step ODE solvers: a timestep grid from t=999 down to 0
            sample_fn, spacing = SOLVERS[s.sampler]
            schedule = make_grid(models.diffusion.alphas_cumprod, s.num_steps, spacing)
        else:  # the original's PLMS / DDIM tables
            sample_fn, schedule = LOOPS[s.sampler], make_schedule(models.diffusion.alphas_cumprod, s.num_steps)
        gates = alpha_generator(len(schedule), gen.alpha_type)
        sd_conv = None
        if model.uses_spatial_first_conv and 0 in gates:
            sd_conv = self.sd_first_conv()  # warns when unavailable; then the checkpoint's own conv
            sd_conv = sd_conv if sd_conv is not None else model.checkpoint_first_conv_as_sd()
        B = s.batch_size
        H, W = self.image_size(models, mode)
        f = models.autoencoder.downsample_factor

        # grounding batch (CPU float32) -> device / dtype
        dim = getattr(model.position_net, "in_dim", None)
        needs_clip = mode.is_box and (any(p is not None for p in gen.phrases) or
                                      (mode.family == "text_image" and any(p is not None for p in gen.images)))
        batch = prepare_batch(gen, mode, B, H, dim=dim,
                              features=self.features() if needs_clip else None,
                              max_persons=getattr(model.position_net, "max_persons_per_image", MAX_PERSONS))
        # coordinates stay float32 (Fourier features of boxes / points are computed in float32)
        batch = {k: v.to(dev, dt if v.is_floating_point() and k not in ("boxes", "points") else None)
                 for k, v in batch.items()}

        context = models.text_encoder.encode([gen.prompt] * B).to(dt)
        negative = gen.negative_prompt if gen.negative_prompt is not None else s.negative_prompt
        uc = models.text_encoder.encode([negative if negative is not None else ""] * B).to(dt)

        seed = s.seed if s.seed is not None else gen.seed
        if seed is None:
            seed = secrets.randbelow(2 ** 31)
        # RNG order from here on follows the original's gligen_inference.run: the inpainting
        # encode, the initial noise, then each step's draws (see ldm.models.diffusion.sampling)
        torch.manual_seed(seed)

        mask = z0 = inpainting_extra = None
        if mode.inpaint:
            # float32 boxes whatever the model dtype: the mask truncates int(coord * size) as the original
            mask = draw_masks_from_boxes(boxes_tensor(gen.boxes, B), (H // f, W // f)).to(dev)
            image = inpainting_image(gen.input_image, (H, W)).to(dev, dt)
            z0 = models.autoencoder.encode(image)
            inpainting_extra = torch.cat([z0 * mask, mask], dim=1).to(dt)  # (B, 4 + 1, h, w)

        gdi = models.grounding_downsampler_input
        denoise = GroundedDenoiser(model, context, models.grounding_tokenizer_input.prepare(batch), uc, s.guidance_scale,
                                   inpainting_extra_input=inpainting_extra,
                                   grounding_extra_input=gdi.prepare(batch) if gdi is not None else None,
                                   sd_first_conv=sd_conv)
        shape = (B, model.in_channels, H // f, W // f)
        x = torch.randn(shape, device=dev) if starting_noise is None else starting_noise.to(dev, torch.float32)
        known = KnownRegion(models.diffusion, z0, mask) if mode.inpaint else None
        samples = sample_fn(denoise, x, schedule, gates, known=known, progress=s.progress)
        images = models.autoencoder.decode(samples.to(dt)).float()
        if not torch.isfinite(images).all():
            hint = "try --dtype fp32 or a smaller guidance scale" if s.dtype != "fp32" else "try a smaller guidance scale"
            raise ResolveError(f"sampling produced NaN/inf values (checkpoint {os.path.basename(path)}, dtype "
                               f"{s.dtype}); nothing was saved: {hint}")
        return Result(images=images, latents=samples, generation=gen, mode=mode, checkpoint=path, seed=seed)

    # ---------------------------------------------------------------- saving
    def output_folder(self, gen: Generation, mode: Mode) -> str:
        """``<folder>/<save_folder_name or the mode's default>``."""
        return os.path.join(self.settings.folder, gen.save_folder_name or DEFAULT_FOLDERS.get(mode, mode.family))

    def check_output_folder(self, gen: Generation, mode: Mode) -> str:
        """Create the output folder and prove it is writable, as a :class:`LayoutError` (before sampling)."""
        folder = self.output_folder(gen, mode)
        try:
            return check_writable(folder)
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise LayoutError(f"cannot write to the output folder {folder}: {reason}") from None

    def save(self, result: Result) -> list[str]:
        """Write ``<n>.png``, ``<n>_annotated.png`` and ``<n>.json`` per sample (numbered after the
        folder's existing entries, as the original)."""
        gen, mode = result.generation, result.mode
        folder = self.check_output_folder(gen, mode)
        start = next_index(folder)
        entry = gen.to_entry()
        entry["seed"] = result.seed
        entry["ckpt"] = _ckpt_record(gen, result.checkpoint, self.settings.ckpt)
        record = {"settings": self.settings.record(), "generations": [entry]}
        record["settings"]["height"], record["settings"]["width"] = (int(v) for v in result.images.shape[-2:])
        annotate = _annotator(gen, mode)
        paths = []
        for k, array in enumerate(to_uint8(result.images)):
            n = start + k
            paths.append(save_png(array, os.path.join(folder, f"{n}.png")))
            paths.append(save_png(annotate(array), os.path.join(folder, f"{n}_annotated.png")))
            out = {"image": f"{n}.png", "batch_index": k, "mode": mode.name, "checkpoint": result.checkpoint,
                   "device": str(self.device)}
            paths.append(os.path.join(folder, f"{n}.json"))
            write_json(paths[-1], {**record, "outputs": out})
        result.paths = paths
        return paths

    def run(self, gen: Generation) -> list[str]:
        """Generate and save; returns the written paths. The output folder is checked before sampling."""
        path = self.checkpoint_for(gen)
        _, mode = self.load(path)
        gen.check_compatible(mode, f"checkpoint {os.path.basename(path)}")
        self.check_output_folder(gen, mode)
        return self.save(self.generate(gen))


def _ckpt_record(gen: Generation, path: str, cli_ckpt: str | None) -> str:
    """What to write as ``ckpt`` in the saved layout: the Hub repo id when it came from the Hub."""
    spec = cli_ckpt or gen.ckpt
    if spec and not os.path.exists(spec):
        return spec  # a repo id
    if spec:
        return os.path.abspath(spec)
    mode = gen.implied_mode()
    for repo, m in RELEASED_MODES.items():
        if m == mode:
            return repo
    return os.path.abspath(path)


def _annotator(gen: Generation, mode: Mode):
    from PIL import Image

    from .visualize import colorize_labels, draw_boxes, draw_keypoints, side_by_side

    if mode.is_box:
        return lambda a: draw_boxes(Image.fromarray(a), gen.boxes, gen.phrases or
                                    [os.path.basename(p) if p else None for p in gen.images])
    if mode.family == "keypoint":
        return lambda a: draw_keypoints(Image.fromarray(a), gen.keypoints)
    path = gen.condition[mode.family]
    cond = colorize_labels(open_image(path, "L")) if mode.family == "sem" else open_image(path)
    return lambda a: side_by_side(cond, Image.fromarray(a), SPATIAL_LAYOUT_KEYS[mode.family])


def fallback_config(model_state: dict) -> dict:
    """Config of a checkpoint without ``config_dict``: the shipped YAML of its family (+ inpaint_mode)."""
    from .modes import family_from_state_dict

    family = family_from_state_dict(model_state)
    yaml_name = {"text": "flickr_text.yaml", "text_image": "flickr_text_image.yaml", "keypoint": "coco2017K.yaml",
                 "hed": "cc3m_hed.yaml", "normal": "diode_normal.yaml", "sem": "ade_sem.yaml"}.get(family)
    if yaml_name is None:
        raise ResolveError("checkpoint has no config_dict and its modality cannot be told from its weights")
    import yaml

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "configs", yaml_name), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    w = model_state.get("input_blocks.0.0.weight")
    if w is not None and family in ("text", "text_image") and w.shape[1] == 9:
        config["model"]["params"]["inpaint_mode"] = True
        config["inpaint_mode"] = True
    return config
