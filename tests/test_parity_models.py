"""Our UNet and VAE compute what diffusers' do with the same (random) weights, fp32 CPU."""

import pytest
import torch
from diffusers import AutoencoderKL as DiffusersVAE
from diffusers import UNet2DConditionModel
from tiny import TINY, TINY_BASE, TINY_REFINER, TINY_VAE, randomize, to_diffusers

from sdxl_edu.model.conditioning import micro_conditioning_ids, vector_y
from sdxl_edu.loading.diffusers import diffusers_unet_names, diffusers_vae_names
from sdxl_edu.model.unet import UNet
from sdxl_edu.model.vae import AutoencoderKL

TOL = 1e-4


def unet_pair(config, diffusers_config):
    ours = randomize(UNet(config), seed=0)
    theirs = to_diffusers(ours, diffusers_unet_names(config), UNet2DConditionModel(**diffusers_config))
    return ours, theirs


@pytest.mark.parametrize("kind,size", [("base", (16, 16)), ("base", (18, 14)), ("refiner", (16, 24))])
@torch.no_grad()
def test_unet_matches_diffusers(kind, size):
    config = TINY_BASE if kind == "base" else TINY_REFINER
    ours, theirs = unet_pair(config, TINY[f"tiny_diffusers_{kind}_like"])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, *size, generator=g)
    context = torch.randn(2, 77, config.context_dim, generator=g)
    pooled = torch.randn(2, 32, generator=g)
    if kind == "base":
        ids = torch.stack([micro_conditioning_ids((64, 48), (8, 0), target_size=(64, 64)),
                           micro_conditioning_ids((128, 128), (0, 16), target_size=(48, 80))])
    else:
        ids = torch.stack([micro_conditioning_ids((64, 64), (0, 0), aesthetic_score=6.0),
                           micro_conditioning_ids((32, 64), (4, 4), aesthetic_score=2.5)])
    t = torch.tensor([981, 3])
    eps = ours(x, t, context, vector_y(pooled, ids))
    reference = theirs(x, t, encoder_hidden_states=context,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
    assert eps.abs().mean() > 0.1  # a real signal, not zeros
    assert (eps - reference).abs().max() < TOL


@torch.no_grad()
def test_vector_y_is_what_diffusers_adds_to_the_time_embedding():
    """Compare y through the UNet's own label embedding with diffusers' add_embedding path."""
    ours, theirs = unet_pair(TINY_BASE, TINY["tiny_diffusers_base_like"])
    pooled = torch.randn(3, 32)
    ids = micro_conditioning_ids((1024, 768), (12, 40), target_size=(896, 1152))
    y = vector_y(pooled, ids)
    time_embeds = theirs.add_time_proj(ids.repeat(3, 1).flatten()).reshape(3, -1)
    reference = theirs.add_embedding(torch.cat([pooled, time_embeds], dim=-1))
    assert (ours.label_emb(y) - reference).abs().max() < TOL


@pytest.mark.parametrize("size", [(64, 64), (40, 56)])
@torch.no_grad()
def test_vae_matches_diffusers(size):
    ours = randomize(AutoencoderKL(TINY_VAE), seed=3)
    theirs = to_diffusers(ours, diffusers_vae_names(TINY_VAE), DiffusersVAE(**TINY["tiny_vae_diffusers"]))
    image = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    q, q_ref = ours.encode(image), theirs.encode(image).latent_dist
    assert (q.mean - q_ref.mean).abs().max() < TOL
    assert (q.logvar - q_ref.logvar).abs().max() < TOL
    decoded = ours.decode(q.mean)
    assert decoded.shape == image.shape
    assert (decoded - theirs.decode(q.mean).sample).abs().max() < TOL


@torch.no_grad()
def test_vae_downsampling_pads_asymmetrically():
    """Padding (0, 1, 0, 1), as the released encoder was trained; padding=1 on all sides
    keeps the shape and changes the numbers, so compare against a symmetric variant."""
    ours = randomize(AutoencoderKL(TINY_VAE), seed=3)
    image = torch.rand(1, 3, 32, 32)
    mean = ours.encode(image).mean
    conv = ours.encoder.down[0].downsample.conv
    conv.padding = (1, 1)
    ours.encoder.down[0].downsample.forward = lambda x: conv(x)
    assert ours.encode(image).mean.shape == mean.shape
    assert (ours.encode(image).mean - mean).abs().max() > 1e-3
