"""The training and sampling engine, headless, on small real runs."""

import json
import threading

import numpy as np
import pytest
import torch

from ddpm_gui.data import load_data
from ddpm_gui.engine import events as ev
from ddpm_gui.engine.checkpoint import list_checkpoints, load_checkpoint, read_meta
from ddpm_gui.engine.config import RUN_CONFIG, TrainConfig, read_config_toml
from ddpm_gui.engine.sampler import SampleConfig, denoise_frames, load_bundle, sample_frames
from ddpm_gui.engine.trainer import Trainer
from ddpm_gui.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def small_data():
    return load_data("builtin:256", image_size=16)


def cfg(**kw):
    base = dict(
        data="builtin:256", image_size=16, preset="tiny", batch_size=8, steps=12, lr=1e-3, warmup_steps=0,
        log_every=2, preview_every=6, preview_n=4, preview_steps=3, checkpoint_every=6, checkpoint_minutes=0,
        device="cpu", seed=0, threads=1,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def run_all(trainer):
    return list(trainer.run())


def test_training_run_events_and_run_folder(tmp_path, small_data):
    events = run_all(Trainer(cfg(), tmp_path / "run", data=small_data))
    kinds = [type(e).__name__ for e in events]
    assert "Failed" not in kinds, [e for e in events if isinstance(e, ev.Failed)]
    started = next(e for e in events if isinstance(e, ev.Started))
    assert started.step == 0 and started.total_steps == 12 and started.n_params > 0
    prog = [e for e in events if isinstance(e, ev.Progress)]
    steps = np.concatenate([p.steps for p in prog])
    assert steps.tolist() == list(range(1, 13))  # every step's loss reaches the curve exactly once
    assert all(np.isfinite(np.concatenate([p.losses for p in prog])))
    previews = [e for e in events if isinstance(e, ev.Preview)]
    assert [p.step for p in previews] == [6, 12]
    assert previews[0].images.shape == (4, 16, 16, 3) and previews[0].images.dtype == np.uint8
    assert isinstance(events[-1], ev.Finished) and events[-1].reason == "completed" and events[-1].step == 12
    run = tmp_path / "run"
    assert read_config_toml(run / RUN_CONFIG)["preset"] == "tiny"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 12
    assert [s for s, _ in list_checkpoints(run)] == [6, 12]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_00000006.png", "step_00000012.png"]
    tensors, meta = load_checkpoint(run / "checkpoints" / "step_00000012.safetensors")
    assert (
        meta["step"] == 12
        and any(k.startswith("ema.") for k in tensors)
        and any(k.startswith("optim.") for k in tensors)
    )


def test_loss_decreases_on_builtin(tmp_path, small_data):
    """A real (short) training run lowers the loss: first 10 steps vs last 10."""
    c = cfg(steps=120, batch_size=16, lr=2e-3, log_every=1, preview_every=0, checkpoint_every=0)
    events = run_all(Trainer(c, tmp_path / "run", data=small_data))
    losses = np.concatenate([e.losses for e in events if isinstance(e, ev.Progress)])
    assert len(losses) == 120
    assert losses[-20:].mean() < 0.6 * losses[:10].mean()


def test_pause_resume_stop_from_another_thread(tmp_path, small_data):
    trainer = Trainer(
        cfg(steps=100000, preview_every=0, checkpoint_every=0), tmp_path / "run", data=small_data
    )
    seen = []

    def consume():
        for e in trainer.run():
            seen.append(e)

    th = threading.Thread(target=consume)
    th.start()
    try:
        for _ in range(200):
            if any(isinstance(e, ev.Progress) for e in seen):
                break
            threading.Event().wait(0.05)
        trainer.pause()
        for _ in range(100):
            if any(isinstance(e, ev.Paused) for e in seen):
                break
            threading.Event().wait(0.05)
        step_paused = trainer.step
        threading.Event().wait(0.3)
        assert trainer.step == step_paused  # no steps while paused
        trainer.resume()
        for _ in range(100):
            if trainer.step > step_paused:
                break
            threading.Event().wait(0.05)
        assert trainer.step > step_paused
    finally:
        trainer.stop()
        th.join(60)
    assert not th.is_alive()
    fin = seen[-1]
    assert isinstance(fin, ev.Finished) and fin.reason == "stopped"
    assert fin.checkpoint and read_meta(fin.checkpoint)["step"] == fin.step  # stopping leaves a checkpoint


def test_resume_continues_step_and_curve(tmp_path, small_data):
    run = tmp_path / "run"
    run_all(Trainer(cfg(steps=6), run, data=small_data))
    events = run_all(Trainer(cfg(steps=12), run, resume=True, data=small_data))
    started = next(e for e in events if isinstance(e, ev.Started))
    assert started.resumed and started.step == 6
    prog = [e for e in events if isinstance(e, ev.Progress)]
    assert prog[0].steps.tolist()[:3] == [2, 4, 6]  # the earlier curve is replayed first
    assert prog[-1].step == 12
    assert events[-1].step == 12


def test_resume_is_exact(tmp_path, small_data):
    """N steps in one go == N/2 + resume + N/2: same weights, bitwise on CPU. At a fixed thread count: the
    automatic one follows the machine's load (a busy machine can give the two runs different counts), and
    a float sum split over another number of threads rounds differently."""
    c = cfg(steps=10, preview_every=0, checkpoint_every=0, threads=1)
    run_all(Trainer(c, tmp_path / "a", data=small_data))
    run_all(Trainer(c.replace(steps=5), tmp_path / "b", data=small_data))
    run_all(Trainer(c, tmp_path / "b", resume=True, data=small_data))
    ta, _ = load_checkpoint(tmp_path / "a" / "checkpoints" / "step_00000010.safetensors")
    tb, _ = load_checkpoint(tmp_path / "b" / "checkpoints" / "step_00000010.safetensors")
    for k in ta:
        if k.startswith(("model.", "ema.", "optim.")):
            assert torch.equal(ta[k], tb[k]), k


def test_resume_refuses_other_architecture_and_new_run_in_used_folder(tmp_path, small_data):
    run = tmp_path / "run"
    run_all(Trainer(cfg(steps=2), run, data=small_data))
    ev_ = run_all(Trainer(cfg(steps=4), run, data=small_data))  # not resume: refused, nothing overwritten
    assert isinstance(ev_[-1], ev.Failed) and "resume" in ev_[-1].message
    ev2 = run_all(Trainer(cfg(steps=4, preset="small"), run, resume=True, data=small_data))
    assert isinstance(ev2[-1], ev.Failed) and "preset" in ev2[-1].message
    assert [s for s, _ in list_checkpoints(run)] == [2]


def test_nonfinite_loss_stops_without_saving(tmp_path, small_data):
    c = cfg(steps=40, log_every=1, preview_every=0, checkpoint_every=10)
    tr = Trainer(c, tmp_path / "run", data=small_data)

    def poison(step):
        if step == 15:
            with torch.no_grad():
                for p in tr.model.parameters():
                    p.fill_(float("nan"))

    tr.fault_hook = poison
    events = run_all(tr)
    assert isinstance(events[-1], ev.Failed)
    assert "learning rate" in events[-1].message
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [10]  # the last good one, nothing after
    tensors, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000010.safetensors")
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())


