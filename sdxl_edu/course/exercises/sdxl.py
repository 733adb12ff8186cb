"""Checkers for the exercises of lessons 1 to 11, on SDXL's own parts (see `sdxl_edu.course.exercises`)."""

import torch

from .verdict import NOT_YET, Verdict, close


# ----------------------------------------------------------------------------- 01 the pipeline tour

def unet_rows(answer, pipe=None, steps: int = 20) -> Verdict:
    """How many pictures' worth of UNet evaluations (batch rows) does one guided picture cost
    in `steps` steps? Counted with a forward hook when a pipeline is given.

    >>> from sdxl_edu import load_pipeline
    >>> unet_rows(40, load_pipeline()).ok  # 20 steps, two branches each
    True
    """
    if answer is None:
        return NOT_YET
    truth = 2 * steps
    if pipe is not None:
        rows = []
        handle = pipe.unet.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
        try:
            pipe("a red circle", num_inference_steps=steps, seed=0, progress=False, output_type="latent")
        finally:
            handle.remove()
        truth = sum(rows)
    if answer == truth:
        return Verdict(True, f"{truth}: each of the {steps} steps runs the UNet on a batch of two, the "
                             "unconditional and the conditional branch of classifier-free guidance.")
    hint = "one per step is not all: guidance needs two predictions" if answer == steps else \
        "count the steps and the guidance branches"
    return Verdict(False, f"{answer} is not what was counted; {hint}.")


