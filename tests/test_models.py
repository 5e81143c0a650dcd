"""The UNet (labml.ai's, with the softmax over the keys) and its presets."""

import json

import pytest
import torch

from ddpm_gui.errors import ConfigError
from ddpm_gui.models import (
    PRESET_NOTES,
    PRESETS,
    ModelConfig,
    UNet,
    build_model,
    check_image_size,
    count_parameters,
    flops_per_image,
    get_preset,
)
from ddpm_gui.models.unet import AttentionBlock


@pytest.fixture(scope="module")
def tutorial() -> UNet:
    torch.manual_seed(0)
    return build_model("tutorial").eval()


def test_tutorial_has_labml_parameter_count(tutorial):
    assert count_parameters(tutorial) == 42_253_539


def test_preset_sizes():
    assert 1_000_000 <= count_parameters(build_model("small")) <= 8_000_000
    assert count_parameters(build_model("tiny")) < 1_000_000
    assert (
        set(PRESETS) == set(PRESET_NOTES) == {"tutorial", "small", "tiny", "ddpm-cifar10", "diffusers-tiny"}
    )


def test_tutorial_output_shape(tutorial):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert tutorial(x, torch.tensor([10])).shape == x.shape


@pytest.mark.parametrize("name", ["small", "tiny"])
def test_small_presets_output_shape(name):
    model = build_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x, torch.tensor([0, 99])).shape == x.shape


@pytest.mark.parametrize("size", [16, 64])
def test_tiny_other_sizes(size):
    model = build_model("tiny").eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert model(x, torch.tensor([3, 4])).shape == x.shape


def test_greyscale():
    cfg = ModelConfig(**{**get_preset("tiny").to_dict(), "image_channels": 1})
    model = build_model(cfg).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert model(x, torch.tensor([1, 2])).shape == x.shape


def test_t_broadcast_and_dtype():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        full = model(x, torch.tensor([7, 7, 7]))
        assert torch.allclose(model(x, torch.tensor([7])), full, atol=1e-6)
        assert torch.allclose(model(x, torch.tensor([7.0, 7.0, 7.0])), full, atol=1e-6)


def test_different_t_give_different_outputs():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = model(x, torch.tensor([1, 80]))
    assert (out[0] - out[1]).abs().max() > 1e-3


# --- attention: softmax over the keys (labml's 2022-09-12 fix), not over the queries


def _reference_attention(block: AttentionBlock, x: torch.Tensor, softmax_dim: int) -> torch.Tensor:
    """labml's einsum formulation; softmax_dim=2 (keys j) is correct, 1 (queries i) is the old bug."""
    b, c, h, w = x.shape
    seq = x.view(b, c, -1).permute(0, 2, 1)
    qkv = block.projection(seq).view(b, -1, block.n_heads, 3 * block.d_k)
    q, k, v = torch.chunk(qkv, 3, dim=-1)
    attn = torch.einsum("bihd,bjhd->bijh", q, k) * block.scale
    attn = attn.softmax(dim=softmax_dim)
    res = torch.einsum("bijh,bjhd->bihd", attn, v).reshape(b, -1, block.n_heads * block.d_k)
    res = block.output(res) + seq
    return res.permute(0, 2, 1).reshape(b, c, h, w)


def test_attention_matches_correct_formula():
    torch.manual_seed(0)
    block = AttentionBlock(64)
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        out = block(x)
        right = _reference_attention(block, x, softmax_dim=2)
        wrong = _reference_attention(block, x, softmax_dim=1)
    assert torch.allclose(out, right, atol=1e-5)
    assert (out - wrong).abs().max() > 1e-2  # would pass only with the old wrong-axis bug


def test_attention_parameters_include_unused_groupnorm():
    c = 64
    # projection (c -> 3c) + output (c -> c) + GroupNorm(32, c), as in labml
    assert count_parameters(AttentionBlock(c)) == (c * 3 * c + 3 * c) + (c * c + c) + 2 * c


# --- class conditioning


def test_conditional_model():
    torch.manual_seed(0)
    k = 10
    uncond = build_model("tiny")
    cond = build_model("tiny", num_classes=k).eval()
    assert cond.num_classes == k and cond.null_class == k
    assert count_parameters(cond) == count_parameters(uncond) + (k + 1) * cond.time_channels
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([30, 30])
    with torch.no_grad():
        a = cond(x, t, torch.tensor([0, 0]))
        b = cond(x, t, torch.tensor([5, 5]))
        null = cond(x, t, torch.tensor([k, k]))
        none = cond(x, t)
    assert (a - b).abs().max() > 1e-4
    assert torch.allclose(none, null)


def test_unconditional_model_refuses_labels():
    with pytest.raises(ValueError):
        build_model("tiny")(torch.randn(1, 3, 16, 16), torch.tensor([1]), torch.tensor([0]))


# --- configs, sizes, errors, FLOPs


def test_compound_widths():
    assert get_preset("tutorial").level_channels() == [32, 64, 128, 512]
    assert ModelConfig(compound=False).level_channels() == [32, 64, 64, 128]


def test_config_json_round_trip():
    for cfg in PRESETS.values():
        d = json.loads(json.dumps(cfg.to_dict()))
        assert ModelConfig.from_dict(d) == cfg
    with pytest.raises(ConfigError, match="bogus"):
        ModelConfig.from_dict({"bogus": 1})


def test_check_image_size():
    assert get_preset("tutorial").min_divisor() == 8
    check_image_size("tutorial", 32)
    check_image_size(get_preset("tutorial"), 64)
    with pytest.raises(ConfigError, match="multiple of 8"):
        check_image_size("tutorial", 30)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="tutorial, small, tiny"):
        get_preset("nope")


def test_bad_width_is_a_config_error():
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_model(ModelConfig(n_channels=16))


def test_tutorial_flops():
    f = flops_per_image("tutorial", 32)
    assert 1.5e9 <= f["forward"] <= 2.5e9
    assert 2.7 <= f["train"] / f["forward"] <= 3.3
    assert flops_per_image(get_preset("tutorial")) == f  # cached per config, same answer by name or config


def test_flops_of_a_built_model():
    assert flops_per_image(build_model("tiny", num_classes=3)) == flops_per_image("tiny")
