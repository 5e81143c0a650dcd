"""`ddpm-gui bench`: the smoke run works and reports every figure. No timing assertions: a benchmark is
a command that prints numbers (DESIGN.md)."""

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
    assert torch.get_num_threads() >= 1  # the quick run's thread setting was undone


def test_bench_skip_sampling_and_bad_batches(tmp_path, capsys):
    assert (
        main(["bench", "--quick", "--device", "cpu", "--skip-sampling", "--json", str(tmp_path / "b.json")])
        == 0
    )
    res = json.loads((tmp_path / "b.json").read_text())
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


@pytest.mark.parametrize("mode", ["eager", "auto", "cuda-graph", "compile"])
def test_accelerate_falls_back_cleanly_on_cpu(mode):
    """On the CPU every mode samples the same numbers as the plain model (graphs need CUDA; compile, where
    it cannot build, falls back to eager)."""
    from ddpm_gui.engine.accel import accelerate
    from ddpm_gui.models.presets import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    fast = accelerate(model, mode)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 50])
    with torch.inference_mode():
        want = model(x, t)
        if mode == "compile":
            fast.forward = lambda *a: fast.model(*a)  # do not spend a compile in a unit test
        got = fast(x, t)
    torch.testing.assert_close(got, want)
    assert fast.image_channels == 3  # attribute reads reach the wrapped model
