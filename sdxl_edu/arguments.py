"""What `pipe(...)` accepts: every argument checked before any work.

A generation that dies mid-run on a bad argument (`num_inference_steps=0` used to end in a
bare ZeroDivisionError), or worse runs with it silently (`strength=1.5`), teaches nothing.
`check_pipeline_arguments` runs first in `Pipeline.__call__`, before the text encoders, and
refuses each value the pipeline cannot use with a TypeError (wrong kind of value) or a
ValueError (right kind, outside what it may be) whose message names the argument, the
value given and what it may be.

It refuses what diffusers' SDXL pipelines refuse (`StableDiffusionXLPipeline.check_inputs`
and the img2img pipeline's: sizes not divisible by 8, a strength outside [0, 1], steps that
are not a positive integer, a negative prompt beside prompt embeddings) and what they would
run silently or die on later: a denoising_start or denoising_end outside (0, 1) (diffusers
ignores those), an eta for a sampler that has none, Karras sigmas for a sampler that does
not use them, latents of the wrong shape.

Upstream, at pinned commits: diffusers' `check_inputs`
(https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py#L610).

>>> check_number("strength", 1.5, 0, 1, why="the fraction of the schedule img2img re-runs")
Traceback (most recent call last):
ValueError: strength must be a number in [0, 1] (the fraction of the schedule img2img re-runs); got 1.5
"""

import inspect
import math
import numbers
from types import SimpleNamespace

import torch
from PIL import Image

from .model.conditioning import PromptEmbeddings
from .sampling.samplers import SAMPLERS

OUTPUT_TYPES = ("pil", "pt", "latent")


def check_pipeline_arguments(pipe, arguments: dict) -> None:
    """Check `pipe(...)`'s arguments, given by name; those left out take `pipe.__call__`'s
    defaults. `pipe` supplies what the checks depend on: its kind, sizes and encoders.

    >>> from sdxl_edu import load_pipeline
    >>> check_pipeline_arguments(load_pipeline(), {"prompt": "a cat", "denoising_end": 1.5})
    Traceback (most recent call last):
    ValueError: denoising_end must be a number in (0, 1) (the fraction of the schedule ...); got 1.5
    """
    a = _with_defaults(pipe, arguments)
    _check_run(a)
    _check_guidance(a)
    images = _check_text(pipe, a)
    _check_image(pipe, a, images)
    _check_micro_conditioning(a)


def check_variation_arguments(pipe, arguments: dict) -> None:
    """Check an image-variation call's arguments (`sdxl_edu.variations`), given by name.

    >>> import tempfile
    >>> from sdxl_edu import load_pipeline
    >>> from sdxl_edu.testing import save_toy_checkpoint
    >>> pipe = load_pipeline(save_toy_checkpoint(tempfile.mkdtemp(), "unclip"))  # its embeddings are 24 wide
    >>> check_variation_arguments(pipe, {"image_embeds": torch.zeros(2, 7)})
    Traceback (most recent call last):
    ValueError: image_embeds must have shape (pictures, 24), the image tower's embeddings (pipe.encode_image); got (2, 7)
    """
    a = _with_defaults(pipe, arguments)
    _check_run(a)
    check_number("guidance_scale", a.guidance_scale)
    check_number("noise_level", a.noise_level, 0, pipe.noise_augmentor.max_noise_level - 1, integer=True,
                 why="how far the picture's embedding is noised before the UNet reads it")
    if (a.image is None) == (a.image_embeds is None):
        raise ValueError("give the picture to vary as image= (a PIL image or a list of them), or its CLIP "
                         "embedding as image_embeds=, not both" if a.image is not None else
                         "image variations need a picture: pass image= (a PIL image or a list of them) "
                         "or image_embeds= (CLIP image embeddings, pipe.encode_image's)")
    pictures = _check_variation_input(pipe, a)
    prompts = prompt_list("prompt", a.prompt)
    if not isinstance(a.prompt, str) and len(prompts) != pictures:
        raise ValueError(f"prompt has {len(prompts)} entries but {pictures} pictures were given: give one prompt "
                         "per picture, or a single string for all")
    if a.negative_prompt is not None:
        negatives = prompt_list("negative_prompt", a.negative_prompt)
        if not isinstance(a.negative_prompt, str) and len(negatives) != pictures:
            raise ValueError(f"negative_prompt has {len(negatives)} entries but {pictures} pictures were given")
    check_number("num_images_per_prompt", a.num_images_per_prompt, low=1, integer=True)
    _check_size_and_latents(pipe, a, pictures * a.num_images_per_prompt)


