"""Every SDXL-shaped UNet loads: the distilled family (SSD-1B, Segmind Vega, KOALA) and
level widths that are not multiples of the first.

Each UNet is built by diffusers from a diffusers config written here, with random weights,
and saved two ways: as a diffusers folder (`save_pretrained`) and as a single file in the
released layout, written with our own sgm key rules. diffusers' `from_single_file` reads
that file back into the same weights (so our key rules are diffusers'), and `load_pipeline`
reads both, to the same config, computing what diffusers' UNet computes.
"""

import pytest
import torch
from diffusers import UNet2DConditionModel
from tiny import parts, randomize, save, save_diffusers_folder

from sdxl_edu import CheckpointError, load_pipeline
from sdxl_edu.__main__ import main as cli
from sdxl_edu.model.conditioning import micro_conditioning_ids, vector_y
from sdxl_edu.config import SDXL_BASE, SDXL_REFINER, UNetConfig
from sdxl_edu.loading.diffusers import diffusers_unet_names, read_diffusers_unet_config
from sdxl_edu.model.unet import UNet

pytestmark = pytest.mark.slow  # builds, saves and reloads each distilled UNet beside diffusers'

TOL = 1e-4
BASE_LIKE = dict(  # SDXL base's arrangement in miniature: no attention at the first level
    block_out_channels=[32, 64, 128], attention_head_dim=[2, 4, 8], cross_attention_dim=48,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=1568, sample_size=16, in_channels=4, out_channels=4)

VARIANTS = {
    # SSD-1B: fewer transformer blocks per level, and a decoder whose blocks differ from each other
    "ssd-1b-like": dict(BASE_LIKE, transformer_layers_per_block=[[1, 1], [1, 1], [2, 2]],
                        reverse_transformer_layers_per_block=[[3, 2, 1], [1, 2, 1], [1, 1, 1]]),
    # Segmind Vega: thinner still, and the middle is a single ResBlock
    "vega-like": dict(BASE_LIKE, transformer_layers_per_block=[1, 1, 1],
                      reverse_transformer_layers_per_block=[[1, 1, 2], [1, 1, 1], [1, 1, 1]],
                      mid_block_type="UNetMidBlock2D"),
    # KOALA: one ResBlock per encoder level (two per decoder level) and no middle block at all
    "koala-like": dict(BASE_LIKE, layers_per_block=1, transformer_layers_per_block=[1, 1, 3],
                       reverse_transformer_layers_per_block=[[3, 2], [1, 1], [1, 1]], mid_block_type=None),
    # the refiner's arrangement with widths that are not multiples of the first
    "refiner-96-128-192-192": dict(
        block_out_channels=[96, 128, 192, 192], attention_head_dim=[2, 2, 3, 3], cross_attention_dim=40,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
        transformer_layers_per_block=2, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=1312, sample_size=16,
        in_channels=4, out_channels=4),
}


def kind_of(config: dict) -> str:
    return "refiner" if config["cross_attention_dim"] == 40 else "base"


def diffusers_unet(config: dict) -> UNet2DConditionModel:
    return randomize(UNet2DConditionModel(**config), seed=5)


def as_ours(theirs: UNet2DConditionModel, config: dict) -> UNet:
    """Our UNet holding diffusers' weights, through our key map."""
    ours = UNet(read_diffusers_unet_config(config))
    sd = theirs.state_dict()
    names = diffusers_unet_names(ours.config)
    ours.load_state_dict({k: sd[names[k]].reshape(v.shape) for k, v in ours.state_dict().items()}, strict=True)
    return ours.eval()


def checkpoints(tmp_path, name):
    """The variant as diffusers' UNet, a diffusers pipeline folder and a released-layout file."""
    config = VARIANTS[name]
    theirs = diffusers_unet(config)
    p = parts(kind_of(config)) | {"unet": as_ours(theirs, config)}
    folder = save_diffusers_folder(tmp_path / "folder", p, kind_of(config), unet=theirs, unet_config=config)
    single_file = save(tmp_path / "file", p)
    return theirs, folder, single_file


def inputs(config: dict, size=(16, 24)):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, *size, generator=g)
    context = torch.randn(2, 77, config["cross_attention_dim"], generator=g)
    pooled = torch.randn(2, 32, generator=g)
    if kind_of(config) == "base":
        ids = torch.stack([micro_conditioning_ids((64, 48), (8, 0), target_size=(64, 64))] * 2)
    else:
        ids = torch.stack([micro_conditioning_ids((64, 64), (0, 0), aesthetic_score=6.0)] * 2)
    return x, torch.tensor([981, 3]), context, pooled, ids


