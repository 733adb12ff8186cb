"""What the weights compute, with the released checkpoint's names.

The data flows through these modules in this order: `text` (tokens, the two CLIP text
encoders read layer by layer) -> `conditioning` (the context the UNet's cross-attention
reads, the pooled embedding and the micro-conditioning vector y, per guidance branch) ->
`unet` (with `attention`: predict the noise in a latent) -> `vae` (latents to pixels and
back). Nothing here knows about files, samplers or lessons.
"""
