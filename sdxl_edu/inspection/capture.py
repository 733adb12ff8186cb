"""Where does each word look? Capturing the UNet's attention maps during a generation.

In cross-attention, image token i (a latent pixel at one level of the UNet) spreads its
attention over the 77 text tokens: softmax(Q K^T / sqrt(d))[i, j] is how much pixel i
reads token j. Reshaped over the pixels, column j is a picture of where token j acts.
DAAM (Tang et al. 2023, "What the DAAM: Interpreting Stable Diffusion Using Cross
Attention") aggregates these pictures into one heat map per word:

    map(word) = sum over steps, mean over layers and heads of
                upsample(probs[:, :, :, token positions of the word])

Tang et al.'s code (castorini/daam, `daam/trace.py`) leaves out maps at an eighth of the
latent's side: on SD 1.x that is the middle block, too coarse at 8 x 8. SDXL's UNet has no
such level (its middle block works at a quarter, like the level above it), so every
cross-attention layer is averaged here; lesson 6 also scores each layer on its own.

We capture from our own `Attention` module: attaching a probe switches only that layer to
the explicit path (the fused kernel never forms the probabilities) and leaves the numbers
unchanged. To keep memory bounded, maps are summed over steps as they arrive: full SDXL
would otherwise keep about 0.5 GB per step. With classifier-free guidance the UNet sees
[unconditional, conditional] in one batch; only the conditional half is kept.

    with pipe.capture_attention() as attn:
        pipe("a red circle on the left")
    heat = attn.cross_attention_map("circle")       # (H, W) at latent resolution

What is kept:
- `token_maps` (images, 77, H, W): all layers and heads, summed over steps;
- `layer_maps[name]` (images, heads, 77, h, w): per layer and head, at the layer's own
  resolution, summed over steps (`per_layer=True`);
- `step_maps` (images, steps, 77, H, W): per step, over layers and heads (`per_step=True`);
- `self_attention_maps[name]` (images, h w, h w): head-averaged self-attention of the
  layers asked for (`self_attention=[names]` or True for all), summed over steps.
"""

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..model.attention import Attention