def latent_shape_rule(fn) -> Verdict:
    """`fn(height, width) -> (channels, h, w)` of SDXL's latents.

    >>> latent_shape_rule(lambda h, w: (4, h // 8, w // 8)).ok
    True
    """
    from ...config import SDXL_VAE

    if fn is None:
        return NOT_YET
    f, c = SDXL_VAE.downsampling_factor, SDXL_VAE.z_channels
    for height, width in ((1024, 1024), (832, 1216), (512, 768)):
        truth = (c, height // f, width // f)
        got = tuple(fn(height, width))
        if got != truth:
            return Verdict(False, f"for {height}x{width} you give {got}, SDXL's VAE makes {truth}: "
                                  f"{c} channels, {f} pixels per latent pixel along each side.")
    return Verdict(True, f"{c} channels at 1/{f} of the size: a 1024x1024x3 picture is 128x128x4, "
                         f"{1024 * 1024 * 3 // (128 * 128 * 4)} times fewer values.")


def refiner_context_width(answer) -> Verdict:
    """The width of the refiner's text context (SDXL refiner 1.0).

    >>> refiner_context_width(2048)
    ✗ Not quite: 2048 is the base's (768 + 1280); the refiner has no CLIP ViT-L.
    """
    from ...config import SDXL_BASE, SDXL_REFINER

    if answer is None:
        return NOT_YET
    if answer == SDXL_REFINER.context_dim:
        return Verdict(True, f"{answer}: the refiner reads OpenCLIP bigG alone, whose hidden size is {answer}.")
    if answer == SDXL_BASE.context_dim:
        return Verdict(False, f"{answer} is the base's (768 + 1280); the refiner has no CLIP ViT-L.")
    return Verdict(False, f"{answer}: look at which text encoders the refiner keeps, and their widths.")


# ----------------------------------------------------------------------------- 02 diffusion

def q_sample_rule(fn, schedule) -> Verdict:
    """`fn(x0, t, noise, alphas_cumprod) -> x_t` must equal the forward process.

    >>> from sdxl_edu.sampling.schedule import NoiseSchedule
    >>> q_sample_rule(lambda x0, t, eps, ab: ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * eps, NoiseSchedule()).ok
    True
    """
    if fn is None:
        return NOT_YET
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in (0, 250, 999):
        truth = schedule.q_sample(x0, t, noise)
        got = fn(x0, t, noise, schedule.alphas_cumprod)
        if not close(got, truth):
            return Verdict(False, f"at t = {t} your x_t differs from sqrt(alpha_bar_t) x0 + "
                                  "sqrt(1 - alpha_bar_t) noise (variance preserving: the two weights' squares sum to 1).")
    return Verdict(True, "x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, at every t tried.")


def sigma_rule(fn, schedule) -> Verdict:
    """`fn(alpha_bar) -> sigma`, the noise level of the variance-exploding view.

    >>> from sdxl_edu.sampling.schedule import NoiseSchedule
    >>> sigma_rule(lambda ab: ((1 - ab) / ab).sqrt(), NoiseSchedule()).ok
    True
    """
    if fn is None:
        return NOT_YET
    ab = schedule.alphas_cumprod[[1, 500, 998]]
    truth = ((1 - ab) / ab).sqrt()
    got = fn(ab)
    if close(got, truth, 1e-3):
        return Verdict(True, "sigma = sqrt((1 - alpha_bar) / alpha_bar): x_t / sqrt(alpha_bar) = x0 + sigma eps.")
    return Verdict(False, "divide x_t by sqrt(alpha_bar_t): the noise that is left has standard deviation sigma.")


def terminal_signal(answer, schedule, t: int = 999) -> Verdict:
    """The fraction of x0 left in x_t (sqrt(alpha_bar_t)), to 2 digits; by default at the last
    timestep, t = 999.

    >>> from sdxl_edu.sampling.schedule import NoiseSchedule
    >>> terminal_signal(0.07, NoiseSchedule()).ok  # SDXL's schedule
    True
    >>> terminal_signal(0.07, NoiseSchedule(), t=951).ok  # where SDXL's 20 leading steps start
    False
    """
    if answer is None:
        return NOT_YET
    truth = float(schedule.alphas_cumprod[t].sqrt())
    if abs(answer - truth) < 0.005:
        return Verdict(True, f"sqrt(alpha_bar_{t}) = {truth:.4f}: x_{t} still holds that much of the picture.")
    return Verdict(False, f"it is {truth:.4f}: x_{t} = sqrt(alpha_bar_{t}) x0 + sqrt(1 - alpha_bar_{t}) eps, and "
                          "alpha_bar is the product of (1 - beta) up to t.")


# ----------------------------------------------------------------------------- 03 guidance

def classifier_free_guidance_rule(fn) -> Verdict:
    """`fn(eps_uncond, eps_cond, w) -> eps`."""
    if fn is None:
        return NOT_YET
    g = torch.Generator().manual_seed(0)
    eps_u, eps_c = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    for w in (0.0, 1.0, 3.0, 7.5):
        truth = eps_u + w * (eps_c - eps_u)
        got = fn(eps_u, eps_c, w)
        if not close(got, truth):
            if close(got, eps_c):
                return Verdict(False, f"with w = {w} your function gives eps_cond, but guidance moves past it: "
                                      "eps_uncond + w (eps_cond - eps_uncond).")
            return Verdict(False, f"with w = {w} the result differs from eps_uncond + w (eps_cond - eps_uncond).")
    return Verdict(True, "eps = eps_uncond + w (eps_cond - eps_uncond) = w eps_cond + (1 - w) eps_uncond: "
                         "w = 0 is the unconditional model, w = 1 the conditional one.")


def guidance_cost(answer, measured_ratio: float) -> Verdict:
    """Predict: CFG's time per step over one UNet pass ("about 1", "about 2", "about 4").

    >>> guidance_cost(2, measured_ratio=1.8).ok
    True
    """
    if answer is None:
        return NOT_YET
    truth = min((1, 2, 4), key=lambda r: abs(r - measured_ratio))
    if answer == truth:
        return Verdict(True, f"measured {measured_ratio:.2f}: two predictions per step, one batch of two.")
    return Verdict(False, f"measured {measured_ratio:.2f}: CFG needs eps_cond and eps_uncond at every step.")


# ----------------------------------------------------------------------------- 04 negative prompts

def negative_at_scale_one(answer, pipe) -> Verdict:
    """At guidance_scale = 1, does a negative prompt change the picture? (True / False.) The checker
    generates the same picture with and without one and compares.

    >>> from sdxl_edu import load_pipeline
    >>> negative_at_scale_one(False, load_pipeline()).ok
    True
    """
    if answer is None:
        return NOT_YET
    kwargs = dict(seed=0, num_inference_steps=4, guidance_scale=1.0, output_type="latent", progress=False)
    plain = pipe("a red circle", **kwargs).latents
    negated = pipe("a red circle", negative_prompt="red", **kwargs).latents
    truth = not torch.equal(plain, negated)
    if bool(answer) == truth:
        return Verdict(True, "no change: eps = eps_neg + 1 x (eps_cond - eps_neg) = eps_cond, so the negative branch "
                             "cancels and is not even computed (diffusers skips guidance at any scale <= 1).")
    return Verdict(False, "put w = 1 into eps = eps_neg + w (eps_cond - eps_neg): which branch is left?")


def zeros_vs_empty(answer, pipe) -> Verdict:
    """Is the embedding of the empty prompt "" all zeros? (True / False), checked on `pipe`.

    >>> from sdxl_edu import load_pipeline
    >>> zeros_vs_empty(False, load_pipeline()).ok
    True
    """
    if answer is None:
        return NOT_YET
    text = pipe.encode_prompt("a circle", negative_prompt="", force_zeros=False)
    truth = bool((text.negative_context == 0).all() and (text.negative_pooled == 0).all())
    if bool(answer) == truth:
        return Verdict(True, f"{truth}: \"\" still has a start and an end token that the text encoders turn "
                             "into vectors; zeros are a different unconditional branch (SDXL's own code uses them).")
    return Verdict(False, "encode \"\" and look: the start and end tokens still pass through both encoders.")


# ----------------------------------------------------------------------------- 05 CLIP skip

def clip_skip_layer_number(answer, layers: int = 32, clip_skip: int | None = 1) -> Verdict:
    """Which hidden state (0 = the token embeddings, then one per layer) does SDXL read from an
    encoder of `layers` layers with `clip_skip`? Computed with the library's own rule.

    >>> clip_skip_layer_number(30).ok  # bigG's 32 layers, clip_skip=1
    True
    """
    from ...model.text import clip_skip_layer

    if answer is None:
        return NOT_YET
    truth = layers + 1 + clip_skip_layer(clip_skip)  # hidden_states has layers + 1 entries
    if answer == truth:
        return Verdict(True, f"{truth}: {layers + 1} hidden states (the embeddings and {layers} layers); the default "
                             f"reads the penultimate, number {layers - 1}, and clip_skip={clip_skip} goes "
                             f"{clip_skip} further back.")
    if answer == truth + 1:
        return Verdict(False, "one too late: SDXL's default is already the penultimate layer, before clip skip.")
    return Verdict(False, f"count {layers + 1} hidden states, numbered 0 to {layers}; the default reads the "
                          "penultimate, and clip_skip=k goes k further back.")


def context_split(answer, pipe) -> Verdict:
    """At which position of each token's context vector do the second encoder's numbers start?
    Measured: the context of a prompt is compared with the second encoder's penultimate layer.

    >>> from sdxl_edu import load_pipeline
    >>> context_split(64, load_pipeline()).ok  # nano: 64 from the first encoder, then 128
    True
    """
    from ...model.text import text_hidden_states, tokenize

    if answer is None:
        return NOT_YET
    context = pipe.encode_prompt("a red circle", do_classifier_free_guidance=False).context[0].float().cpu()
    with torch.no_grad():
        hidden, _ = text_hidden_states(pipe.text_encoder_2, tokenize(pipe.tokenizer_2, ["a red circle"]))
    second = hidden[-2][0].float().cpu()
    truth = context.shape[-1] - second.shape[-1]
    if not close(context[:, truth:], second, 1e-4):
        raise RuntimeError("the context's last columns are not the second encoder's penultimate layer")
    if answer == truth:
        return Verdict(True, f"{truth}: the first encoder's {truth} numbers come first, then the second's "
                             f"{second.shape[-1]}, token by token ({context.shape[-1]} in all).")
    return Verdict(False, "the first encoder (CLIP ViT-L's role) comes first in the concatenation; its width is "
                          "where the second starts.")


# ----------------------------------------------------------------------------- 06 attention

def transformer_blocks(answer, config) -> Verdict:
    """How many BasicTransformerBlocks does a UNet with this config hold?

    >>> from sdxl_edu.config import SDXL_BASE
    >>> transformer_blocks(70, SDXL_BASE).ok
    True
    """
    from ...model.unet import BasicTransformerBlock, UNet

    if answer is None:
        return NOT_YET
    with torch.device("meta"):
        n = sum(isinstance(m, BasicTransformerBlock) for m in UNet(config).modules())
    if answer == n:
        return Verdict(True, f"{n}: depth x (2 encoder + 3 decoder blocks) per level, plus the middle.")
    return Verdict(False, f"it is {n}: each level has 2 encoder and 3 decoder blocks with attention, "
                          "each with `depth` transformer blocks, and the middle has its own.")


def attention_scores_size(fn) -> Verdict:
    """`fn(h, w, tokens) -> (self_attention_entries, cross_attention_entries)` per head.

    >>> attention_scores_size(lambda h, w, n: ((h * w) ** 2, h * w * n)).ok
    True
    """
    if fn is None:
        return NOT_YET
    for h, w, tokens in ((32, 32, 77), (64, 64, 77), (8, 16, 77)):
        truth = ((h * w) ** 2, h * w * tokens)
        if tuple(fn(h, w, tokens)) != truth:
            return Verdict(False, f"for a {h}x{w} feature map: self-attention compares every pixel with every "
                                  f"pixel, {truth[0]}; cross-attention every pixel with every token, {truth[1]}.")
    return Verdict(True, "self-attention grows with the square of the pixel count: why SDXL has none at the "
                         "128x128 level.")


# ----------------------------------------------------------------------------- 07 size and crop

def y_width(answer, config) -> Verdict:
    """The width of y: the pooled embedding (1280, bigG's) and the micro-conditioning numbers,
    each as 256 Fourier features: 6 for the base (sizes, crop, target), 5 for the refiner
    (sizes, crop, aesthetic score).

    >>> from sdxl_edu.config import SDXL_REFINER
    >>> y_width(2560, SDXL_REFINER).ok, y_width(2816, SDXL_REFINER).ok  # the refiner: pooled + 5 x 256
    (True, False)
    """
    if answer is None:
        return NOT_YET
    numbers = (config.adm_in_channels - 1280) // 256
    if answer == config.adm_in_channels:
        return Verdict(True, f"{answer} = pooled 1280 + {numbers} x 256: each micro-conditioning number becomes 256 "
                             "sinusoidal features.")
    return Verdict(False, f"the UNet expects {config.adm_in_channels}: count the pooled width and the "
                          "micro-conditioning numbers this model reads, each as 256 sinusoidal features.")


def micro_ids_rule(fn) -> Verdict:
    """`fn(original_size, crop_top_left, target_size) -> six numbers` in the order SDXL's UNet
    reads them (each argument is (height, width) or (top, left)).

    >>> micro_ids_rule(lambda o, c, t: [*o, *c, *t]).ok
    True
    """
    from ...model.conditioning import micro_conditioning_ids

    if fn is None:
        return NOT_YET
    for args in (((1024, 1024), (0, 0), (1024, 1024)), ((512, 768), (16, 32), (832, 1216))):
        truth = micro_conditioning_ids(*args[:2], target_size=args[2]).tolist()
        got = [float(v) for v in fn(*args)]
        if got != truth:
            return Verdict(False, f"for {args} you give {got}; SDXL reads {truth}: original size, crop, target "
                                  "size, each height (or top) first.")
    return Verdict(True, "original (h, w), crop (top, left), target (h, w): height before width, as in sgm's "
                         "conditioner.")


# ----------------------------------------------------------------------------- 08 refiner

def handoff_steps(answer, pipe, steps: int = 40, denoising_end: float = 0.8) -> Verdict:
    """How many of `steps` steps does the base run before handing off at `denoising_end`?

    >>> from sdxl_edu import load_pipeline
    >>> handoff_steps(32, load_pipeline(), steps=40).ok
    True
    """
    if answer is None:
        return NOT_YET
    n = len(pipe._plan("euler", steps, False, False, 1.0, None, denoising_end))
    if answer == n:
        return Verdict(True, f"{n}: the steps with t >= {round(1000 * (1 - denoising_end))}; the refiner runs "
                             f"the other {steps - n}.")
    return Verdict(False, f"the base runs {n}: the steps whose timestep is at least "
                          f"{round(1000 * (1 - denoising_end))}.")


def img2img_steps(answer, strength: float = 0.3, steps: int = 50) -> Verdict:
    """How many steps does img2img run with this strength and step count?

    >>> img2img_steps(15, strength=0.3, steps=50).ok
    True
    """
    if answer is None:
        return NOT_YET
    n = min(int(steps * strength), steps)
    if answer == n:
        return Verdict(True, f"int({steps} x {strength}) = {n}: strength is the fraction of the schedule re-run.")
    return Verdict(False, f"it runs int(steps x strength) = {n}.")


# ----------------------------------------------------------------------------- 09 img2img

def similarity_trend(answer, similarities: dict) -> Verdict:
    """Predict: as strength grows, does similarity to the input 'rise' or 'fall'?

    >>> similarity_trend("fall", {0.2: 0.95, 1.0: 0.85}).ok
    True
    """
    if answer is None:
        return NOT_YET
    values = [similarities[k] for k in sorted(similarities)]
    truth = "fall" if values[-1] < values[0] else "rise"
    if str(answer).lower() == truth:
        return Verdict(True, "more of the schedule re-run means more of the picture redrawn.")
    return Verdict(False, f"measured: {', '.join(f'{k}: {v:.2f}' for k, v in sorted(similarities.items()))}.")


# ----------------------------------------------------------------------------- 10 VAE

def unscaled_std(answer, vae_config) -> Verdict:
    """The standard deviation of the VAE's latents before the scaling factor: what the UNet would
    be fed, against noise of standard deviation 1, if the factor were left out.

    >>> from sdxl_edu.config import SDXL_VAE
    >>> unscaled_std(7.68, SDXL_VAE).ok
    True
    """
    if answer is None:
        return NOT_YET
    truth = 1 / vae_config.scaling_factor
    if abs(float(answer) - truth) / truth < 0.01:
        return Verdict(True, f"1 / {vae_config.scaling_factor} = {truth:.2f}: the factor was measured as 1 / std, so "
                             "unscaled latents would be that many times louder than the noise, and every noise level "
                             "of the schedule would mean a different signal-to-noise ratio than it was designed for.")
    return Verdict(False, f"the factor is 1 / std of the training latents; invert {vae_config.scaling_factor}.")


def latent_compression(answer, vae_config) -> Verdict:
    """How many times fewer numbers the UNet handles than the picture has (RGB pixels over
    latent values), from the VAE's downsampling factor f and its latent channels: 3 f^2 / c.

    >>> from sdxl_edu.config import SDXL_VAE
    >>> latent_compression(48, SDXL_VAE).ok
    True
    """
    if answer is None:
        return NOT_YET
    f, c = vae_config.downsampling_factor, vae_config.z_channels
    truth = 3 * f * f / c
    if abs(float(answer) - truth) < 1e-6:
        return Verdict(True, f"3 x {f} x {f} / {c} = {truth:.0f}: a {f}x{f} patch of RGB pixels becomes {c} numbers. "
                             "That is why latent diffusion is affordable at 1024 px.")
    if abs(float(answer) - f * f) < 1e-6:
        return Verdict(False, f"{f * f} counts pixels per latent pixel; count numbers: 3 colour values per pixel, "
                              f"{c} channels per latent pixel.")
    return Verdict(False, f"count the numbers in one {f}x{f} patch of RGB pixels and in the latent pixel it becomes.")


# ----------------------------------------------------------------------------- 11 samplers

def ancestral_step(answer, sigma: float = 2.0, sigma_next: float = 1.0) -> Verdict:
    """`(sigma_down, sigma_up)` of the ancestral step from `sigma` to `sigma_next`: how far down
    the deterministic part goes, and how much fresh noise comes back. The truth is computed from
    DDPM's posterior q(x_prev | x_t, x0) (Ho et al. 2020, eq. 7) in alpha-bar terms, then moved to
    the sigma view, not from the sampler's code.

    >>> ancestral_step((0.5, 0.866)).ok
    True
    >>> ancestral_step((1.0, 0.0)).ok  # that is Euler's step: no fresh noise
    False
    """
    if answer is None:
        return NOT_YET
    a_t, a_prev = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)  # sigma^2 = (1 - abar) / abar
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)  # posterior variance, beta tilde
    x_weight = (a_t / a_prev) * (1 - a_prev) / (1 - a_t)  # the posterior mean's weight on x_t, sigma view
    truth = (x_weight * sigma, (variance / a_prev) ** 0.5)  # x_down = x0 + sigma_down eps: weight sigma_down/sigma
    try:
        down, up = (float(v) for v in answer)
    except (TypeError, ValueError):
        return Verdict(False, "answer with two numbers, (sigma_down, sigma_up).")
    if abs(down - truth[0]) < 1e-2 and abs(up - truth[1]) < 1e-2:
        return Verdict(True, f"({truth[0]:.3f}, {truth[1]:.3f}): down past sigma_next, then noise back up; "
                             f"sigma_down^2 + sigma_up^2 = {truth[0] ** 2 + truth[1] ** 2:.3f} = sigma_next^2. "
                             "These are the mean and variance of DDPM's posterior.")
    if abs(down - sigma_next) < 1e-2 and abs(up) < 1e-2:
        return Verdict(False, "that is Euler's deterministic step; the ancestral one goes further down and adds "
                              "noise back.")
    return Verdict(False, f"use sigma_down = sigma_next^2 / sigma and sigma_up = sigma_next sqrt(sigma^2 - "
                          f"sigma_next^2) / sigma with sigma = {sigma}, sigma_next = {sigma_next}.")