@pytest.mark.parametrize("name", VARIANTS)
@torch.no_grad()
def test_variant_loads_from_both_layouts_and_matches_diffusers(tmp_path, name):
    theirs, folder, single_file = checkpoints(tmp_path, name)
    from_folder, from_file = load_pipeline(folder), load_pipeline(single_file)
    assert from_folder.unet_config == from_file.unet_config  # both readers agree
    x, t, context, pooled, ids = inputs(VARIANTS[name])
    reference = theirs(x, t, encoder_hidden_states=context,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
    assert reference.abs().mean() > 0.1  # a real signal, not zeros
    for pipe in (from_folder, from_file):
        eps = pipe.unet(x, t, context, vector_y(pooled, ids))
        assert (eps - reference).abs().max() < TOL


@pytest.mark.parametrize("name", VARIANTS)
def test_our_single_file_is_what_diffusers_reads(tmp_path, name):
    """diffusers' own converter reads our released-layout file into the original weights."""
    theirs, folder, single_file = checkpoints(tmp_path, name)
    reread = UNet2DConditionModel.from_single_file(str(single_file), config=str(folder / "unet"))
    original = theirs.state_dict()
    assert reread.state_dict().keys() == original.keys()
    assert all(torch.equal(v, original[k]) for k, v in reread.state_dict().items())


def test_what_the_readers_find():
    koala = read_diffusers_unet_config(VARIANTS["koala-like"])
    assert (koala.num_res_blocks, koala.transformer_depth, koala.transformer_depth_middle) == (1, (0, 1, 3), None)
    assert koala.decoder_depths() == [[3, 2], [1, 1], [0, 0]]
    ssd = read_diffusers_unet_config(VARIANTS["ssd-1b-like"])
    assert ssd.transformer_depth_output == (3, 2, 1, 1, 2, 1, 0, 0, 0) and ssd.transformer_depth_middle == 2
    assert read_diffusers_unet_config(VARIANTS["vega-like"]).transformer_depth_middle == 0
    assert read_diffusers_unet_config(VARIANTS["refiner-96-128-192-192"]).channels == (96, 128, 192, 192)


def test_sdxl_still_builds_the_released_keys_and_shapes():
    from tiny import manifest

    for config, name in ((SDXL_BASE, "sd_xl_base_1.0"), (SDXL_REFINER, "sd_xl_refiner_1.0")):
        released = {k.removeprefix("model.diffusion_model."): v for k, v in
                    manifest(f"{name}.safetensors.keys.tsv").items() if k.startswith("model.diffusion_model.")}
        with torch.device("meta"):
            ours = {k: tuple(v.shape) for k, v in UNet(config).state_dict().items()}
        assert ours == released


def test_a_block_with_part_of_its_transformer_layers_is_named(tmp_path):
    """Distilled shapes load, but a block with a hole is still refused, naming the tensors.

    A block that simply ends after fewer transformer layers is a distilled shape (SSD-1B's
    blocks are exactly that); a layer missing in the middle, or half of one layer's
    tensors, cannot be, and the error names what is missing and what is left over."""
    from test_loading import rewrite

    _, _, single_file = checkpoints(tmp_path, "ssd-1b-like")  # output block 0 has 3 layers
    rewrite(single_file, lambda t: [t.pop(k) for k in [k for k in t if ".output_blocks.0.1.transformer_blocks.1." in k]])
    with pytest.raises(CheckpointError, match=r"missing: output_blocks\.0\.1\.transformer_blocks\.1\..*"
                                              r"unexpected: output_blocks\.0\.1\.transformer_blocks\.2\."):
        load_pipeline(single_file)
    _, _, single_file = checkpoints(tmp_path, "ssd-1b-like")
    rewrite(single_file, lambda t: [t.pop(k) for k in [k for k in t if ".output_blocks.0.1.transformer_blocks.2.attn2" in k]])
    with pytest.raises(CheckpointError, match=r"missing: output_blocks\.0\.1\.transformer_blocks\.2\.attn2"):
        load_pipeline(single_file)


def test_a_missing_label_emb_is_named(tmp_path):
    from test_loading import rewrite

    path = save(tmp_path, parts("base"))
    rewrite(path, lambda t: [t.pop(k) for k in [k for k in t if ".label_emb." in k]])
    with pytest.raises(CheckpointError, match=r"label_emb"):
        load_pipeline(path)


def test_info_prints_each_block(tmp_path, capsys):
    theirs, folder, single_file = checkpoints(tmp_path, "koala-like")
    cli(["info", str(single_file)])
    out = capsys.readouterr().out
    assert "middle: none" in out
    assert "decoder level 2: 2 blocks, transformer depths [3, 2]" in out
    cli(["info"])
    assert "middle: ResBlock, SpatialTransformer (10 blocks), ResBlock" in capsys.readouterr().out


def test_per_block_depths_must_cover_every_block():
    with pytest.raises(ValueError, match="5 transformer depths given for 6 blocks"):
        UNetConfig(transformer_depth_input=(0, 0, 2, 2, 4)).encoder_depths()
