"""load_pipeline on synthetic checkpoints in the released layouts, and every refusal."""

import json
import os
import pickle
import struct

import pytest
import safetensors.torch
import torch
from tiny import parts, save, save_diffusers_folder

import sdxl_edu
from sdxl_edu import CheckpointError, load_pipeline
from sdxl_edu.model.conditioning import micro_conditioning_ids, vector_y
from sdxl_edu.model.vae import AutoencoderKL


def same_outputs(pipe, p, kind="base"):
    """The loaded pipeline computes what the parts it was saved from compute."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    context = torch.randn(1, 77, p["unet"].config.context_dim, generator=g)
    y = torch.randn(1, p["unet"].config.adm_in_channels, generator=g)
    with torch.no_grad():
        assert torch.equal(pipe.unet(x, 500, context, y), p["unet"](x, 500, context, y))
        z = torch.randn(1, 4, 8, 8, generator=g)
        assert torch.equal(pipe.vae.decode(z), p["vae"].decode(z))
        ours = pipe.encode_prompt("a red circle", negative_prompt="blurry")
    from sdxl_edu.model.conditioning import Conditioner
    reference = Conditioner(p["tokenizer"], p["text_encoder"], p["tokenizer_2"], p["text_encoder_2"]).encode_prompt(
        "a red circle", negative_prompt="blurry")
    for a, b in zip(ours, reference):
        assert (a - b).abs().max() < 1e-6


@pytest.mark.parametrize("kind", ["base", "refiner"])
def test_single_file_round_trip(tmp_path, kind):
    p = parts(kind)
    pipe = load_pipeline(save(tmp_path, p))
    assert pipe.kind == kind and pipe.unet_config == p["unet"].config
    assert (pipe.text_encoder is None) == (kind == "refiner")
    same_outputs(pipe, p, kind)


@pytest.mark.parametrize("kind", ["base", "refiner"])
def test_diffusers_folder_loads_the_same_model(tmp_path, kind):
    p = parts(kind)
    pipe = load_pipeline(save_diffusers_folder(tmp_path, p, kind))
    assert pipe.kind == kind and pipe.unet_config == p["unet"].config
    same_outputs(pipe, p, kind)


def test_dtype_and_tokenizers_argument(tmp_path):
    p = parts("base")
    path = save(tmp_path / "weights", p)
    os.rename(tmp_path / "weights" / "tokenizer", tmp_path / "tokenizer")
    os.rename(tmp_path / "weights" / "tokenizer_2", tmp_path / "tokenizer_2")
    with pytest.raises(FileNotFoundError, match="tokenizers='path/to/stable-diffusion-xl-base-1.0'"):
        load_pipeline(path)
    pipe = load_pipeline(path, dtype=torch.bfloat16, tokenizers=tmp_path)
    assert pipe.dtype == torch.bfloat16 and pipe.text_encoder_2.dtype == torch.bfloat16
    assert pipe.vae.decoder.conv_in.weight.dtype == torch.bfloat16


def test_metadata_carries_what_shapes_cannot_tell(tmp_path):
    p = parts("base")
    p["vae"].config = p["vae"].config.__class__(**{**p["vae"].config.__dict__, "scaling_factor": 0.5})
    pipe = load_pipeline(save(tmp_path, p))
    assert pipe.vae.scaling_factor == 0.5
    assert pipe.unet_config.num_head_channels == 16  # SDXL's 64 would be assumed otherwise


# ----------------------------------------------------------------------------- refusals

def rewrite(path, edit):
    """Load a saved single file's tensors, edit the dict, save it back."""
    tensors = safetensors.torch.load_file(str(path))
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        metadata = json.loads(f.read(n)).get("__metadata__")
    edit(tensors)
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("family,keys,message", [
    ("SD 1.x", {"cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,),
                "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "Stable Diffusion 1.x"),
    ("SD 2.x", {"cond_stage_model.model.ln_final.weight": (4,)}, "Stable Diffusion 2.x"),
    ("diffusers UNet file", {"down_blocks.0.resnets.0.conv1.weight": (4,)}, "pass the whole folder"),
    ("something else", {"encoder.layer.0.weight": (4,)}, "not a Stable Diffusion checkpoint"),
])
def test_other_families_are_named(tmp_path, family, keys, message):
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    with pytest.raises(CheckpointError, match=message):
        load_pipeline(path)


def test_truncated_file(tmp_path):
    path = save(tmp_path, parts("base"))
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(CheckpointError, match="truncated.*Download it again"):
        load_pipeline(path)
    with open(path, "r+b") as f:
        f.truncate(5)
    with pytest.raises(CheckpointError, match="too short"):
        load_pipeline(path)


def test_corrupted_header(tmp_path):
    path = save(tmp_path, parts("base"))
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"\xff\xfe{{not json")
    with pytest.raises(CheckpointError, match="corrupted safetensors header"):
        load_pipeline(path)


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    p = parts("base")
    path = save(tmp_path, p)
    key = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    rewrite(path, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=r"missing: input_blocks\.4\.1\.transformer_blocks\.0\.attn2\.to_k"):
        load_pipeline(path)
    path = save(tmp_path, p)
    rewrite(path, lambda t: t.update({"first_stage_model.decoder.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"VAE.*unexpected: decoder\.extra\.weight"):
        load_pipeline(path)
    path = save(tmp_path, p)
    key = "model.diffusion_model.output_blocks.2.0.emb_layers.1.weight"
    rewrite(path, lambda t: t.update({key: torch.zeros(3, 3)}))
    with pytest.raises(CheckpointError, match=r"wrong shape: output_blocks\.2\.0\.emb_layers\.1\.weight: file \(3, 3\)"):
        load_pipeline(path)


class Payload:
    """Unpickling this would create a file: proof that nothing was unpickled if it is absent."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "disguised.safetensors"])
def test_pickles_are_refused_never_unpickled(tmp_path, name):
    marker = tmp_path / "was_unpickled"
    path = tmp_path / name
    if name.endswith(".pt"):
        torch.save({"state_dict": Payload(str(marker))}, path)  # a zip archive
    else:
        path.write_bytes(pickle.dumps({"state_dict": Payload(str(marker))}, protocol=4))
    with pytest.raises(CheckpointError, match="never unpickles.*safetensors"):
        load_pipeline(path)
    assert not marker.exists()


def test_image_size_must_be_divisible_by_the_vae_factor(tmp_path):
    with torch.device("meta"):
        sdxl = sdxl_edu.Pipeline(unet=None, vae=AutoencoderKL(sdxl_edu.SDXL_VAE), conditioner=None)
    sdxl.check_image_size(1024, 768)
    with pytest.raises(ValueError, match="divisible by 8.*got 1020x768. Try 1016x768"):
        sdxl.check_image_size(1020, 768)
    tiny = load_pipeline(save(tmp_path, parts("base")))  # an f=4 autoencoder, like nano SDXL's
    tiny.check_image_size(68, 48)
    with pytest.raises(ValueError, match="divisible by 4.*got 66x48"):
        tiny.check_image_size(66, 48)


def test_no_source_and_missing_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(sdxl_edu.loading, "NANO_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nano SDXL weights are not in this installation"):
        load_pipeline()
    with pytest.raises(FileNotFoundError, match="neither a file, a folder nor a hub id"):
        load_pipeline(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="no model_index.json"):
        load_pipeline(tmp_path)


def test_micro_conditioning_needs_the_right_last_number(tmp_path):
    with pytest.raises(ValueError, match="exactly one of target_size"):
        micro_conditioning_ids((64, 64), (0, 0))
    pipe = load_pipeline(save(tmp_path, parts("refiner")))
    y = vector_y(torch.zeros(1, 32), micro_conditioning_ids((64, 64), (0, 0), aesthetic_score=6.0))
    assert y.shape[1] == pipe.unet_config.adm_in_channels


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 0.02), (torch.bfloat16, 0.1)])
def test_half_precision_generates_what_float32_does(tmp_path, dtype, tol):
    """GroupNorm32 normalises in float32; with half-precision weights that needs the weights
    cast too, or PyTorch refuses the mixed dtypes and nothing in half precision runs."""
    path = save(tmp_path, parts("base"))
    half = load_pipeline(path, dtype=dtype)("a red circle", num_inference_steps=2, seed=0, progress=False)
    full = load_pipeline(path)("a red circle", num_inference_steps=2, seed=0, progress=False)
    assert (half.latents.float() - full.latents).abs().max() < tol
