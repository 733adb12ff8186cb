"""Image variations: a picture in place of the prompt (Stable unCLIP, SD Reimagine).

    picture -> CLIP's image tower -> embedding e                 (model/unclip.py)
    e -> noised to noise_level, with emb(noise_level) -> y       (model/unclip.py)
    ""  -> text encoder -> context (the prompt stays, empty)     (model/conditioning.py)
    noise -> sampler over denoise(x, sigma, t), guided against y = 0 -> latents -> VAE -> images

The loop is the text pipeline's (`sdxl_edu.pipeline`): the same samplers, guidance,
callback, step records and attention capture. Only what the UNet is told differs: the
vector y carries the picture's CLIP embedding instead of pooled text and sizes, and the
unconditional branch of classifier-free guidance is y = 0 (what training's embedding
dropout showed the model), with the same text context in both branches.

Unlike img2img (`pipe(prompt, image=picture, strength=...)`), which starts from the
picture's latents and keeps its layout, a variation starts from pure noise: all it knows
of the picture is what CLIP's embedding says, so the content stays and the layout moves.

Argument names, defaults and the order of random draws follow diffusers'
`StableUnCLIPImg2ImgPipeline` (the embedding's noise first, then the latents), so a seeded
generator gives the same numbers in both (tests/test_variations.py).

Upstream, at pinned commits: `StableUnCLIPImg2ImgPipeline.__call__`
(https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/pipelines/stable_diffusion/pipeline_stable_unclip_img2img.py#L624).
"""

import torch

from .arguments import check_variation_arguments
from .model.conditioning import Conditioner
from .model.unclip import CLIPEmbeddingNoiseAugmentation, clip_image_pixels, image_embeddings
from .model.unet import UNet
from .model.vae import AutoencoderKL
from .pipeline import GenerationOutput, Pipeline, _randn
from .sampling.guidance import Guidance


class ImageVariationPipeline(Pipeline):
    """A Stable unCLIP model: UNet, VAE, one text encoder, CLIP's image tower and the noise
    augmentation of its embedding. `load_pipeline` returns one for an unCLIP file.

    >>> import tempfile
    >>> from PIL import Image
    >>> from sdxl_edu import load_pipeline
    >>> from sdxl_edu.testing import save_toy_checkpoint
    >>> pipe = load_pipeline(save_toy_checkpoint(tempfile.mkdtemp(), "unclip"))  # random weights
    >>> picture = Image.new("RGB", (48, 40), (200, 30, 30))  # any size: CLIP's processor resizes it
    >>> out = pipe(picture, noise_level=100, num_inference_steps=2, num_images_per_prompt=2, seed=0,
    ...            progress=False)
    >>> len(out.images), out.images[0].size, out.latents.shape
    (2, (64, 64), torch.Size([2, 4, 16, 16]))
    >>> pipe.encode_image(picture).shape  # the picture's CLIP embedding
    torch.Size([1, 24])
    >>> pipe(picture, noise_level=1000)
    Traceback (most recent call last):
    ValueError: noise_level must be a whole number in [0, 999] (how far the picture's embedding is noised before the UNet reads it); got 1000
    """

    def __init__(self, unet: UNet, vae: AutoencoderKL, conditioner: Conditioner, image_encoder,
                 noise_augmentor: CLIPEmbeddingNoiseAugmentation, kind: str = "unclip",
                 scheduler_config: dict | None = None, source: str = "", default_size: int | None = None):
        super().__init__(unet, vae, conditioner, kind, scheduler_config, source, default_size)
        self.image_encoder, self.noise_augmentor = image_encoder, noise_augmentor

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.unet.parameters())
        return (f"ImageVariationPipeline(Stable unCLIP from {self.source!r}: UNet {params / 1e6:.1f}M parameters, "
                f"{self.dtype}, {self.device})")

    def to(self, device=None, dtype: torch.dtype | None = None) -> "ImageVariationPipeline":
        super().to(device, dtype)
        self.image_encoder.to(device=device, dtype=dtype)
        self.noise_augmentor.to(device=device)  # its statistics stay in float32
        return self

    @torch.no_grad()
    def encode_image(self, image) -> torch.Tensor:
        """CLIP image embeddings (B, d) of PIL pictures (any size: resized and centre-cropped as
        CLIP's image processor does) or of pixel values already prepared for the tower."""
        if not isinstance(image, torch.Tensor):
            image = clip_image_pixels(image, self.image_encoder.config.image_size)
        return image_embeddings(self.image_encoder, image).float()

    @torch.no_grad()
    def __call__(self, image=None, prompt: str | list[str] = "", negative_prompt: str | list[str] | None = None, *,
                 image_embeds: torch.Tensor | None = None, noise_level: int = 0, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 20, guidance_scale: float = 10.0,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, sampler: str = "euler", eta: float = 0.0,
                 use_karras_sigmas: bool = False, num_images_per_prompt: int = 1, output_type: str = "pil",
                 callback=None, record: bool = False, progress: bool = True) -> GenerationOutput:
        """Variations of each picture in `image` (or of CLIP embeddings given as `image_embeds`),
        `num_images_per_prompt` of each; see the module docstring.

        `noise_level` (0..999) noises the embedding before the UNet reads it: higher is freer.
        Classifier-free guidance, against y = 0, runs whenever guidance_scale != 1 (diffusers
        skips it for every scale <= 1). `prompt` (empty by default, as in training) and
        `negative_prompt` (the empty prompt when None) feed the cross-attention of the two
        branches. Every argument is checked before any work.
        """
        check_variation_arguments(self, {k: v for k, v in locals().items() if k != "self"})
        if generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(seed)
        embeds = self.encode_image(image) if image_embeds is None else image_embeds.float().to(self.device)
        pictures = embeds.shape[0]
        prompts = [prompt] * pictures if isinstance(prompt, str) else list(prompt)
        batch = pictures * num_images_per_prompt
        guidance = Guidance(guidance_scale)

        y = self.noise_augmentor(embeds, noise_level, _randn(tuple(embeds.shape), generator).to(self.device))
        text = self.encode_prompt(prompts, negative_prompt, None, guidance.classifier_free)
        context, y = self._variation_conditioning(text, y, num_images_per_prompt, guidance.classifier_free)

        height, width = height or self.default_size, width or self.default_size
        plan = self._plan(sampler, num_inference_steps, use_karras_sigmas, False, 0.0, None, None)
        latent_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        noise = latents if latents is not None else _randn((batch, self.unet_config.in_channels, *latent_size),
                                                           generator)
        x = noise.to(self.device, torch.float32) * plan.init_noise_sigma
        return self._sample(x, plan, context, y, guidance, prompts, sampler=sampler, generator=generator, eta=eta,
                            progress=progress, callback=callback, record=record, output_type=output_type)

    def _variation_conditioning(self, text, y: torch.Tensor, images_per_prompt: int,
                                classifier_free: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Context and y for the UNet, each picture's repeated for its images; under guidance
        [uncond; cond] with the unconditional y all zeros, as training's dropout left it."""
        context = text.context.repeat_interleave(images_per_prompt, 0)
        y = y.repeat_interleave(images_per_prompt, 0)
        if classifier_free:
            context = torch.cat([text.negative_context.repeat_interleave(images_per_prompt, 0), context])
            y = torch.cat([torch.zeros_like(y), y])
        return context.to(self.dtype), y.to(self.dtype)
