"""unCLIP: a picture's CLIP image embedding, noise-augmented, in the UNet's vector y.

Stable unCLIP (SD 2.1 unCLIP, the model behind Stability's "Reimagine" image variations)
is Stable Diffusion with one change at the UNet's input: the vector y, which SDXL fills
with the pooled text embedding and the sizes, carries the CLIP *image* embedding of a
picture instead. It is the decoder of DALL-E 2 (Ramesh et al. 2022, "Hierarchical
Text-Conditional Image Generation with CLIP Latents") on a latent diffusion model: give it
a picture's embedding and it draws new pictures that embed alike, the same content in a
new layout. img2img starts from the picture's latents and so keeps its layout; unCLIP
never sees the latents, only what CLIP's image tower says about the picture.

The embedding e (d numbers) is noised before the UNet reads it, on a schedule of its own:

    y (B, 2d) = [ unscale(q_sample(scale(e), noise_level, noise)) | emb(noise_level) ]

- `scale(e) = (e - mean) / std`, with the mean and standard deviation of the training
  set's embeddings (the Karlo statistics for the released ViT-L model; none, 0 and 1,
  for the ViT-H one), and `unscale` its inverse;
- `q_sample` is the forward process the latents go through, applied to a vector, on the
  squared-cosine schedule (`NoiseSchedule(beta_schedule="squaredcos_cap_v2")`);
- `emb` is the sinusoidal embedding the timesteps use, d wide: the UNet is *told* how
  noisy its embedding is.

Training draws `noise_level` uniformly from 0..999 for each picture, so the UNet learns to
read an embedding at every noise level. At inference `noise_level` chooses how much of the
picture to keep: 0 keeps all the embedding says, higher levels leave the model freer (the
variations drift further from the picture).

Classifier-free guidance: training replaces the whole y by zeros for a quarter of the
pictures (`embedding_dropout` 0.25), and inference guides against y = 0, as diffusers'
`StableUnCLIPImg2ImgPipeline` does. The text context stays: the empty prompt by default.

Upstream, at pinned commits: the released `CLIPEmbeddingNoiseAugmentation`
(https://github.com/Stability-AI/stablediffusion/blob/cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf/ldm/modules/encoders/modules.py#L320),
the embedding dropout in `ImageEmbeddingConditionedLatentDiffusion.get_input`
(https://github.com/Stability-AI/stablediffusion/blob/cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf/ldm/models/diffusion/ddpm.py#L1832),
diffusers' `noise_image_embeddings`
(https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/pipelines/stable_diffusion/pipeline_stable_unclip_img2img.py#L578).
"""

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..sampling.schedule import NoiseSchedule
from .unet import timestep_embedding

EMBEDDING_DROPOUT = 0.25  # the released configs' `embedding_dropout`: how often training zeroes y
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # OpenAI CLIP's


class CLIPEmbeddingNoiseAugmentation(nn.Module):
    """Noise a CLIP image embedding to `noise_level` and append the level's embedding: the
    UNet's y (see the module docstring). Named as the released module; `data_mean` and
    `data_std` are its buffers (the embedding statistics `scale` uses).

    >>> augment = CLIPEmbeddingNoiseAugmentation(dim=4)
    >>> e, noise = torch.ones(1, 4), torch.zeros(1, 4)
    >>> augment(e, 0, noise)  # level 0: the embedding kept (to 2e-5), then emb(0) = [cos 0, cos 0, sin 0, sin 0]
    tensor([[1.0000, 1.0000, 1.0000, 1.0000, 1.0000, 1.0000, 0.0000, 0.0000]])
    >>> round(augment(e, 999, noise)[0, 0].item(), 4)  # level 999: almost nothing of it is left
    0.0
    """

    def __init__(self, dim: int, max_noise_level: int = 1000):
        super().__init__()
        self.register_buffer("data_mean", torch.zeros(1, dim))
        self.register_buffer("data_std", torch.ones(1, dim))
        self.schedule = NoiseSchedule(num_train_timesteps=max_noise_level, beta_schedule="squaredcos_cap_v2")

    @property
    def max_noise_level(self) -> int:
        return self.schedule.num_train_timesteps

    def scale(self, embeds: torch.Tensor) -> torch.Tensor:
        """To zero mean and unit variance over the training embeddings."""
        return (embeds - self.data_mean) / self.data_std

    def unscale(self, embeds: torch.Tensor) -> torch.Tensor:
        """Back to the embeddings' own statistics."""
        return embeds * self.data_std + self.data_mean

    def forward(self, image_embeds: torch.Tensor, noise_level: int | torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
        """y = [noised embedding | emb(noise_level)], (B, 2d); `noise` ~ N(0, I), shaped as the embeddings."""
        level = torch.as_tensor(noise_level, device=image_embeds.device).long().expand(image_embeds.shape[0])
        noised = self.unscale(self.schedule.q_sample(self.scale(image_embeds), level, noise))
        return torch.cat([noised, timestep_embedding(level, image_embeds.shape[-1]).to(noised.dtype)], dim=-1)


def clip_image_pixels(images, size: int) -> torch.Tensor:
    """Pictures (PIL images, or a (B, H, W, 3) uint8 array) -> what CLIP's image tower reads,
    prepared as CLIP's image processor prepares them (transformers' `CLIPImageProcessor`,
    which diffusers' unCLIP pipelines use): the short side resized to `size` with PIL's
    bicubic filter, the centre `size` x `size` cropped, each channel scaled to [0, 1] and
    normalised by CLIP's mean and standard deviation. A picture of any size is accepted.

    >>> x = clip_image_pixels(np.full((1, 96, 160, 3), 255, dtype=np.uint8), 64)
    >>> tuple(x.shape), [round(v, 3) for v in x[0, :, 0, 0].tolist()]
    ((1, 3, 64, 64), [1.93, 2.075, 2.146])
    """
    images = [images] if isinstance(images, Image.Image) else images
    prepared = []
    for image in images:
        image = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image
        h, w = image.shape[:2]
        short, long = (h, w) if h <= w else (w, h)
        long = int(size * long / short)
        picture = np.asarray(Image.fromarray(image).resize((long, size) if h <= w else (size, long), Image.BICUBIC))
        top, left = (picture.shape[0] - size) // 2, (picture.shape[1] - size) // 2
        prepared.append(picture[top:top + size, left:left + size])
    x = torch.from_numpy(np.stack(prepared)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def image_embeddings(image_encoder, pixel_values: torch.Tensor) -> torch.Tensor:
    """CLIP image embeddings (B, d): the image tower's class token, through its final
    LayerNorm and projection (transformers' `CLIPVisionModelWithProjection.image_embeds`;
    OpenCLIP's `encode_image`). `pixel_values` as CLIP's image processor prepares them.

    >>> from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    >>> tower = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=8, intermediate_size=16,
    ...     num_attention_heads=2, num_hidden_layers=1, image_size=16, patch_size=8, projection_dim=6))
    >>> image_embeddings(tower, torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 6])
    """
    param = next(image_encoder.parameters())
    return image_encoder(pixel_values.to(param.device, param.dtype)).image_embeds


def drop_embeddings(y: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Training's embedding dropout: y where `keep` (B,) is 1, zeros (the unconditional
    input guidance will compare against) where it is 0.

    >>> drop_embeddings(torch.ones(2, 3), torch.tensor([1.0, 0.0]))
    tensor([[1., 1., 1.],
            [0., 0., 0.]])
    """
    return y * keep.to(y.dtype)[:, None]
