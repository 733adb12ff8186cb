"""Solutions to the lessons' exercises, one section per lesson.

Each solution is what you would type into the exercise cell; `tests/test_lessons.py` runs every
checker on it. Try the exercise before reading on.
"""

# ----------------------------------------------------------------------------- 01 the pipeline tour

# Each of the 20 steps runs the UNet once on a batch of two: [unconditional, conditional].
unet_rows = 40


def latent_shape(height, width):
    # SDXL's VAE: 4 latent channels, 8 x 8 pixels per latent pixel
    return 4, height // 8, width // 8


# The refiner keeps OpenCLIP bigG only: 1280 wide (the base concatenates 768 + 1280).
refiner_context_width = 1280

# ----------------------------------------------------------------------------- 02 forward and reverse diffusion


def q_sample(x0, t, noise, alphas_cumprod):
    alpha_bar = alphas_cumprod[t]
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def sigma_from_alpha_bar(alpha_bar):
    return ((1 - alpha_bar) / alpha_bar).sqrt()


# sqrt(alpha_bar_951) on SDXL's schedule: where its 20 leading steps start
signal_at_first_step = 0.090

# ----------------------------------------------------------------------------- 03 guidance


def cfg(eps_uncond, eps_cond, w):
    return eps_uncond + w * (eps_cond - eps_uncond)


guidance_cost = 2  # two predictions per step, in one batch of two

# ----------------------------------------------------------------------------- 04 negative prompts

negative_at_scale_one = False  # w = 1 leaves eps_cond alone; the negative branch cancels
zeros_vs_empty = False  # "" still has a start and an end token, which the encoders turn into vectors

# ----------------------------------------------------------------------------- 05 CLIP skip


clip_skip_layer_number = 30  # bigG: hidden states 0..32; the default reads 31, clip_skip=1 reads 30


def context_split(pipe):
    return pipe.text_encoder.config.hidden_size  # the first encoder's numbers come first


# ----------------------------------------------------------------------------- 06 attention

# level 1: 2 blocks x (2 encoder + 3 decoder layers) = 10; level 2: 10 x 5 = 50; middle: 10
transformer_blocks = 70


def attention_entries(h, w, tokens):
    pixels = h * w
    return pixels * pixels, pixels * tokens


# ----------------------------------------------------------------------------- 07 size and crop

y_width = 2560  # the refiner's: pooled 1280 + 5 numbers (sizes, crop, aesthetic score) x 256 features


def micro_ids(original_size, crop_top_left, target_size):
    return [*original_size, *crop_top_left, *target_size]  # height (top) before width (left)

# ----------------------------------------------------------------------------- 08 the refiner

handoff_steps = 32  # of 40: the steps with t >= 200
refiner_img2img_steps = 15  # int(50 x 0.3)

# ----------------------------------------------------------------------------- 09 img2img

similarity_trend = "fall"
img2img_steps = 12  # int(20 x 0.6)

# ----------------------------------------------------------------------------- 10 the VAE


unscaled_std = 1 / 0.13025  # the released VAE's latents before the factor: about 7.68
latent_compression = 3 * 8 * 8 / 4  # 48 numbers of RGB per number of latent

# ----------------------------------------------------------------------------- 11 samplers

ancestral_step = (1.0**2 / 2.0, 1.0 * (2.0**2 - 1.0**2) ** 0.5 / 2.0)  # (sigma_down, sigma_up) from 2 to 1


def my_euler(denoise, x, plan):
    for t, sigma, sigma_next in zip(plan.timesteps, plan.sigmas[:-1], plan.sigmas[1:]):
        eps = denoise(x, sigma, t)  # the noise the model sees at this sigma
        x = x + (sigma_next - sigma) * eps  # one Euler step of dx/dsigma = eps
    return x

# ----------------------------------------------------------------------------- 12 from SD 1.x to SDXL

sd21_context_width = 1024  # OpenCLIP ViT-H alone
sd21_latent_side = 96  # 768 px / 8
sd15_busiest_level = 0  # 64 x 64 latents with attention: the most pixels, and self-attention's square
sd15_transformer_blocks = 16  # 1 x (2 encoder + 3 decoder blocks) at each of 3 levels, and 1 in the middle

# ----------------------------------------------------------------------------- 13 image variations

unclip_l_y_width = 1536  # CLIP ViT-L's 768-wide image embedding, and its noise level's 768-wide embedding


def noise_embedding(e, level, noise, alpha_bar):
    return alpha_bar[level].sqrt() * e + (1 - alpha_bar[level]).sqrt() * noise  # lesson 2's q_sample, on a vector


# ----------------------------------------------------------------------------- 14 training the UNet

def my_loss(unet, x0, t, noise, context, y, alphas_cumprod):
    alpha_bar = alphas_cumprod[t].reshape(-1, 1, 1, 1)  # one per picture, broadcast over (C, H, W)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    return (unet(x_t, t, context, y) - noise).pow(2).mean()  # SDXL predicts the noise


def my_dropout(context, pooled, keep):
    keep = keep.float()
    return context * keep[:, None, None], pooled * keep[:, None]  # zeros, not the empty prompt


def v_loss_at_init(alphas_cumprod, variance=0.5):
    # E[v^2] = alpha_bar E[eps^2] + (1 - alpha_bar) E[x0^2]: eps and x0 independent, the cross term vanishes
    return float((alphas_cumprod + variance * (1 - alphas_cumprod)).mean())  # 0.687 on SDXL's schedule

# ----------------------------------------------------------------------------- 15 composition and attention control

def inject(source, target, step, cross_steps):
    return source if step < cross_steps else target  # the source's layout first, the edit's own maps after


def reweight(maps, positions, c):
    maps = maps.clone()
    maps[..., positions] *= c  # after the softmax, not renormalised
    return maps


def reach(j):
    return range(j, 77)  # causal encoders: the word and every later position, the padding included


__all__ = [name for name in dir() if not name.startswith("_")]
