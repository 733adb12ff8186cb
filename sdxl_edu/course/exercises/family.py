"""Checkers for lesson 12, the Stable Diffusion family: every truth computed from the released
configs (`sdxl_edu.config.SD_FAMILY`), on the meta device, never stored."""

from ...config import SD_FAMILY
from .verdict import NOT_YET, Verdict


def _member(name: str):
    return next(m for m in SD_FAMILY if m.name == name)


def context_width(answer, name: str = "SDXL 1.0") -> Verdict:
    """The width of the tokens a model's cross-attention reads: its encoders' widths, concatenated.

    >>> context_width(768 + 1280).ok, context_width(1024, "SD 2.1").ok, context_width(1280).ok
    (True, True, False)
    """
    if answer is None:
        return NOT_YET
    member = _member(name)
    widths = [config["hidden_size"] for _, config in member.text_encoders]
    truth = sum(widths)
    assert truth == member.unet.context_dim  # the UNet is built to read exactly that
    if answer == truth:
        return Verdict(True, f"{truth}: " + " + ".join(f"{w} ({n})" for w, (n, _) in zip(widths, member.text_encoders))
                       + ", concatenated token by token.")
    return Verdict(False, f"{name} reads {' and '.join(n for n, _ in member.text_encoders)}; each token's "
                          "vectors are concatenated, so the widths add up.")


def native_latent_side(answer, name: str = "SD 2.1") -> Verdict:
    """The latent's side at the model's native resolution (the autoencoder divides by 8).

    >>> native_latent_side(96).ok, native_latent_side(768).ok
    (True, False)
    """
    if answer is None:
        return NOT_YET
    member = _member(name)
    truth = member.resolution // 8
    if answer == truth:
        return Verdict(True, f"{truth}: {member.resolution} px / 8, the same autoencoder in all three.")
    return Verdict(False, f"{name} draws {member.resolution} px pictures and every Stable Diffusion "
                          "autoencoder halves the side three times.")


def busiest_level(answer, name: str = "SD 1.5") -> Verdict:
    """Which level (0 = the highest resolution) does the most floating-point work in one UNet
    call at the model's native resolution? Counted with `unet_flops`.

    >>> busiest_level(0).ok, busiest_level(2, "SDXL 1.0").ok
    (True, True)
    """
    from ...inspection.anatomy import unet_flops

    if answer is None:
        return NOT_YET
    member = _member(name)
    side = member.resolution // 8
    flops = unet_flops(member.unet, side, side)
    levels = {level: flops[f"level {level}"] for level in range(member.unet.num_levels)}
    truth = max(levels, key=levels.get)
    shares = ", ".join(f"level {k} {v / flops['total']:.0%}" for k, v in levels.items())
    if answer == truth:
        return Verdict(True, f"level {truth} ({shares}).")
    return Verdict(False, f"count them: {shares}. Cost follows the pixels a layer works on times its width "
                          "squared, and attention the square of the pixels.")
