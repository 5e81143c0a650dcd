"""`bench --sections profile`: a step's operators sorted into categories by their scopes and names, the
real training and sampling steps profiled, the A/B tests. No timed assertions."""

import json
from types import SimpleNamespace

from ddpm_gui.bench_profile import TRAIN_CATEGORIES, categorise, category
from ddpm_gui.cli import main


def _ev(name, parent=None, us=0.0):
    return SimpleNamespace(name=name, cpu_parent=parent, self_cpu_time_total=us, self_device_time_total=0.0)


def test_categories_scope_first_then_the_innermost_operator():
    step = _ev("Optimizer.step#AdamW.step")
    conv = _ev("aten::convolution")
    gn_bwd = _ev("autograd::engine::evaluate_function: NativeGroupNormBackward0")
    data = _ev("bench: data/noise")
    sdpa = _ev("aten::_scaled_dot_product_flash_attention_for_cpu")
    cases = {
        "optimizer": [_ev("aten::_fused_adamw_", step), _ev("aten::_foreach_norm")],
        "EMA": [_ev("aten::_foreach_lerp_")],
        "convolution": [_ev("aten::mkldnn_convolution", conv), _ev("aten::copy_", conv)],
        "GroupNorm": [_ev("aten::native_group_norm_backward", gn_bwd), _ev("aten::empty", gn_bwd)],
        "attention": [_ev("aten::empty_like", sdpa)],
        "linear/matmul": [_ev("aten::addmm"), _ev("aten::mm", _ev("aten::matmul"))],
        "activation": [_ev("aten::silu_backward")],
        "data/noise": [_ev("aten::randn", data), _ev("aten::mul", _ev("aten::index", data))],
        "other": [_ev("aten::add"), _ev("aten::mse_loss")],
    }
    for want, events in cases.items():
        for e in events:
            assert category(e) == want, e.name
    ms = categorise([_ev("aten::addmm", us=1500.0), _ev("aten::add", us=500.0), _ev("aten::silu", us=0.0)])
    assert ms["linear/matmul"] == 1.5 and ms["other"] == 0.5 and set(ms) == set(TRAIN_CATEGORIES)


def test_bench_profile_section(tmp_path, capsys, one_thread):
    """The real step: convolutions, the optimizer, the EMA and the data each get time; the learner module's
    functions wrapped for the scopes are its own again after; the A/B gives a ratio inside its interval."""
    from ddpm_gui.engine import learner

    q_sample = learner.q_sample
    out = tmp_path / "p.json"
    args = ["bench", "--quick", "--device", "cpu", "--sections", "profile", "--ab", "no_ema,threads=1"]
    assert main([*args, "--json", str(out)]) == 0
    assert learner.q_sample is q_sample
    res = json.loads(out.read_text())["profile"]
    assert res["threads"] == 1 and res["preset"] == "tiny"
    train = res["train"]["ms_per_step"]
    for cat in ("convolution", "GroupNorm", "optimizer", "EMA", "data/noise"):
        assert train.get(cat, 0) > 0, cat
    assert set(train) <= set(TRAIN_CATEGORIES)
    samp = res["sampling"]["2"]["ms_per_step"]
    assert samp["convolution"] > 0 and "optimizer" not in samp and "EMA" not in samp
    for name in ("no_ema", "threads=1"):
        ab = res["ab"][name]
        r = ab["speed_ratio_B_over_A"]
        assert r["ci95"][0] <= r["ratio"] <= r["ci95"][1] and len(r["all"]) == 2
        assert ab["img_per_s_A"] > 0 and ab["img_per_s_B"] > 0 and len(ab["peak_tflops_all"]) == 2
    printed = capsys.readouterr().out
    assert "convolution" in printed and "A/B no_ema" in printed


def test_unknown_ab_variant_is_a_one_line_error(capsys):
    assert main(["bench", "--quick", "--device", "cpu", "--sections", "profile", "--ab", "channel_last"]) == 2
    err = capsys.readouterr().err
    assert "'channel_last'" in err and "channels_last" in err and "Traceback" not in err
