"""Looking inside without changing a number: attention maps, latent previews, anatomy.

`capture` records the cross- and self-attention probabilities of every layer, head and step
(DAAM); `viz` turns latents, maps and grids into pictures; `anatomy` counts parameters and
FLOPs per level and describes a UNet block by block. The pipeline offers them through
`pipe.capture_attention()` and `pipe.latent_preview()`.
"""
