"""The pipeline: the loaded parts of SDXL and one generation, step by step.

    arguments -> all checked before any work             (arguments.py)
    prompt -> tokens -> text encoders -> context, pooled  (model/conditioning.py, model/text.py)
                                   pooled + sizes -> y    (model/conditioning.py)
    noise -> sampler over denoise(x, sigma, t)            (sampling/samplers.py)
             denoise = UNet twice, guidance, v -> eps     (model/unet.py, sampling/guidance.py, sampling/schedule.py)
          -> latents / scaling_factor -> VAE decode -> image   (model/vae.py)

`load_pipeline` (loading/) builds a `Pipeline`; its attribute and argument names follow
diffusers' (`unet`, `vae`, `text_encoder_2`, `encode_prompt`, `guidance_scale`,
`denoising_end`, ...) and so do its defaults and semantics, so results can be compared
with diffusers' `StableDiffusionXLPipeline` / `StableDiffusionXLImg2ImgPipeline` number for
number, and with `StableDiffusionXLInpaintPipeline` given the same `guidance_scale` and
`strength` (its defaults are 7.5 and 0.9999). One call covers what diffusers splits over
several pipelines:

- text to image: `pipe(prompt)`;
- image to image: `pipe(prompt, image=picture, strength=0.6)`: noise the picture's latents to
  the point `strength` of the way up the schedule and re-run that fraction of the steps;
- inpainting: add `mask_image=` (white = repaint); after each step the known region is
  replaced by the picture's latents noised to the same level; at `strength=1` sampling
  starts from noise alone, as diffusers' `StableDiffusionXLInpaintPipeline` does;
- the ensemble of experts: `base(..., denoising_end=0.8, output_type="latent")` stops at
  t = 200, `refiner(..., image=latents, denoising_start=0.8)` continues from there without
  adding noise; or the refiner as img2img on a finished image (`strength=0.3`).

Upstream, at pinned commits: diffusers' `StableDiffusionXLPipeline.__call__`
(https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py#L823).
"""

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.hooks import RemovableHandle

from .arguments import check_pipeline_arguments
from .model.conditioning import Conditioner, PromptEmbeddings, micro_conditioning_per_branch, unet_conditioning
from .model.unet import UNet
from .model.vae import AutoencoderKL
from .sampling.guidance import Guidance, guided_eps
from .sampling.samplers import SAMPLERS, Denoise, Plan, Step, make_plan
from .sampling.schedule import NoiseSchedule


@dataclass
class GenerationOutput:
    images: list  # PIL images; for output_type="latent" the latents, as diffusers does
    latents: torch.Tensor  # final latents in the scaled latent space (what the UNet sees at t = 0)
    steps: list[Step] | None = None  # every step, when record=True


