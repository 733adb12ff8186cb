"""CLIP pretraining in miniature: where nano's two text encoders learn what words mean.

SDXL does not train its text encoders: it borrows OpenAI's CLIP ViT-L and OpenCLIP's
ViT-bigG, both pretrained contrastively on image-caption pairs (Radford et al. 2021), and
freezes them. nano has no such encoders to borrow, so its `clip` stage trains them the same
way, then freezes them:

- a small image tower (`ImageTower`) embeds nano's latents, one projection per encoder;
- each encoder embeds the caption: its pooled output (final layer, end-of-text token)
  through a projection (`clip_text_embeddings`);
- a symmetric cross-entropy over the cosine similarities of every caption with every
  image in the batch pulls matching pairs together (`contrastive_loss`):

      logits_ij = s <t_i / |t_i|, v_j / |v_j|>,   L = (CE(logits, targets) + CE(logits^T, targets^T)) / 2

`zero_shot_accuracy` is CLIP's own test of the result: which of the 15 "a {colour} {shape}"
captions is closest to a picture. The image tower and the first encoder's projection are
thrown away afterwards; the UNets read the encoders' penultimate layers and the second's
pooled projection, as SDXL's do.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ..model.text import tokenize
from . import BIGG_LIKE, CLIP_L_LIKE
from .batches import nano_tokenizers
from .data import COLOURS, SHAPES


def new_text_encoders(vocab_size: int):
    """Untrained CLIP-L-like and bigG-like encoders (the second with a projection), transformers' classes.

    >>> te1, te2 = new_text_encoders(len(nano_tokenizers()[0]))
    >>> te1.config.hidden_size, te2.config.hidden_size, te2.config.projection_dim
    (64, 128, 128)
    """
    common = dict(vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return (CLIPTextModel(CLIPTextConfig(**CLIP_L_LIKE, **common)),
            CLIPTextModelWithProjection(CLIPTextConfig(**BIGG_LIKE, **common)))


class ImageTower(torch.nn.Module):
    """CLIP's image encoder in miniature, on cached latents: convolutions, global average
    pooling, and one projection per text encoder. Used only to pretrain the text encoders.

    >>> [v.shape for v in ImageTower((128, 64))(torch.randn(2, 4, 16, 12))]  # any bucket's latents
    [torch.Size([2, 128]), torch.Size([2, 64])]
    """

    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        self.trunk = torch.nn.Sequential(
            torch.nn.Conv2d(4, 64, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(64, 128, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(128, 128, 3, stride=2, padding=1), torch.nn.SiLU())
        self.heads = torch.nn.ModuleList(torch.nn.Linear(128, d) for d in dims)

    def forward(self, latents: torch.Tensor) -> list[torch.Tensor]:
        features = self.trunk(latents).mean((2, 3))
        return [head(features) for head in self.heads]


def clip_heads() -> torch.nn.ModuleDict:
    """What the `clip` stage trains besides the encoders: a projection for the first encoder's
    pooled output (SDXL's CLIP ViT-L ships without one), the image tower, and CLIP's learnt
    temperature, log s, starting at s = 1 / 0.07 as CLIP's does.

    >>> heads = clip_heads()
    >>> sorted(name for name, _ in heads.named_children()), round(heads.logit_scale.exp().item(), 2)
    (['image', 'projection_1'], 14.29)
    """
    heads = torch.nn.ModuleDict({"projection_1": torch.nn.Linear(CLIP_L_LIKE["hidden_size"], 128, bias=False),
                                 "image": ImageTower((128, BIGG_LIKE["projection_dim"]))})
    heads.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    return heads


def contrastive_loss(text: torch.Tensor, image: torch.Tensor, same: torch.Tensor, logit_scale) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over cosine similarities, logits = s * <t_i, v_j>.
    A batch of our captions repeats itself ("a circle" many times), so every image whose
    caption is the same counts as a match: the target is spread over them (`same`, rows summing to 1).

    >>> text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # captions A, B, A
    >>> same = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]]) / torch.tensor([[2.0], [1.0], [2.0]])
    >>> scale = torch.tensor(math.log(100))
    >>> round(contrastive_loss(text, text, same, scale).item(), 3)  # images that match: only ln 2 is left
    0.462
    >>> round(contrastive_loss(text, text.flip(1), same, scale).item(), 1)  # every image matched to the other caption
    100.2
    """
    logits = logit_scale.exp().clamp(max=100) * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    return (F.cross_entropy(logits, same) + F.cross_entropy(logits.T, same.T)) / 2


def same_caption(captions: list[str]) -> torch.Tensor:
    """The contrastive targets: row i spreads 1 over the pictures whose caption is caption i.

    >>> same_caption(["a circle", "a square", "a circle"]).tolist()
    [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]
    """
    same = torch.tensor([[a == c for c in captions] for a in captions]).float()
    return same / same.sum(1, keepdim=True)


def clip_text_embeddings(te1, te2, heads, captions: list[str]) -> list[torch.Tensor]:
    """Each encoder's caption embedding in the space it shares with the image tower: the
    pooled output (end-of-text token, last layer) through a projection, the first encoder's
    from `heads.projection_1`, the second's its own. Only the tokens up to the longest
    caption's end-of-text run: the encoders are causal, so later ones cannot change it.
    (Not `Conditioner.encode_text`: that reads the penultimate layers, without gradients.)

    >>> te1, te2 = new_text_encoders(len(nano_tokenizers()[0]))
    >>> heads = torch.nn.ModuleDict({"projection_1": torch.nn.Linear(64, 128)})
    >>> [e.shape for e in clip_text_embeddings(te1, te2, heads, ["a circle", "a small red square"])]
    [torch.Size([2, 128]), torch.Size([2, 128])]
    """
    tok, tok_2 = nano_tokenizers()
    ids1, ids2 = tokenize(tok, captions), tokenize(tok_2, captions)
    length = int((ids1 == tok.eos_token_id).int().argmax(-1).max()) + 1
    return [heads.projection_1(te1(ids1[:, :length]).pooler_output), te2(ids2[:, :length]).text_embeds]


@torch.no_grad()
def zero_shot_accuracy(te1, te2, heads, latents: list[dict], data: list[dict], n: int = 256) -> dict:
    """CLIP's zero-shot test: the caption closest to a picture among all 15 "a {colour} {shape}",
    read as a shape and a colour, for each encoder; n pictures per bucket. Untrained, it is
    near chance (a third for the shape, a fifth for the colour).

    >>> te1, te2 = new_text_encoders(len(nano_tokenizers()[0]))
    >>> heads = torch.nn.ModuleDict({"projection_1": torch.nn.Linear(64, 128), "image": ImageTower((128, 128))})
    >>> latents = [{"clean": np.random.default_rng(0).standard_normal((8, 4, 16, 16), dtype=np.float32)}]
    >>> data = [{"labels": np.zeros((8, 4), dtype=int)}]
    >>> accuracy = zero_shot_accuracy(te1, te2, heads, latents, data, n=8)
    >>> sorted(accuracy), all(0 <= v <= 1 for v in accuracy.values())
    (['text_encoder_1_colour', 'text_encoder_1_shape', 'text_encoder_2_colour', 'text_encoder_2_shape'], True)
    """
    pairs = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]
    prompts = [f"a {list(COLOURS)[c]} {SHAPES[s]}" for s, c in pairs]
    texts = [F.normalize(e, dim=-1) for e in clip_text_embeddings(te1, te2, heads, prompts)]
    result = {}
    for i, text in enumerate(texts, 1):
        hits = {"shape": [], "colour": []}
        for bucket_latents, bucket_data in zip(latents, data):
            image = F.normalize(heads.image(torch.from_numpy(bucket_latents["clean"][:n]).float())[i - 1], dim=-1)
            best = np.array(pairs)[(image @ text.T).argmax(-1).numpy()]
            hits["shape"] += list(best[:, 0] == bucket_data["labels"][:n, 0])
            hits["colour"] += list(best[:, 1] == bucket_data["labels"][:n, 1])
        result.update({f"text_encoder_{i}_{k}": float(np.mean(v)) for k, v in hits.items()})
    return result