def _check_variation_input(pipe, a: SimpleNamespace) -> int:
    """image or image_embeds; returns the number of pictures."""
    dim, size = pipe.noise_augmentor.data_mean.shape[1], pipe.image_encoder.config.image_size
    if a.image_embeds is not None:
        check_type("image_embeds", a.image_embeds, torch.Tensor, "a tensor of CLIP image embeddings")
        if a.image_embeds.ndim != 2 or a.image_embeds.shape[1] != dim:
            raise ValueError(f"image_embeds must have shape (pictures, {dim}), the image tower's embeddings "
                             f"(pipe.encode_image); got {tuple(a.image_embeds.shape)}")
        return a.image_embeds.shape[0]
    check_type("image", a.image, (Image.Image, list, torch.Tensor), "a PIL image, a list of them or a tensor")
    if isinstance(a.image, list):
        if not a.image or not all(isinstance(im, Image.Image) for im in a.image):
            raise TypeError("image must be a PIL image or a non-empty list of PIL images")
        return len(a.image)
    if isinstance(a.image, torch.Tensor):
        if a.image.ndim != 4 or tuple(a.image.shape[1:]) != (3, size, size):
            raise ValueError(f"a tensor image is read as pixel values prepared for CLIP's image tower, shape "
                             f"(pictures, 3, {size}, {size}); got {tuple(a.image.shape)}. Pass PIL images to have "
                             "them resized and normalised as CLIP's image processor does")
        return a.image.shape[0]
    return 1


def _with_defaults(pipe, arguments: dict) -> SimpleNamespace:
    """`arguments` over `pipe.__call__`'s defaults; a TypeError names any it does not take."""
    parameters = inspect.signature(pipe.__call__).parameters
    unknown = set(arguments) - set(parameters)
    if unknown:
        raise TypeError(f"pipe() got unexpected arguments {sorted(unknown)}; it takes {list(parameters)}")
    return SimpleNamespace(**{**{name: p.default for name, p in parameters.items()}, **arguments})


def _check_run(a: SimpleNamespace) -> None:
    """num_inference_steps, sampler, eta, use_karras_sigmas, seed, generator, output_type, callback."""
    check_number("num_inference_steps", a.num_inference_steps, low=1, integer=True)
    if not isinstance(a.sampler, str) or a.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {a.sampler!r}: sampler must be one of {sorted(SAMPLERS)}")
    check_number("eta", a.eta, 0, 1, why="DDIM's share of fresh noise: 0 none, 1 DDPM's")
    if a.eta != 0 and a.sampler != "ddim":
        raise ValueError(f"eta={a.eta} is DDIM's, but sampler={a.sampler!r} fixes its own noise: "
                         "pass sampler='ddim' or leave eta at 0")
    check_type("use_karras_sigmas", a.use_karras_sigmas, bool, "True or False")
    if a.use_karras_sigmas and a.sampler != "dpmpp_2m":
        raise ValueError(f"use_karras_sigmas=True is implemented for sampler='dpmpp_2m' only; "
                         f"got sampler={a.sampler!r}")
    check_number("seed", a.seed, integer=True, optional=True)
    check_type("generator", a.generator, torch.Generator, "a torch.Generator", optional=True)
    if a.output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {a.output_type!r}: output_type must be one of {list(OUTPUT_TYPES)}")
    if a.callback is not None and not callable(a.callback):
        raise TypeError(f"callback must be a function of a Step, or None; got {a.callback!r:.60}")
    for name in ("record", "progress"):
        check_type(name, getattr(a, name), bool, "True or False")


def _check_guidance(a: SimpleNamespace) -> None:
    """guidance_scale, guidance_rescale and classifier guidance's three arguments."""
    check_number("guidance_scale", a.guidance_scale)
    check_number("guidance_rescale", a.guidance_rescale, 0, 1, why="phi, the share of the rescaled prediction")
    if a.classifier is not None and not callable(a.classifier):
        raise TypeError(f"classifier must be a function (x_t, t) -> logits, or None; got {a.classifier!r:.60}")
    if (a.classifier is None) != (a.class_labels is None):
        given, missing = ("classifier", "class_labels") if a.class_labels is None else ("class_labels", "classifier")
        raise ValueError(f"{given} was given without {missing}: classifier guidance needs both")
    check_number("classifier_scale", a.classifier_scale)


