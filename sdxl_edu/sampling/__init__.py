"""How noise becomes a latent: the noise schedule, the samplers and guidance.

`schedule` holds the numbers of the forward process (beta, alpha_bar, sigma, the timesteps
a run visits); `guidance` turns the UNet's two predictions (with and without the prompt)
into one; `samplers` walk from pure noise to a clean latent, one function a sampler, all
with one signature and a callback per step. The samplers know nothing of text or UNets:
they call `denoise(x, sigma, t)`.
"""
