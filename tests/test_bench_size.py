"""`bench --sections scaling`: every cell timed or said why not, cliffs found between neighbours, the plot
written with them circled. No timed assertions."""

import json

import numpy as np
from PIL import Image

from ddpm_gui.bench_size import find_cliffs, plot_cells
from ddpm_gui.cli import main

RED = (220, 0, 0)


def _cell(preset, size, batch, ms):
    return {"preset": preset, "image_size": size, "batch": batch, "ms_per_image": ms}


def test_cliffs_between_neighbours():
    cells = [
        _cell("p", 32, 16, 10.0), _cell("p", 32, 32, 9.0), _cell("p", 32, 64, 20.0),  # 64: x2.2 per image
        _cell("p", 64, 16, 40.0), _cell("p", 64, 32, 36.0), _cell("p", 64, 64, 200.0),
        {**_cell("p", 64, 128, 0.0), "skipped": "out of memory"},
    ]  # fmt: skip
    got = {
        (c["axis"], c.get("image_size"), c.get("batch"), c["from"], c["to"]) for c in find_cliffs(cells, 1.5)
    }
    # 32 -> 64 px is 4x the pixels: 40 ms is the same per pixel as 10, not a cliff; 200 vs 20 per pixel is x2.5
    assert got == {("batch", 32, None, 32, 64), ("batch", 64, None, 32, 64), ("size", None, 64, 32, 64)}
    assert find_cliffs(cells, 10.0) == []


def _red_pixels(path) -> int:
    a = np.asarray(Image.open(path).convert("RGB"))
    return int(np.all(a == RED, axis=-1).sum())


def test_plot_circles_the_cliffs(tmp_path):
    cells = [
        _cell("a", 32, 16, 10.0),
        _cell("a", 32, 32, 30.0),
        _cell("b", 32, 16, 1.0),
        _cell("b", 32, 32, 1.0),
    ]
    cliffs = find_cliffs(cells, 1.5)
    assert len(cliffs) == 1
    plot_cells(cells, cliffs, str(tmp_path / "with.png"))
    plot_cells(cells, [], str(tmp_path / "without.png"))
    assert _red_pixels(tmp_path / "with.png") > 20 and _red_pixels(tmp_path / "without.png") == 0
    assert Image.open(tmp_path / "with.png").format == "PNG"


def test_bench_scaling_section(tmp_path, capsys, one_thread):
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    args = ["bench", "--quick", "--device", "cpu", "--sections", "scaling", "--scaling-batches", "2,4"]
    assert main([*args, "--scaling-sizes", "16", "--plot", str(png), "--json", str(out)]) == 0
    res = json.loads(out.read_text())["scaling"]
    cells = res["cells"]
    assert [(c["preset"], c["image_size"], c["batch"]) for c in cells] == [("tiny", 16, 2), ("tiny", 16, 4)]
    for c in cells:
        assert c["ms_per_image"] > 0 and c["peak_tflops"] > 0 and 0 < c["peak_fraction"]
        assert len(c["ms_per_image_all"]) == 1  # --quick: one timed step a cell
    assert res["plot"] == str(png) and Image.open(png).size[0] > 100
    printed = capsys.readouterr().out
    assert "tiny" in printed and "ms/image" in printed and "wrote" in printed


def test_bench_scaling_bad_options_are_one_line_errors(tmp_path, capsys):
    base = ["bench", "--quick", "--device", "cpu", "--sections", "scaling"]
    assert main([*base, "--scaling-presets", "tiny,tinny"]) == 2
    assert "'tinny'" in capsys.readouterr().err
    assert main([*base, "--plot", str(tmp_path / "no" / "such" / "p.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "--cliff", "0.5"]) == 2
    assert "--cliff" in capsys.readouterr().err


def test_a_cell_that_cannot_run_is_skipped_with_its_reason(one_thread):
    from ddpm_gui.bench_size import SizeConfig, run_size

    cfg = SizeConfig.quick_config()
    cfg.device, cfg.sizes, cfg.batches = "cpu", (12,), (2,)  # 12 px: the tiny UNet needs a multiple of 8
    res = run_size(cfg, log=lambda line: None)
    (cell,) = res["cells"]
    assert "skipped" in cell and "12" in cell["skipped"] and res["cliffs"] == []