def test_oom_halves_batch_and_continues(tmp_path, small_data):
    c = cfg(steps=6, preview_every=0, checkpoint_every=0, batch_size=8)
    tr = Trainer(c, tmp_path / "run", data=small_data)
    fired = []

    def oom(step):
        if step == 2 and not fired:
            fired.append(1)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    tr.fault_hook = oom
    events = run_all(tr)
    notes = [e.message for e in events if isinstance(e, ev.Notice) and e.level == "warning"]
    assert any("batch size halved to 4" in n for n in notes)
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 6


def test_conditional_training_and_guided_sampling(tmp_path, small_data):
    c = cfg(conditional=True, steps=4, preview_every=4, preview_n=10)
    events = run_all(Trainer(c, tmp_path / "run", data=small_data))
    assert isinstance(events[-1], ev.Finished)
    b = load_bundle(tmp_path / "run", device="cpu")
    assert b.num_classes == 10 and b.class_names and len(b.class_names) == 10
    imgs = [
        f for f in sample_frames(b, SampleConfig(n=2, sampler="ddim", steps=3, class_label=3, guidance=3.0))
    ]
    assert imgs[-1].final and imgs[-1].xt.shape == (2, 16, 16, 3)
    with pytest.raises(ConfigError):
        list(sample_frames(b, SampleConfig(n=2, class_label=10)))


def test_conditional_needs_labels(tmp_path):
    data = load_data("builtin:64", image_size=16)
    data.labels = None
    events = run_all(Trainer(cfg(conditional=True), tmp_path / "run", data=data))
    assert isinstance(events[-1], ev.Failed) and "labels" in events[-1].message


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_data):
    run = tmp_path_factory.mktemp("trained") / "run"
    run_all(Trainer(cfg(steps=4, preview_every=0), run, data=small_data))
    return run


