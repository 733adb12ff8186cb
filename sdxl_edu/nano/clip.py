"""CLIP pretraining in miniature: where nano's two text encoders learn what words mean.

SDXL does not train its text encoders: it borrows OpenAI's CLIP ViT-L and OpenCLIP's
ViT-bigG, both pretrained contrastively on image-caption pairs (Radford et al. 2021), and
freezes them. nano has no such encoders to borrow, so its `clip` stage trains them the same
way, then freezes them:

- an image tower, a small ViT (`new_image_encoder`, transformers' `CLIPVisionModelWithProjection`),
  embeds the picture as CLIP's image processor prepares it (`clip_pixels`); its own
  projection shares a space with the second encoder, a second one with the first;
- each encoder embeds the caption: its pooled output (final layer, end-of-text token)
  through a projection (`clip_text_embeddings`);
- a symmetric cross-entropy over the cosine similarities of every caption with every
  image in the batch pulls matching pairs together (`contrastive_loss`):

      logits_ij = s <t_i / |t_i|, v_j / |v_j|>,   L = (CE(logits, targets) + CE(logits^T, targets^T)) / 2

`zero_shot_accuracy` is CLIP's own test of the result: which of the 15 "a {colour} {shape}"
captions is closest to a picture. The first encoder's projections are thrown away afterwards;
the image tower is kept with the second encoder, as OpenCLIP's bigG ships both towers (image
variations embed a picture with it); the UNets read the encoders' penultimate layers and the
second's pooled projection, as SDXL's do.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig, \
    CLIPVisionModelWithProjection

from ..model.text import tokenize
from ..model.unclip import clip_image_pixels
from . import BIGG_LIKE, CLIP_L_LIKE, VISION_LIKE
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


def new_image_encoder() -> CLIPVisionModelWithProjection:
    """CLIP's image tower in miniature, transformers' class (a ViT on 8 x 8 patches of a 64 x 64
    picture), exported with the text encoders as the released CLIP image encoders are: its
    `image_embeds` live in the second text encoder's `text_embeds` space.

    >>> tower = new_image_encoder()
    >>> tower(pixel_values=torch.zeros(2, 3, 64, 64)).image_embeds.shape
    torch.Size([2, 128])
    """
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION_LIKE))


def clip_pixels(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 pictures -> what nano's image tower reads: the short side resized to
    64, the centre cropped, normalised by CLIP's mean and std, exactly as CLIP's image
    processor (shipped beside the tower) does (`sdxl_edu.model.unclip.clip_image_pixels`).

    >>> tuple(clip_pixels(np.full((1, 96, 160, 3), 255, dtype=np.uint8)).shape)
    (1, 3, 64, 64)
    """
    return clip_image_pixels(images, VISION_LIKE["image_size"])


def clip_heads() -> torch.nn.ModuleDict:
    """What the `clip` stage trains besides the encoders and is then thrown away: a projection
    of the first text encoder's pooled output (SDXL's CLIP ViT-L ships without one), the image
    tower's second projection into that space, and CLIP's learnt temperature, log s, starting
    at s = 1 / 0.07 as CLIP's does.

    >>> heads = clip_heads()
    >>> sorted(name for name, _ in heads.named_children()), round(heads.logit_scale.exp().item(), 2)
    (['image_projection_1', 'projection_1'], 14.29)
    """
    heads = torch.nn.ModuleDict({"projection_1": torch.nn.Linear(CLIP_L_LIKE["hidden_size"], 128, bias=False),
                                 "image_projection_1": torch.nn.Linear(VISION_LIKE["hidden_size"], 128, bias=False)})
    heads.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    return heads


def clip_image_embeddings(image_encoder, heads, pixels: torch.Tensor) -> list[torch.Tensor]:
    """The picture in each text encoder's shared space: the tower's pooled output through
    `heads.image_projection_1` (for the first) and through its own projection (the second).

    >>> [e.shape for e in clip_image_embeddings(new_image_encoder(), clip_heads(), torch.zeros(2, 3, 64, 64))]
    [torch.Size([2, 128]), torch.Size([2, 128])]
    """
    pooled = image_encoder.vision_model(pixel_values=pixels).pooler_output
    return [heads.image_projection_1(pooled), image_encoder.visual_projection(pooled)]


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
def zero_shot_accuracy(te1, te2, image_encoder, heads, data: dict, n: int = 256) -> dict:
    """CLIP's zero-shot test on the first n pictures of one object in a bucket's `data`: the
    caption closest to the picture among all 15 "a {colour} {shape}", read as a shape and a
    colour, for each text encoder. Untrained, it is near chance (a third for the shape, a
    fifth for the colour).

    >>> from sdxl_edu.nano.scenes import make_scene
    >>> te1, te2 = new_text_encoders(len(nano_tokenizers()[0]))
    >>> rng = np.random.default_rng(0)
    >>> scenes = [make_scene(rng, (128, 128)) for _ in range(24)]
    >>> data = {"images": np.stack([s.image for s in scenes]), "labels": np.stack([s.labels for s in scenes])}
    >>> accuracy = zero_shot_accuracy(te1, te2, new_image_encoder(), clip_heads(), data, n=8)
    >>> sorted(accuracy), all(0 <= v <= 1 for v in accuracy.values())
    (['text_encoder_1_colour', 'text_encoder_1_shape', 'text_encoder_2_colour', 'text_encoder_2_shape'], True)
    """
    alone = np.flatnonzero((data["labels"][:, :, 0] >= 0).sum(1) == 1)[:n]  # scenes of a single object
    labels = data["labels"][alone, 0]
    pairs = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]
    prompts = [f"a {list(COLOURS)[c]} {SHAPES[s]}" for s, c in pairs]
    texts = clip_text_embeddings(te1, te2, heads, prompts)
    images = clip_image_embeddings(image_encoder, heads, clip_pixels(data["images"][alone]))
    result = {}
    for i, (text, image) in enumerate(zip(texts, images), 1):
        best = np.array(pairs)[(F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T).argmax(-1).numpy()]
        result[f"text_encoder_{i}_shape"] = float(np.mean(best[:, 0] == labels[:, 0]))
        result[f"text_encoder_{i}_colour"] = float(np.mean(best[:, 1] == labels[:, 1]))
    return result