class AttentionCapture:
    """Probes on a UNet's attention layers; use through `Pipeline.capture_attention`."""

    def __init__(self, pipe, layers: Iterable[str] | None = None, per_layer: bool = True,
                 per_step: bool = False, self_attention: bool | Iterable[str] = False):
        self.pipe = pipe
        self.modules = {name: m for name, m in pipe.unet.named_modules() if isinstance(m, Attention)}
        cross = [n for n, m in self.modules.items() if m.is_cross_attention]
        self.cross_layers = [n for n in cross if layers is None or any(sel in n for sel in layers)]
        selfs = [n for n, m in self.modules.items() if not m.is_cross_attention]
        self.self_layers = selfs if self_attention is True else [
            n for n in selfs if self_attention and any(sel in n for sel in self_attention)]
        self.per_layer, self.per_step = per_layer, per_step
        self.token_maps = None
        self.layer_maps: dict[str, torch.Tensor] = {}
        self.step_maps = None
        self.self_attention_maps: dict[str, torch.Tensor] = {}
        self.prompts: list[str] = []
        self.step = -1

    # ------------------------------------------------------------------ set-up, through public hooks

    def __enter__(self):
        for name in self.cross_layers + self.self_layers:
            self.modules[name].probe = self._probe(name)
        self._hooks = [self.pipe.unet.register_forward_pre_hook(self._next_step),
                       self.pipe.register_generation_hook(self.start)]
        return self

    def __exit__(self, *exc):
        for name in self.cross_layers + self.self_layers:
            self.modules[name].probe = None
        for hook in self._hooks:
            hook.remove()

    def start(self, prompts: list[str], images: int, cfg: bool, latent_size: tuple[int, int]) -> None:
        """The pipeline's generation hook: which prompts, how the batch is laid out."""
        self.prompts, self.images, self.cfg, self.latent_size = prompts, images, cfg, tuple(latent_size)
        self.images_per_prompt = images // len(prompts)
        self.step = -1

    def _next_step(self, module, args):
        self.step += 1

    def _probe(self, name: str):
        def probe(module: Attention, probs: torch.Tensor):
            probs = probs[-self.images:].detach().float()  # the conditional half of the batch
            if module.is_cross_attention:
                self._add_cross(name, probs)
            else:
                self._add_self(name, probs)
        return probe

    # ------------------------------------------------------------------ aggregation as it goes

    def _grid(self, n_pixels: int) -> tuple[int, int]:
        """(h, w) of the layer whose feature map has n_pixels, from the latent size."""
        H, W = self.latent_size
        for k in range(8):
            h, w = math.ceil(H / 2**k), math.ceil(W / 2**k)
            if h * w == n_pixels:
                return h, w
        raise ValueError(f"no UNet level has {n_pixels} pixels for latents {H}x{W}")

    def _add_cross(self, name: str, probs: torch.Tensor) -> None:
        n, heads, pixels, tokens = probs.shape
        h, w = self._grid(pixels)
        maps = probs.permute(0, 1, 3, 2).reshape(n, heads, tokens, h, w)  # (n, heads, 77, h, w)
        if self.per_layer:
            self.layer_maps[name] = self.layer_maps.get(name, 0) + maps
        upsampled = F.interpolate(maps.mean(1), size=self.latent_size, mode="bicubic", align_corners=False)
        upsampled = upsampled.clamp(min=0) / len(self.cross_layers)  # the mean over layers
        self.token_maps = upsampled if self.token_maps is None else self.token_maps + upsampled
        if self.per_step:
            if self.step_maps is None:
                self.step_maps = upsampled[:, None]
            elif self.step_maps.shape[1] <= self.step:
                self.step_maps = torch.cat([self.step_maps, upsampled[:, None]], dim=1)
            else:
                self.step_maps[:, self.step] += upsampled

    def _add_self(self, name: str, probs: torch.Tensor) -> None:
        self.self_attention_maps[name] = self.self_attention_maps.get(name, 0) + probs.mean(1)

    # ------------------------------------------------------------------ reading the maps

    def token_positions(self, word: str, prompt_index: int = 0, tokenizer=None) -> list[int]:
        """Positions (0..76) of `word`'s tokens in the captured prompt `prompt_index`."""
        return token_positions(tokenizer or self.pipe.tokenizer_2, self.prompts[prompt_index], word)

    def cross_attention_map(self, word: str, image: int = 0, tokenizer=None) -> torch.Tensor:
        """The aggregated (H, W) heat map of `word` for image `image` of the batch."""
        if self.token_maps is None:
            raise RuntimeError("nothing captured: run the pipeline inside the `with` block")
        positions = self.token_positions(word, image // self.images_per_prompt, tokenizer)
        return self.token_maps[image, positions].sum(0)

    def head_maps(self, layer: str, word: str, image: int = 0) -> torch.Tensor:
        """(heads, h, w): one layer's maps of `word`, head by head, summed over steps."""
        positions = self.token_positions(word, image // self.images_per_prompt)
        return self.layer_maps[layer][image, :, positions].sum(1)

    def step_map(self, step: int, word: str, image: int = 0) -> torch.Tensor:
        """(H, W): `word`'s map at one step (needs per_step=True)."""
        positions = self.token_positions(word, image // self.images_per_prompt)
        return self.step_maps[image, step, positions].sum(0)


def token_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """Positions (0..76) of `word`'s tokens in `prompt`. Both SDXL tokenizers split text the
    same way (they differ only in padding), so either gives the same positions.

    >>> from sdxl_edu import load_pipeline
    >>> token_positions(load_pipeline().tokenizer_2, "a red circle", "circle")  # 0 is the start token
    [3]
    """
    ids = tokenizer(prompt)["input_ids"]
    word_ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    for start in range(len(ids) - len(word_ids) + 1):
        if ids[start:start + len(word_ids)] == word_ids:
            return list(range(start, start + len(word_ids)))
    raise KeyError(f"{word!r} is not a word of the prompt {prompt!r}; its tokens are "
                   f"{tokenizer.convert_ids_to_tokens(ids)}")