def test_sampler_frames_ddpm_ddim(trained_run):
    b = load_bundle(trained_run, device="cpu")
    assert b.step == 4 and b.image_size == 16 and b.num_classes is None
    frames = list(sample_frames(b, SampleConfig(n=3, sampler="ddpm", seed=1, every=10)))
    assert frames[-1].final and frames[-1].index == 99 and frames[-1].total == 100
    assert len(frames) == 11  # 0, 10, ..., 90 and the last one
    assert frames[0].xt.shape == (3, 16, 16, 3) and frames[0].x0.dtype == np.uint8
    again = list(sample_frames(b, SampleConfig(n=3, sampler="ddpm", seed=1, every=10)))
    assert np.array_equal(again[-1].xt, frames[-1].xt)  # seeded: reproducible
    other = list(sample_frames(b, SampleConfig(n=3, sampler="ddpm", seed=2, every=50)))
    assert not np.array_equal(other[-1].xt, frames[-1].xt)
    d = list(sample_frames(b, SampleConfig(n=2, sampler="ddim", steps=7)))
    assert len(d) == 7 and d[-1].final
    stop = threading.Event()
    stop.set()
    assert len(list(sample_frames(b, SampleConfig(n=2), stop=stop))) == 1


def test_denoise_frames(trained_run, small_data):
    b = load_bundle(trained_run, device="cpu")
    frames = list(denoise_frames(b, small_data.images[4], t=50, k=10, seed=0))
    assert frames[0].index == -1 and frames[0].xt.shape == (10, 16, 16, 3)
    assert len(frames) == 1 + 51 and frames[-1].final
    assert len({frames[-1].xt[i].tobytes() for i in range(10)}) == 10  # ten different continuations
    with pytest.raises(ConfigError):
        list(denoise_frames(b, small_data.images[0], t=100, k=2))


def test_load_bundle_errors(tmp_path, trained_run):
    with pytest.raises(CheckpointError):
        load_bundle(tmp_path / "nothing-here")
    bad = tmp_path / "bad.safetensors"
    good = trained_run / "checkpoints" / "step_00000004.safetensors"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_bundle(bad)


def test_config_validation_messages():
    bad = [
        dict(lr=-1.0), dict(lr=float("nan")), dict(batch_size=0), dict(steps=0), dict(preset="huge"),
        dict(image_size=30), dict(ema_decay=1.0), dict(device="tpu"), dict(cond_drop=1.0),
    ]  # fmt: skip
    for kw in bad:
        with pytest.raises(ConfigError) as e:
            cfg(**kw).validate()
        assert len(str(e.value)) > 10
    with pytest.raises(ConfigError, match="newer"):
        TrainConfig.from_dict({**cfg().to_dict(), "version": 99})
    c = cfg()
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


# ---------------------------------------------------------------------------------------------------
# the dataset on the device, fixed preview noise, device choice, progress figures


CUDA = pytest.param(
    "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_training_batches_come_from_a_uint8_dataset_on_the_device(tmp_path, small_data, device):
    tr = Trainer(
        cfg(steps=3, preview_every=0, checkpoint_every=0, device=device), tmp_path / "run", data=small_data
    )
    seen = []
    forward_backward = tr._forward_backward

    def spy(images, labels):
        seen.append(images)
        return forward_backward(images, labels)

    tr._forward_backward = spy
    events = run_all(tr)
    assert isinstance(events[-1], ev.Finished), events[-1]
    assert len(seen) == 3 and all(x is seen[0] for x in seen)  # moved once, not per step
    imgs = seen[0]
    assert imgs.dtype == torch.uint8 and imgs.device.type == tr.device.type == device
    assert tuple(imgs.shape) == small_data.images.shape
    assert np.array_equal(imgs.cpu().numpy(), small_data.images)


def test_previews_start_from_the_same_noise_and_do_not_disturb_training(tmp_path, small_data, monkeypatch):
    import ddpm_gui.engine.learner as learner_mod

    starts = []
    reverse = learner_mod.reverse_process

    def spy(denoiser, x, *a, **kw):
        starts.append(x.clone())
        return reverse(denoiser, x, *a, **kw)

    monkeypatch.setattr(learner_mod, "reverse_process", spy)
    c = cfg(steps=6, preview_every=3, checkpoint_every=0)
    tr = Trainer(c, tmp_path / "a", data=small_data)
    events = run_all(tr)
    previews = [e for e in events if isinstance(e, ev.Preview)]
    assert [p.step for p in previews] == [3, 6] and len(starts) == 2
    assert torch.equal(starts[0], starts[1])  # the same starting noise at every interval
    assert not np.array_equal(previews[0].images, previews[1].images)  # ...and the weights changed
    again = tr.preview()  # unchanged weights: the preview is bitwise the same
    assert np.array_equal(again, previews[1].images)
    # previews have their own generator: a run without them trains to bitwise the same weights
    run_all(Trainer(c.replace(preview_every=0), tmp_path / "b", data=small_data))
    ta, _ = load_checkpoint(tmp_path / "a" / "checkpoints" / "step_00000006.safetensors")
    tb, _ = load_checkpoint(tmp_path / "b" / "checkpoints" / "step_00000006.safetensors")
    for k in ta:
        if k.startswith(("model.", "ema.")):
            assert torch.equal(ta[k], tb[k]), k


def test_pick_device(monkeypatch):
    from ddpm_gui.engine import device as dev

    assert dev.pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    assert dev.pick_device("auto") == torch.device("cpu")
    assert dev.pick_device() == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="no CUDA GPU") as e:
            dev.pick_device(name)
        assert "'cpu'" in str(e.value) and "'auto'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="MPS"):
        dev.pick_device("mps")
    with pytest.raises(ConfigError, match="Unknown device 'tpu'"):
        dev.pick_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="no cuda:3"):
        dev.pick_device("cuda:3")