def euler_loop_rule(fn) -> Verdict:
    """`fn(denoise, x, plan) -> x`: the learner's Euler sampler, walking `plan.timesteps` and
    `plan.sigmas` (one sigma more than steps, the last 0) with `eps = denoise(x, sigma, t)`,
    compared with the library's `euler` on two stand-in models, to 1e-5.

    >>> def mine(denoise, x, plan):
    ...     for t, sigma, sigma_next in zip(plan.timesteps, plan.sigmas[:-1], plan.sigmas[1:]):
    ...         x = x + (sigma_next - sigma) * denoise(x, sigma, t)
    ...     return x
    >>> euler_loop_rule(mine).ok
    True
    """
    from ...sampling.samplers import euler, make_plan
    from ...sampling.schedule import NoiseSchedule

    if fn is None:
        return NOT_YET
    models = {"tanh(x)": lambda x, sigma, t: torch.tanh(x),
              "one that reads sigma and t": lambda x, sigma, t: x * sigma / (sigma**2 + 1) + t / 1000}
    for steps, (name, denoise) in zip((8, 20), models.items()):
        plan = make_plan(NoiseSchedule(), "euler", steps)
        x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(steps)) * plan.init_noise_sigma
        truth, got = euler(denoise, x.clone(), plan), fn(denoise, x.clone(), plan)
        if got is None:  # the template's body, not written yet
            return NOT_YET
        if tuple(got.shape) != tuple(truth.shape):
            return Verdict(False, "return the final x, of the same shape as the x you were given.")
        if not close(got, truth, 1e-5):
            return Verdict(False, f"with {steps} steps on the model {name}, yours ends "
                                  f"{(got - truth).abs().max():.2e} away from `euler`: each step is "
                                  "x + (sigma_next - sigma) eps, with eps from denoise(x, sigma, t) at the step's "
                                  "own sigma and timestep.")
    return Verdict(True, "your loop is the library's Euler sampler, step for step: Karras et al.'s "
                         "Algorithm 2 without churn.")
