"""`ddpm-gui bench --sections samplers`: every sampler at each step count, judged like `ddpm-gui eval`."""

from __future__ import annotations

import pytest

from ddpm_gui.bench_samplers import SamplersBench, cells, run_samplers
from ddpm_gui.core.spec import SAMPLERS


def test_cells_put_the_full_ddpm_chain_first_and_stride_the_others():
    got = cells(SamplersBench(steps=(10, 20)))
    assert got[0] == ("ddpm", None)
    strided = [n for n, s in SAMPLERS.items() if s.strided]
    assert got[1:] == [(n, k) for n in strided for k in (10, 20)]
    assert cells(SamplersBench(samplers=("ddim",), steps=(5,))) == [("ddim", 5)]


@pytest.mark.usefixtures("one_thread")
def test_the_section_judges_each_cell_against_full_ddpm():
    lines: list[str] = []
    cfg = SamplersBench(samplers=("ddpm", "ddim"), steps=(2, 5), n=4, device="cpu")
    res = run_samplers(cfg, lines.append)
    rows = res["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddpm", 100), ("ddim", 2), ("ddim", 5)]
    ref = rows[0]["accuracy"]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["seconds"] > 0 and r["frechet_distance"] >= 0
        assert r["within_margin_of_ddpm"] == (r["accuracy"] >= ref - cfg.margin)
    assert "points against DDPM's 100 steps" in lines[-1]
