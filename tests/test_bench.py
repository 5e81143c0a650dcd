"""`ddpm-gui bench`: the smoke run works and reports every figure. No timing assertions: a benchmark is
a command that prints numbers."""

import json

import numpy as np
import pytest
import torch

from ddpm_gui.bench import TutorialLoop, img_to_tensor, tutorial_dataset
from ddpm_gui.cli import main


def test_bench_quick_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["bench", "--quick", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "speedup" in printed and "tutorial loop" in printed
    res = json.loads(out.read_text())
    for key in (
        "tutorial_img_per_s",
        "studio_img_per_s",
        "speedup",
        "flops_per_image_train",
        "tutorial_tflops",
        "studio_tflops",
        "matmul_peak_tflops",
        "peak_fraction",
    ):
        assert res[key] > 0, key
    assert set(res["sampling_s"]) == {"1", "2", "ddim5_batch16"}
    assert all(v > 0 for v in res["sampling_s"].values())
    assert res["sampling_steps"] == 100
    assert all(v > 0 for v in res["peak_memory_mb"].values())
    assert res["device_type"] == "cpu" and res["config"]["quick"]


def test_bench_skip_sampling_threads_and_bad_batches(tmp_path, capsys):
    """--threads N: the bench runs with exactly N torch threads, and the caller's count comes back after."""
    old = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        args = ["bench", "--quick", "--device", "cpu", "--skip-sampling", "--threads", "2"]
        assert main([*args, "--json", str(tmp_path / "b.json")]) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(old)
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["threads"] == 2 and "cpu (2 threads)" in res["device"]
    assert "sampling_s" not in res and res["peak_memory_mb"]["sampling"] is None
    capsys.readouterr()
    assert main(["bench", "--device", "cpu", "--sample-batches", "1,x"]) == 2
    assert "--sample-batches" in capsys.readouterr().err


def test_tutorial_conversion_is_the_articles():
    """img_to_tensor: float64, (1, 3, H, W), [-1, 1]; the loop's noising runs in float64 as in the article."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    ds = tutorial_dataset(imgs)
    x = img_to_tensor(ds[1]["img"])
    assert x.dtype == torch.float64 and x.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), imgs[1] / 255 * 2 - 1)
    loop = TutorialLoop(torch.nn.Conv2d(3, 3, 3, padding=1), ds, torch.device("cpu"), batch_size=2)
    x0 = torch.cat([img_to_tensor(d["img"]) for d in ds[:2]])
    xt, eps = loop.q_xt_x0(x0, torch.tensor([0, 99]))
    assert xt.dtype == torch.float64 and eps.dtype == torch.float64
    loop.unet = _Net()
    loop.optim = torch.optim.AdamW(loop.unet.parameters(), lr=3e-4)
    for _ in range(3):  # wraps around the 4-image list
        loop.step()
    assert len(loop.losses) == 3 and all(np.isfinite(loop.losses))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


@pytest.mark.parametrize("mode", ["eager", "auto", "cuda-graph"])
def test_accelerate_falls_back_cleanly_on_cpu(mode):
    """On the CPU these modes sample the same numbers as the plain model (graphs need CUDA)."""
    from ddpm_gui.engine.accel import accelerate
    from ddpm_gui.models.presets import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    fast = accelerate(model, mode)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 50])
    with torch.inference_mode():
        want = model(x, t)
        got = fast(x, t)
    torch.testing.assert_close(got, want)
    assert getattr(fast, "fallback_reason", None) is None
    assert fast.image_channels == 3  # attribute reads reach the wrapped model


@pytest.mark.slow
def test_compiled_model_matches_eager():
    """The compile mode runs the torch.compile'd model (not the eager one) and gives eager's numbers within
    float tolerance. Where torch.compile cannot build here (no C++ compiler, an unsupported platform), the
    wrapper falls back to eager and says why: then there is nothing to compare."""
    from ddpm_gui.engine.accel import CompiledDenoiser, accelerate
    from ddpm_gui.models.presets import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    fast = accelerate(model, "compile")
    assert isinstance(fast, CompiledDenoiser)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 50])
    with torch.inference_mode():
        want = model(x, t)
        got = fast(x, t)
    if fast.fallback_reason:
        pytest.skip(f"torch.compile cannot run here: {fast.fallback_reason}")
    assert fast._compiled is not None  # no fallback: the output is the compiled code's
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert fast.image_channels == 3