class Pipeline:
    """SDXL base or refiner: UNet, VAE and the text conditioner, on one device and dtype.

    >>> import tempfile
    >>> from sdxl_edu import load_pipeline
    >>> from sdxl_edu.testing import save_toy_checkpoint
    >>> pipe = load_pipeline(save_toy_checkpoint(tempfile.mkdtemp()))  # random weights, SDXL's layout
    >>> out = pipe(["a red circle", "a cat"], num_inference_steps=3, seed=0, progress=False, record=True)
    >>> len(out.images), out.latents.shape, len(out.steps)
    (2, torch.Size([2, 4, 16, 16]), 3)
    >>> text = pipe.encode_prompt("a red circle", negative_prompt="blurry")
    >>> text.context.shape, text.pooled.shape  # 16 (CLIP-L-like) + 32 (bigG-like) = 48
    (torch.Size([1, 77, 48]), torch.Size([1, 32]))
    >>> with pipe.capture_attention() as attn:
    ...     _ = pipe("a red circle", num_inference_steps=2, progress=False)
    >>> attn.cross_attention_map("circle").shape
    torch.Size([16, 16])
    >>> pipe.latent_preview(out.latents).shape  # a cheap look at latents, no VAE decode
    torch.Size([2, 3, 16, 16])

    Every argument is checked before any work, and a bad one is named:

    >>> pipe("a cat", strength=1.5)
    Traceback (most recent call last):
    ValueError: strength must be a number in [0, 1] (the fraction of the schedule img2img re-runs); got 1.5
    >>> pipe.check_arguments(prompt="a cat", num_inference_steps=0)
    Traceback (most recent call last):
    ValueError: num_inference_steps must be a whole number >= 1; got 0

    A hook sees each generation start (attention capture learns the batch's layout so):

    >>> handle = pipe.register_generation_hook(lambda prompts, images, cfg, size: print(images, cfg, size))
    >>> _ = pipe(["a cat", "a dog"], num_inference_steps=1, progress=False)
    2 True (16, 16)
    >>> handle.remove()
    """

    def __init__(self, unet: UNet, vae: AutoencoderKL, conditioner: Conditioner, kind: str = "base",
                 scheduler_config: dict | None = None, source: str = "", default_size: int | None = None):
        self.unet, self.vae, self.conditioner = unet, vae, conditioner
        self.kind = kind  # "base" or "refiner"
        self.schedule = NoiseSchedule.from_config(scheduler_config)
        self.source = source
        self.default_size = default_size or 128 * (vae.config.downsampling_factor if vae is not None else 8)
        self._generation_hooks = OrderedDict()  # see register_generation_hook

    # diffusers-style names for the parts
    unet_config = property(lambda self: self.unet.config, doc="The UNetConfig read from the checkpoint.")
    text_encoder = property(lambda self: self.conditioner.text_encoder)
    text_encoder_2 = property(lambda self: self.conditioner.text_encoder_2)
    tokenizer = property(lambda self: self.conditioner.tokenizer)
    tokenizer_2 = property(lambda self: self.conditioner.tokenizer_2)
    device = property(lambda self: next(self.unet.parameters()).device)
    dtype = property(lambda self: next(self.unet.parameters()).dtype)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel (8 for SDXL)."""
        return self.vae.config.downsampling_factor

    def encode_prompt(self, prompts: str | list[str], negative_prompt: str | list[str] | None = None,
                      clip_skip: int | None = None, do_classifier_free_guidance: bool = True,
                      force_zeros: bool | None = None) -> PromptEmbeddings:
        """Context and pooled embeddings for the prompt and the unconditional branch.

        See `Conditioner.encode_prompt` for the three unconditional choices.
        """
        return self.conditioner.encode_prompt(prompts, negative_prompt, clip_skip,
                                              do_classifier_free_guidance, force_zeros)

    def check_image_size(self, height: int, width: int) -> None:
        """Images must be a whole number of latent pixels: height and width divisible by 8."""
        f = self.vae_scale_factor
        if height % f or width % f:
            raise ValueError(f"height and width must be divisible by {f} (the VAE maps {f}x{f} pixels to one "
                             f"latent pixel); got {height}x{width}. Try {height // f * f}x{width // f * f}.")

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Pipeline":
        for module in (self.unet, self.vae, self.text_encoder, self.text_encoder_2):
            if module is not None:
                module.to(device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.unet.parameters())
        return (f"Pipeline(SDXL {self.kind} from {self.source!r}: UNet {params / 1e6:.1f}M parameters, "
                f"{self.dtype}, {self.device})")

    @property
    def latent_preview(self):
        """A linear latent -> RGB map fitted to this pipeline's VAE (`sdxl_edu.inspection.viz`), for
        cheap pictures of every step: `pipe.latent_preview(step.x0)`."""
        if getattr(self, "_latent_preview", None) is None:
            from .inspection.viz import fit_latent_rgb

            self._latent_preview = fit_latent_rgb(self.vae)
        return self._latent_preview

    def capture_attention(self, layers=None, per_layer: bool = True, per_step: bool = False,
                          self_attention=False):
        """`with pipe.capture_attention() as attn: pipe(...)`, then `attn.cross_attention_map(word)`.

        `layers`: substrings of the cross-attention layers to probe (all by default);
        see `sdxl_edu.inspection.capture` for what is kept.
        """
        from .inspection.capture import AttentionCapture  # capture builds on the pipeline, not the reverse

        return AttentionCapture(self, layers, per_layer, per_step, self_attention)

    def register_generation_hook(self, hook: Callable[[list[str], int, bool, tuple[int, int]], None]
                                 ) -> RemovableHandle:
        """Call `hook(prompts, images, classifier_free, latent_size)` as each generation starts,
        before its first step; `handle.remove()` detaches it (as torch's module hooks do).
        With classifier-free guidance the UNet's batch is [unconditional; conditional], each
        `images` long: what `sdxl_edu.inspection.capture` needs to know to keep the conditional half.
        """
        handle = RemovableHandle(self._generation_hooks)
        self._generation_hooks[handle.id] = hook
        return handle

    # ------------------------------------------------------------------------- generation

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None, *,
                 height: int | None = None, width: int | None = None, num_inference_steps: int = 50,
                 guidance_scale: float = 5.0, seed: int | None = None, generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, sampler: str = "euler",
                 original_size: tuple[int, int] | None = None, crops_coords_top_left: tuple[int, int] = (0, 0),
                 target_size: tuple[int, int] | None = None, negative_original_size: tuple[int, int] | None = None,
                 negative_crops_coords_top_left: tuple[int, int] | None = None,
                 negative_target_size: tuple[int, int] | None = None, aesthetic_score: float = 6.0,
                 negative_aesthetic_score: float = 2.5, denoising_start: float | None = None,
                 denoising_end: float | None = None, image=None, strength: float = 0.3, mask_image=None,
                 guidance_rescale: float = 0.0, clip_skip: int | None = None, force_zeros: bool | None = None,
                 eta: float = 0.0, use_karras_sigmas: bool = False, classifier=None, class_labels=None,
                 classifier_scale: float = 1.0, num_images_per_prompt: int = 1, output_type: str = "pil",
                 prompt_embeds: PromptEmbeddings | None = None, callback=None, record: bool = False,
                 progress: bool = True) -> GenerationOutput:
        """Generate (or, with `image=`, transform) images; see the module docstring.

        Classifier-free guidance runs whenever guidance_scale != 1 (diffusers skips it for
        every scale <= 1; here s = 0 gives the unconditional model, which lessons need). The
        micro-conditioning defaults are `conditioning.micro_conditioning_per_branch`'s.
        `prompt_embeds` (from `encode_prompt`, possibly edited) replaces the text encoders'
        output; `prompt` then only names the tokens, for attention capture. Every argument is
        checked before any work (`check_arguments`).
        """
        self.check_arguments(**{k: v for k, v in locals().items() if k != "self"})  # locals(): the arguments
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts) * num_images_per_prompt
        if generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(seed)
        init_latents = None if image is None else self._image_latents(image, batch, generator)
        height, width = self._image_size(init_latents, height, width)
        guidance = Guidance(guidance_scale, guidance_rescale, classifier, class_labels, classifier_scale)

        text = prompt_embeds if prompt_embeds is not None else self.encode_prompt(
            prompts, negative_prompt, clip_skip, guidance.classifier_free, force_zeros)
        ids, negative_ids = micro_conditioning_per_branch(
            self.kind == "refiner", height, width, original_size, crops_coords_top_left, target_size,
            aesthetic_score, negative_original_size, negative_crops_coords_top_left, negative_target_size,
            negative_aesthetic_score)
        context, y = self._conditioning(text, ids, negative_ids, num_images_per_prompt, guidance.classifier_free)

        plan = self._plan(sampler, num_inference_steps, use_karras_sigmas, image is not None, strength,
                          denoising_start, denoising_end)
        latent_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        noise = latents if latents is not None else _randn((batch, self.unet_config.in_channels, *latent_size),
                                                           generator)
        noise = noise.to(self.device, torch.float32)
        from_noise = mask_image is not None and strength == 1 and denoising_start is None
        x = self._first_x(plan, noise, None if from_noise else init_latents, denoising_start)
        after_step = None if mask_image is None else self._inpainting_blend(mask_image, init_latents, noise, plan,
                                                                            to_the_end=denoising_end is None)
        return self._sample(x, plan, context, y, guidance, prompts, sampler=sampler, generator=generator, eta=eta,
                            progress=progress, callback=callback, record=record, output_type=output_type,
                            after_step=after_step)

    def _sample(self, x: torch.Tensor, plan: Plan, context: torch.Tensor, y: torch.Tensor, guidance: Guidance,
                prompts: list[str], *, sampler: str, generator, eta: float, progress: bool, callback, record: bool,
                output_type: str, after_step=None) -> GenerationOutput:
        """From the first x to the output: the generation hooks told the batch's layout, the
        sampler over the guided UNet, the latents decoded (or returned as they are)."""
        for hook in list(self._generation_hooks.values()):
            hook(prompts, x.shape[0], guidance.classifier_free, tuple(x.shape[-2:]))
        steps = [] if record else None
        x = SAMPLERS[sampler](self._denoiser(context, y, guidance), x, plan, callback=self._on_step(steps, callback),
                              generator=generator, eta=eta, progress=progress, after_step=after_step)
        out_latents = plan.from_sigma_view(x)
        images = out_latents if output_type == "latent" else self.decode(out_latents, output_type)
        return GenerationOutput(images, out_latents, steps)

    def _image_size(self, init_latents: torch.Tensor | None, height: int | None, width: int | None):
        """(height, width) in pixels: the input image's if there is one, else as asked or the default."""
        if init_latents is not None:
            return tuple(d * self.vae_scale_factor for d in init_latents.shape[-2:])
        return height or self.default_size, width or self.default_size

    def _conditioning(self, text: PromptEmbeddings, ids, negative_ids, images_per_prompt: int,
                      classifier_free: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The UNet's context and y (`conditioning.unet_conditioning`), checked against the UNet."""
        context, y = unet_conditioning(text, ids, negative_ids, images_per_prompt, classifier_free)
        if y.shape[1] != self.unet_config.adm_in_channels:
            raise ValueError(f"the UNet expects a conditioning vector of {self.unet_config.adm_in_channels} numbers, "
                             f"got {y.shape[1]} (pooled {text.pooled.shape[1]} + {len(ids)} x 256)")
        return context.to(self.dtype), y.to(self.dtype)

    def _plan(self, sampler, steps, karras, img2img, strength, denoising_start, denoising_end) -> Plan:
        """The part of the schedule this call runs (diffusers' get_timesteps and denoising_end)."""
        plan = make_plan(self.schedule, sampler, steps, karras)
        T = self.schedule.num_train_timesteps
        if denoising_start is not None:
            cutoff = int(round(T - denoising_start * T))
            plan = plan[int((plan.timesteps >= cutoff).sum()):]
        elif img2img:
            plan = plan[steps - min(int(steps * strength), steps):]
        if denoising_end is not None:
            cutoff = int(round(T - denoising_end * T))
            plan = plan[:int((plan.timesteps >= cutoff).sum())]
        if len(plan) == 0:
            raise ValueError(f"nothing to run: {steps} steps with strength={strength}, denoising_start="
                             f"{denoising_start}, denoising_end={denoising_end} leave no timestep")
        return plan

    @staticmethod
    def _first_x(plan: Plan, noise: torch.Tensor, init_latents: torch.Tensor | None,
                 denoising_start: float | None) -> torch.Tensor:
        """Where sampling starts: noise at the plan's first sigma (text to image, and inpainting at
        strength 1, whose picture enters only through the blend: diffusers' `is_strength_max`); a
        picture's latents noised to it (img2img); or, at the hand-off, the given latents as they are."""
        if init_latents is None:
            return noise * plan.init_noise_sigma
        if denoising_start is not None:
            return plan.to_sigma_view(init_latents)
        return init_latents + plan.sigmas[0] * noise

    def _denoiser(self, context: torch.Tensor, y: torch.Tensor, guidance: Guidance) -> Denoise:
        """denoise(x, sigma, t) for the samplers: the UNet on this generation's context and y,
        guided (`guidance.guided_eps`), its output read as eps (`NoiseSchedule.to_eps`)."""
        def unet(x_t, t):
            return self.unet(x_t.to(self.dtype), t.to(self.device), context, y)

        return lambda x, sigma, t: guided_eps(unet, x, sigma, t, guidance, self.schedule.to_eps)

    @staticmethod
    def _on_step(steps: list[Step] | None, callback):
        """The samplers' callback: keep a CPU copy of each step when recording, then call the caller's."""
        def on_step(step: Step):
            if steps is not None:
                steps.append(step.detached())
            if callback is not None:
                callback(step)

        return on_step

    def check_arguments(self, **arguments) -> None:
        """Refuse, before any work, every value `pipe(...)` cannot use, with a TypeError or
        ValueError that names the argument, the value given and what it may be (see the class's
        example and `sdxl_edu.arguments`). Takes `pipe(...)`'s arguments by name; those left
        out take their defaults."""
        check_pipeline_arguments(self, arguments)

    def _image_latents(self, image, batch: int, generator) -> torch.Tensor:
        """Scaled latents of a picture (PIL, or a tensor in [-1, 1]), or latents given as such
        (a 4-channel tensor, e.g. the base's output for the refiner)."""
        if isinstance(image, torch.Tensor) and image.shape[1] == self.unet_config.in_channels:
            latents = image.to(self.device, torch.float32)
        else:
            pixels = image_to_tensor(image).to(self.device, self.vae.decoder.conv_in.weight.dtype)
            self.check_image_size(*pixels.shape[-2:])
            latents = self.vae.encode(pixels).sample(generator).float() * self.vae.scaling_factor
        if latents.shape[0] != batch:
            latents = latents.repeat(batch // latents.shape[0], 1, 1, 1)
        return latents

    def _inpainting_blend(self, mask_image, init_latents, noise, plan: Plan, to_the_end: bool):
        """After step i, put back the known region at the noise level of step i + 1; after the
        last step of a run to the end, the picture's latents as they are (as diffusers does:
        DDIM's run ends at alpha_bar_0, a sigma of 0.029, not 0)."""
        mask = image_to_tensor(mask_image, channels=1, normalize=False)
        mask = torch.nn.functional.interpolate(mask, size=init_latents.shape[-2:]).to(self.device)
        mask = (mask >= 0.5).float()  # 1: repaint, 0: keep

        def blend(x, i):
            known = init_latents + plan.sigmas[i + 1] * noise
            if to_the_end and i + 1 == len(plan):  # the picture's latents as they are, in the sigma view
                known = plan.to_sigma_view(init_latents, -1)
            return (1 - mask) * known + mask * x

        return blend

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, output_type: str = "pil"):
        """Scaled latents -> images. The VAE runs in float32 when the pipeline is float16
        (SDXL's VAE overflows in fp16)."""
        vae_dtype = self.vae.decoder.conv_in.weight.dtype
        if vae_dtype == torch.float16:
            self.vae.float()
        images = self.vae.decode(latents.to(self.vae.decoder.conv_in.weight.dtype) / self.vae.scaling_factor)
        self.vae.to(vae_dtype)
        images = (images.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        if output_type != "pil":
            raise ValueError(f"output_type {output_type!r}: use 'pil', 'pt' or 'latent'")
        return tensor_to_pil(images)


def _randn(shape, generator) -> torch.Tensor:
    """Unit Gaussian noise drawn on the CPU, so a seed gives the same latents on any device."""
    return torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32)


def image_to_tensor(image, channels: int = 3, normalize: bool = True) -> torch.Tensor:
    """PIL image(s) or a (B, C, H, W) tensor in [0, 1] -> a tensor in [-1, 1] (or [0, 1]).

    >>> image_to_tensor(Image.new("RGB", (16, 8), (255, 0, 0)))[0, :, 0, 0].tolist()
    [1.0, -1.0, -1.0]
    """
    if isinstance(image, torch.Tensor):
        return image if image.ndim == 4 else image[None]
    images = image if isinstance(image, list) else [image]
    mode = "RGB" if channels == 3 else "L"
    arrays = [np.asarray(im.convert(mode), dtype=np.float32) / 255.0 for im in images]
    t = torch.from_numpy(np.stack(arrays))
    t = t.permute(0, 3, 1, 2) if channels == 3 else t[:, None]
    return t * 2 - 1 if normalize else t


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> PIL images, rounding as diffusers does."""
    arrays = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in arrays]