def _check_text(pipe, a: SimpleNamespace) -> int:
    """prompt, negative_prompt, prompt_embeds, clip_skip, force_zeros, num_images_per_prompt;
    returns the number of images."""
    if isinstance(a.prompt, Image.Image) or (isinstance(a.prompt, list) and a.prompt
                                             and isinstance(a.prompt[0], Image.Image)):
        raise TypeError(f"this {pipe.kind} model draws from a prompt: pass prompt= (text) and, for img2img, "
                        "image= (the picture). To draw variations of a picture without a prompt, load a Stable "
                        "unCLIP model: sdxl_edu.load_variation_pipeline()")
    prompts = prompt_list("prompt", a.prompt)
    if a.negative_prompt is not None:
        negatives = prompt_list("negative_prompt", a.negative_prompt)
        if not isinstance(a.negative_prompt, str) and len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}; "
                             "give one negative prompt per prompt, or a single string for all")
    if a.prompt_embeds is not None:
        check_type("prompt_embeds", a.prompt_embeds, PromptEmbeddings, "a PromptEmbeddings (pipe.encode_prompt's)")
        if a.negative_prompt is not None:
            raise ValueError("negative_prompt is not used with prompt_embeds, which hold the unconditional branch "
                             "already: encode both with pipe.encode_prompt(prompt, negative_prompt)")
        _check_prompt_embeds(a.prompt_embeds, len(prompts), a.guidance_scale != 1.0)
    layers = min(encoder.config.num_hidden_layers for _, encoder in pipe.conditioner.encoders)
    check_number("clip_skip", a.clip_skip, 0, layers - 1, integer=True, optional=True,
                 why=f"layers skipped before the penultimate one; the encoders have {layers}")
    check_type("force_zeros", a.force_zeros, bool, "True or False", optional=True)
    check_number("num_images_per_prompt", a.num_images_per_prompt, low=1, integer=True)
    return len(prompts) * a.num_images_per_prompt


def _check_prompt_embeds(text: PromptEmbeddings, n_prompts: int, classifier_free: bool) -> None:
    if text.context.shape[0] != n_prompts:
        raise ValueError(f"prompt_embeds holds {text.context.shape[0]} prompts but {n_prompts} were given: "
                         "pass the prompts they were encoded from")
    if classifier_free and text.negative_context is None:
        raise ValueError("guidance needs the unconditional branch: encode with do_classifier_free_guidance=True, "
                         "or pass guidance_scale=1")


def _check_image(pipe, a: SimpleNamespace, images: int) -> None:
    """height, width, image, mask_image, strength, denoising_start and _end, latents."""
    for name in ("image", "mask_image"):
        check_type(name, getattr(a, name), (Image.Image, list, torch.Tensor), "a PIL image, a list of them or "
                   "a tensor", optional=True)
    if pipe.kind == "refiner" and a.image is None:
        raise ValueError("the refiner refines an image: pass image= (a picture or the base's latents)")
    if a.mask_image is not None and a.image is None:
        raise ValueError("inpainting needs the picture to keep: pass image= along with mask_image=")
    check_number("strength", a.strength, 0, 1, why="the fraction of the schedule img2img re-runs")
    for name in ("denoising_start", "denoising_end"):
        check_number(name, getattr(a, name), 0, 1, open_interval=True, optional=True,
                     why="the fraction of the schedule where the base hands over to the refiner")
    if a.denoising_start is not None and a.image is None:
        raise ValueError(f"denoising_start={a.denoising_start} continues a run: pass image= (its latents)")
    if None not in (a.denoising_start, a.denoising_end) and a.denoising_start >= a.denoising_end:
        raise ValueError(f"denoising_start ({a.denoising_start}) must be below denoising_end ({a.denoising_end})")
    _check_size_and_latents(pipe, a, images, latents_are_noise=a.image is None)