def test_training_on_cuda_without_a_gpu_fails_with_the_device_message(tmp_path, small_data, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    events = run_all(Trainer(cfg(steps=2, device="cuda"), tmp_path / "run", data=small_data))
    assert isinstance(events[-1], ev.Failed) and "no CUDA GPU" in events[-1].message
    assert list_checkpoints(tmp_path / "run") == []


def _run_recording_timesteps(run_dir, data):
    """A 10-step run that reads every step; returns (config, events, [(t, per-example loss) per step])."""
    c = cfg(steps=10, log_every=1, preview_every=0, checkpoint_every=0)
    tr = Trainer(c, run_dir, data=data)
    sampled = []  # as the trainer's update receives them
    update = tr._update

    def spy(loss, per, t, gnorm):
        sampled.append((t.clone(), per.clone()))
        return update(loss, per, t, gnorm)

    tr._update = spy
    events = run_all(tr)
    assert isinstance(events[-1], ev.Finished), events[-1]
    return c, events, sampled


def test_progress_rates_eta_and_loss_per_timestep(tmp_path, small_data):
    c, events, sampled = _run_recording_timesteps(tmp_path / "run", small_data)
    prog = [e for e in events if isinstance(e, ev.Progress)]
    assert [p.step for p in prog] == list(range(1, 11))
    for p in prog:
        assert np.isfinite(p.img_per_s) and p.img_per_s > 0, p
        assert np.isfinite(p.eta_s) and p.elapsed_s > 0, p
        assert (p.eta_s > 0) if p.step < c.steps else (p.eta_s == 0), p
    assert [p.elapsed_s for p in prog] == sorted(p.elapsed_s for p in prog)

    # the per-timestep statistics, emitted at the first three reads (so a short run's plot fills early) and
    # every 5 reads: finite exactly at the timesteps drawn so far, nan elsewhere; the first of every fifth
    # read is the plain mean of the losses drawn at each timestep (the early looks do not decay the sums)
    by_t = [e for e in events if isinstance(e, ev.TimestepLoss)]
    assert [e.step for e in by_t] == [1, 2, 3, 5, 10]
    by_t = [e for e in by_t if e.step % 5 == 0]
    T = c.schedule.T
    n = np.zeros(T)
    for i, (t, _) in enumerate(sampled, start=1):
        np.add.at(n, t.numpy(), 1.0)
        if i % 5 == 0:
            e = by_t[i // 5 - 1]
            assert e.loss_by_t.shape == (T,) and e.loss_by_t.dtype == np.float32
            seen = n > 0
            assert seen.sum() < T  # 8 examples a step: some timesteps are still unseen
            assert np.isfinite(e.loss_by_t[seen]).all() and np.isnan(e.loss_by_t[~seen]).all()
    first = by_t[0].loss_by_t
    s, n = np.zeros(T), np.zeros(T)
    for t, per in sampled[:5]:
        np.add.at(s, t.numpy(), per.double().numpy())
        np.add.at(n, t.numpy(), 1.0)
    np.testing.assert_allclose(first[n > 0], s[n > 0] / n[n > 0], rtol=1e-5)


def test_loss_per_timestep_stays_a_mean_after_the_decay(tmp_path, small_data):
    """After each emission sums and counts both decay by 0.9: what is shown stays a weighted mean of the
    losses drawn at that timestep (recent ones weigh more), never a shrunken one."""
    c, events, sampled = _run_recording_timesteps(tmp_path / "run", small_data)
    last = [e for e in events if isinstance(e, ev.TimestepLoss)][-1].loss_by_t
    T = c.schedule.T
    s, n = np.zeros(T), np.zeros(T)
    for i, (t, per) in enumerate(sampled, start=1):
        np.add.at(s, t.numpy(), per.double().numpy())
        np.add.at(n, t.numpy(), 1.0)
        if i == 5:
            s, n = s * 0.9, n * 0.9
    np.testing.assert_allclose(last[n > 0], s[n > 0] / n[n > 0], rtol=1e-5)
