"""Prompt-to-prompt on a small random SDXL-shaped model: the injected maps are the source's for
the chosen steps and layers and the edit's own afterwards, re-weighting scales one column,
and without injection the edit is the plain pipeline's picture."""

import pytest
import torch
from tiny import parts, save

from sdxl_edu import load_pipeline
from sdxl_edu.editing import prompt_to_prompt
from sdxl_edu.model.attention import Attention

KW = dict(height=64, width=64, num_inference_steps=5, progress=False, output_type="latent")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load_pipeline(save(tmp_path_factory.mktemp("base"), parts("base", seed=10)))


class Recorder:
    """Records, per call of each attention layer, the maps it used."""

    def __init__(self, unet):
        self.layers = [m for m in unet.modules() if isinstance(m, Attention)]
        self.seen = {id(m): [] for m in self.layers}
        for m in self.layers:
            m.probe = lambda module, probs: self.seen[id(module)].append(probs.detach().clone())

    def close(self):
        for m in self.layers:
            m.probe = None


def test_without_injection_the_edit_is_the_plain_picture(pipe):
    source, edit = prompt_to_prompt(pipe, "a red circle", "a blue circle", seed=3, cross_replace=0,
                                    self_replace=0, images=2, **KW)
    plain = pipe("a blue circle", seed=3, num_images_per_prompt=2, **KW)
    assert torch.allclose(edit.images, plain.images, atol=1e-4)
    assert not torch.allclose(source.images, edit.images, atol=1e-2)


def test_injected_maps_are_the_sources_for_the_first_steps(pipe):
    recorder = Recorder(pipe.unet)
    try:
        prompt_to_prompt(pipe, "a red circle", "a blue circle", seed=3, cross_replace=0.4, self_replace=1.0, **KW)
    finally:
        recorder.close()
    latent_pixels = (64 // pipe.vae_scale_factor) ** 2
    checked = {"cross": [0, 0], "self": [0, 0]}
    for layer in recorder.layers:
        for step, probs in enumerate(recorder.seen[id(layer)]):
            conditional = probs[-2:]  # rows: uncond source, uncond edit, source, edit
            same = torch.equal(conditional[0], conditional[1])
            if layer.is_cross_attention:
                assert same == (step < 2), f"cross-attention at step {step}"
                checked["cross"][same] += 1
            elif probs.shape[2] * 16 <= latent_pixels:
                assert same, f"coarse self-attention at step {step}"
                checked["self"][1] += 1
            else:
                checked["self"][same] += 1
    assert all(n > 0 for n in checked["cross"]) and checked["self"][1] > 0
    assert checked["self"][0] > 0, "fine self-attention layers keep their own maps"


def test_reweighting_scales_the_words_column(pipe):
    recorder = Recorder(pipe.unet)
    try:
        prompt_to_prompt(pipe, "a red circle", "a blue circle", seed=3, reweight={"blue": 0.0}, **KW)
    finally:
        recorder.close()
    cross = next(m for m in recorder.layers if m.is_cross_attention)
    first = recorder.seen[id(cross)][0]
    assert torch.all(first[-1, ..., 2] == 0)  # "blue" is token 2 (after the start token and "a")
    assert first[-2, ..., 2].abs().sum() > 0  # the source keeps its "red"
    assert torch.equal(first[-1, ..., 3], first[-2, ..., 3])  # other columns are the source's


def test_errors(pipe):
    with pytest.raises(ValueError, match="swaps a word for a word"):
        prompt_to_prompt(pipe, "a red circle", "a large red circle", seed=0, **KW)
    with pytest.raises(ValueError, match="one target per source"):
        prompt_to_prompt(pipe, ["a red circle", "a blue square"], ["a red square"], seed=0, **KW)
    with pytest.raises(ValueError, match="pass seed="):
        prompt_to_prompt(pipe, "a red circle", "a red square", seed=0, latents=torch.zeros(2, 4, 8, 8), **KW)
    with pytest.raises(ValueError, match="image= is not supported"):
        prompt_to_prompt(pipe, "a red circle", "a red square", seed=0, image=torch.zeros(1, 3, 64, 64), **KW)
    with pytest.raises(ValueError, match="different token positions"):
        prompt_to_prompt(pipe, ["a red circle", "a circle"], ["a red square", "a square"], seed=0,
                         reweight={"square": 2.0}, **KW)
    assert all(m.edit is None for m in pipe.unet.modules() if isinstance(m, Attention))