def _check_size_and_latents(pipe, a: SimpleNamespace, images: int, latents_are_noise: bool = True) -> None:
    """height and width (whole latent pixels), and latents shaped as the noise they stand for."""
    for name in ("height", "width"):
        check_number(name, getattr(a, name), low=1, integer=True, optional=True)
    height, width = a.height or pipe.default_size, a.width or pipe.default_size
    pipe.check_image_size(height, width)
    check_type("latents", a.latents, torch.Tensor, "a tensor", optional=True)
    f = pipe.vae_scale_factor
    expected = (images, pipe.unet_config.in_channels, height // f, width // f)
    if a.latents is not None and latents_are_noise and tuple(a.latents.shape) != expected:
        raise ValueError(f"latents must have shape {expected} (images, channels, height / {f}, width / {f}); "
                         f"got {tuple(a.latents.shape)}")


def _check_micro_conditioning(a: SimpleNamespace) -> None:
    """The sizes and crops (pairs of pixel counts) and the aesthetic scores of both branches."""
    for name in ("original_size", "target_size", "negative_original_size", "negative_target_size"):
        check_pair(name, getattr(a, name), 1, "(height, width)")
    check_pair("crops_coords_top_left", a.crops_coords_top_left, 0, "(top, left)", optional=False)
    check_pair("negative_crops_coords_top_left", a.negative_crops_coords_top_left, 0, "(top, left)")
    for name in ("aesthetic_score", "negative_aesthetic_score"):
        check_number(name, getattr(a, name))


def check_number(name: str, value, low: float | None = None, high: float | None = None, *, integer: bool = False,
                 open_interval: bool = False, optional: bool = False, why: str = "") -> None:
    """TypeError unless `value` is a real number (a whole one if `integer`); ValueError unless
    it is finite and in [low, high] ((low, high) if `open_interval`). None passes if `optional`.

    >>> check_number("num_inference_steps", 0, low=1, integer=True)
    Traceback (most recent call last):
    ValueError: num_inference_steps must be a whole number >= 1; got 0
    >>> check_number("num_inference_steps", 2.5, low=1, integer=True)
    Traceback (most recent call last):
    TypeError: num_inference_steps must be a whole number >= 1; got 2.5 (float)
    """
    if value is None and optional:
        return
    kind = "a whole number" if integer else "a number"
    if low is not None and high is not None:
        allowed = f"{kind} in {'(' if open_interval else '['}{low}, {high}{')' if open_interval else ']'}"
    else:
        allowed = f"{kind} >= {low}" if low is not None else ("a whole number" if integer else "a finite number")
    allowed += f" ({why})" if why else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        raise TypeError(f"{name} must be {allowed}{' or None' if optional else ''}; got {value!r:.60} "
                        f"({type(value).__name__})")
    above = low is None or (value > low if open_interval else value >= low)
    below = high is None or (value < high if open_interval else value <= high)
    if not (math.isfinite(value) and above and below):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")


def check_type(name: str, value, types, what: str, optional: bool = False) -> None:
    """TypeError unless `value` is an instance of `types` (`what`, in words), or None if `optional`.

    >>> check_type("record", "yes", bool, "True or False")
    Traceback (most recent call last):
    TypeError: record must be True or False; got 'yes' (str)
    """
    if not (isinstance(value, types) or (value is None and optional)):
        raise TypeError(f"{name} must be {what}{' or None' if optional else ''}; got {value!r:.60} "
                        f"({type(value).__name__})")


def check_pair(name: str, value, low: int, what: str, optional: bool = True) -> None:
    """A size or a crop: two numbers of pixels, each at least `low`; None passes if `optional`.

    >>> check_pair("original_size", (1024,), 1, "(height, width)")
    Traceback (most recent call last):
    TypeError: original_size must be a pair (height, width) of pixel counts >= 1; got (1024,)
    """
    if value is None and optional:
        return
    message = f"{name} must be a pair {what} of pixel counts >= {low}; got {value!r:.60}"
    if not (isinstance(value, tuple | list) and len(value) == 2
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)):
        raise TypeError(message)
    if min(value) < low:
        raise ValueError(message)


def prompt_list(name: str, value) -> list[str]:
    """A prompt argument as a list: a string, or a non-empty list of strings.

    >>> prompt_list("prompt", "a cat"), prompt_list("prompt", ("a cat", "a dog"))
    (['a cat'], ['a cat', 'a dog'])
    """
    if isinstance(value, str):
        return [value]
    if not (isinstance(value, list | tuple) and all(isinstance(p, str) for p in value)):
        raise TypeError(f"{name} must be a string or a list of strings; got {value!r:.60} ({type(value).__name__})")
    if not value:
        raise ValueError(f"{name} must hold at least one prompt; got an empty list")
    return list(value)
