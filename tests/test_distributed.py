"""Training on several processes (engine/distributed.py): DDP on the CPU (gloo), started by torchrun as the
command line does. A few processes in all: each torchrun start costs seconds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddpm_gui import cli
from ddpm_gui.engine import distributed
from ddpm_gui.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# a run small enough for seconds per process: tiny UNet, 16x16, 64 built-in shapes, batch 8 (4 per rank)
SMALL = ["--data", "builtin:64", "--image-size", "16", "--preset", "tiny", "--batch-size", "8", "--lr", "1e-3",
         "--warmup", "0", "--log-every", "2", "--checkpoint-minutes", "0", "--preview-n", "4",
         "--preview-steps", "2", "--device", "cpu", "--seed", "3"]  # fmt: skip


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_GUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("DDPM_GUI_DEBUG", raising=False)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddpm(*args, nproc: int | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m ddpm_gui train ...` in a child process (with --nproc: under torchrun)."""
    extra = ["--nproc", str(nproc)] if nproc else []
    cmd = [sys.executable, "-m", "ddpm_gui", "train", *map(str, args), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def run_here(*args) -> int:
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as e:
        return e.code


def files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(ckpt)).items() if k.startswith(("model.", "ema."))}


# ---------------------------------------------------------------------------------------------- units


def test_each_rank_draws_from_its_own_shard_and_stream():
    gen = torch.Generator().manual_seed(0)
    two = [distributed.Dist(rank=r, world_size=2) for r in range(2)]
    draws = [d.draw(10, 400, gen) for d in two]
    assert set(draws[0].tolist()) == {0, 2, 4, 6, 8} and set(draws[1].tolist()) == {1, 3, 5, 7, 9}
    assert two[0].seed(7) == 7  # rank 0 keeps the run's seed (a 1-process run is unchanged)
    assert len({two[1].seed(7), two[0].seed(7), distributed.Dist(2, 3).seed(7), two[1].seed(7, step=4)}) == 4
    assert two[0].local_batch(128) == 64
    with pytest.raises(ConfigError, match="too few"):
        distributed.Dist(rank=5, world_size=8).draw(3, 4, gen)


def test_a_batch_that_does_not_divide_is_refused(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match=r"--batch-size 10 is the global batch .* use 9 or 12"):
        distributed.check_batch(10, 3)
    distributed.check_batch(12, 3)
    # --nproc: refused before torchrun starts; under torchrun: before joining the process group
    assert run_here("train", "--out", tmp_path / "a", *SMALL, "--batch-size", "10", "--nproc", "4") == 2
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert run_here("train", "--out", tmp_path / "b", *SMALL, "--batch-size", "10") == 2
    err = capsys.readouterr().err
    assert "must be divisible by 4: use 8 or 12" in err and "must be divisible by 3" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_command_each_process_gets_gives_the_same_settings():
    from ddpm_gui.cli import build_parser
    from ddpm_gui.cli.train import given_settings, train_argv

    argv = ["train", "--out", "r", "--nproc", "2", "--lr", "0.0003", "--no-amp", "--limit", "5", "--T", "50",
            "--zero-snr", "--resume", "--steps", "9"]  # fmt: skip
    a = build_parser().parse_args(argv)
    b = build_parser().parse_args(train_argv(a))
    assert "--nproc" not in train_argv(a) and b.nproc == 1
    assert given_settings(a) == given_settings(b) and b.resume and b.T == 50 and b.zero_snr is True


# ---------------------------------------------------------------------------------------------- DDP steps

_STEPS = r"""
import sys, torch
from safetensors.torch import save_file
from ddpm_gui.core.diffusion import from_uint8
from ddpm_gui.data import load_data
from ddpm_gui.engine import distributed
from ddpm_gui.engine.config import TrainConfig
from ddpm_gui.engine.learner import Learner

torch.set_num_threads(1)
dist = distributed.init_from_env("cpu", 16)
g = torch.Generator().manual_seed(123)
data = load_data("builtin:16", image_size=16)
X0 = from_uint8(torch.from_numpy(data.images[:16]))
T = torch.randint(0, 100, (5, 16), generator=g)
NOISE = torch.randn((5, 16, 3, 16, 16), generator=g)

class Fixed(Learner):
    # the same 16 images, timesteps and noise each step, this rank's share of them
    def _draw_batch(self, images, labels, B):
        s = slice(self.dist.rank * B, (self.dist.rank + 1) * B)
        return X0[s], T[self.step, s], NOISE[self.step, s], None

cfg = TrainConfig(data="builtin:16", image_size=16, preset="tiny", batch_size=16, steps=5, lr=1e-3,
                  warmup_steps=0, device="cpu", ema_decay=0.9, weight_decay=0.1, grad_clip=0.5)
learner = Fixed(cfg, data)
learner.dist = dist
learner.setup()
learner.ddp = dist.wrap(learner.model)
# Adam divides by sqrt(v) + eps: a parameter whose gradient is rounding noise (a bias just before a
# GroupNorm) would take full-size steps in the noise's direction, which the two ways of summing differ in
for group in learner.optim.param_groups:
    group["eps"] = 1e-2
for _ in range(5):
    learner.train_step()
if dist.leader:
    tensors, _ = learner.state_dict()
    save_file({k: v.contiguous() for k, v in tensors.items() if k.startswith(("model.", "ema."))}, sys.argv[1])
distributed.close()
"""


@pytest.mark.slow
def test_five_ddp_steps_on_two_processes_equal_five_steps_on_one(tmp_path):
    script = tmp_path / "steps.py"
    script.write_text(_STEPS)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, script, tmp_path / "two.safetensors"],
            cwd=ROOT,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
        )  # fmt: skip
        for r in range(2)
    ]
    one = subprocess.Popen([sys.executable, script, tmp_path / "one.safetensors"], cwd=ROOT)
    assert [p.wait(timeout=600) for p in (*procs, one)] == [0, 0, 0]
    two, single = load_file(tmp_path / "two.safetensors"), load_file(tmp_path / "one.safetensors")
    assert two.keys() == single.keys() and any(k.startswith("ema.") for k in two)
    for k, v in single.items():
        torch.testing.assert_close(two[k], v, rtol=1e-4, atol=1e-5, msg=k)
    # the steps did move the weights: a rank that trained on its 8 images alone would differ
    from ddpm_gui.models.presets import build_model, get_preset

    torch.manual_seed(0)
    init = build_model(get_preset("tiny")).state_dict()
    moved = max(float((single[f"model.{k}"] - v).abs().max()) for k, v in init.items())
    assert moved > 1e-3


# ---------------------------------------------------------------------------------------------- whole runs


@pytest.mark.slow
def test_only_rank_0_writes_and_a_resume_continues_exactly(tmp_path, capsys):
    opts = [*SMALL, "--checkpoint-every", "4", "--preview-every", "4"]
    one, two, split = tmp_path / "one", tmp_path / "two", tmp_path / "split"
    assert run_here("train", "--out", one, *opts, "--steps", "8") == 0
    r = ddpm("--out", two, *opts, "--steps", "8", nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert files(two) == files(one)
    assert "completed at step 8" in r.stdout and r.stdout.count("completed at step") == 1  # rank 0 prints
    last = two / "checkpoints" / "step_00000008.safetensors"
    assert {"rng.gen.rank1", "rng.torch.rank1", "rng.gen"} <= set(load_file(str(last)))
    assert json.loads((two / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 8

    r = ddpm("--out", split, *opts, "--steps", "4", nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    r = ddpm("--out", split, "--resume", "--steps", "8", nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not bitwise" not in r.stdout + r.stderr
    a, b = weights(last), weights(split / "checkpoints" / "step_00000008.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    capsys.readouterr()
    assert run_here("train", "--out", two, "--resume", "--steps", "10") == 0  # 1 process now
    out = capsys.readouterr().out
    assert "saved by 2 processes and goes on with 1" in out and "not bitwise" in out
    assert (two / "checkpoints" / "step_00000010.safetensors").exists()


def _rank_pids(agent: int) -> dict[int, int]:
    """{rank: pid} of the worker processes a torchrun agent started (Linux: their environment)."""
    out = {}
    for proc in Path("/proc").iterdir():
        try:
            if (
                not proc.name.isdigit()
                or int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != agent
            ):
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        out.update({int(kv[5:]): int(proc.name) for kv in env if kv.startswith(b"RANK=")})
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the ranks through /proc")
def test_a_killed_rank_stops_the_others_with_its_name_and_the_run_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "ddpm_gui", "train", "--out", str(run), *SMALL, "--steps", "100000", "--checkpoint-every", "3",
           "--preview-every", "0"]  # fmt: skip
    agent = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300  # generous: the machine may be busy
        while not list((run / "checkpoints").glob("step_*.safetensors")) and agent.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.5)
        pids = _rank_pids(agent.pid)
        os.kill(pids[1], signal.SIGKILL)
        out, err = agent.communicate(timeout=120)  # generous: the others stop within a minute
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode != 0
    assert f"error: rank 1 (process {pids[1]}) ended at step" in err and "resume with --resume" in err, err[
        -3000:
    ]
    capsys.readouterr()
    assert run_here("train", "--out", run, "--resume", "--steps", "8") == 0
    assert "completed at step 8" in capsys.readouterr().out


@pytest.mark.slow
def test_two_torchrun_agents_rendezvous_on_one_host(tmp_path):
    port = free_port()
    run, elsewhere = tmp_path / "run", tmp_path / "node1-out"
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node-rank={node}",
                "--nproc-per-node=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=ddpm-test",
                "-m",
                "ddpm_gui",
                "train",
                "--out",
                str(run if node == 0 else elsewhere),
                *SMALL,
                "--steps",
                "4",
                "--checkpoint-every",
                "0",
                "--preview-every",
                "0",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for node in range(2)
    ]
    results = [a.communicate(timeout=600) for a in agents]
    assert [a.returncode for a in agents] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    # the rendezvous decides which agent's process is rank 0: it alone prints, and writes its --out
    lead = 0 if "completed at step 4" in results[0][0] else 1
    assert "completed at step 4" in results[lead][0] and "completed" not in results[1 - lead][0]
    written, untouched = (run, elsewhere) if lead == 0 else (elsewhere, run)
    assert (written / "checkpoints" / "step_00000004.safetensors").exists()
    assert not untouched.exists()  # the other rank never touches a run folder, not even its lock


@pytest.mark.slow
def test_scaling_measures_one_and_two_processes_side_by_side():
    from ddpm_gui.bench_scaling import scaling, summary
    from ddpm_gui.errors import DDPMError

    with pytest.raises(DDPMError, match="--nproc 2 or more"):
        scaling(1)
    r = scaling(2, "tiny", steps=2, batch=2, image_size=16, warmup=1)
    assert [run["nproc"] for run in r["runs"]] == [1, 2]
    one, two = (run["img_per_s"] for run in r["runs"])
    assert one > 0 and two > 0
    assert r["efficiency"] == pytest.approx(two / (2 * one)) and r["speedup"] == pytest.approx(two / one)
    assert summary(r).endswith(f"scaling efficiency {r['efficiency']:.0%}")


def test_the_train_tab_offers_gpus_only_when_there_are_several():
    from ddpm_gui.qt.train.multi_gpu import gpus_offered

    assert [gpus_offered(n) for n in (0, 1, 2, 8)] == [0, 0, 2, 8]


@pytest.mark.slow
def test_the_apps_multi_process_run_follows_the_run_folder_and_stops_with_a_checkpoint(tmp_path):
    from conftest import small_config

    from ddpm_gui.engine import events as ev
    from ddpm_gui.qt.train.multi_gpu import MultiGpuRun

    cfg = small_config(data="builtin:64", steps=100000, log_every=2, checkpoint_every=3, seed=3)
    run = MultiGpuRun(cfg, tmp_path / "run", 2, poll_s=0.2)  # on the CPU: gloo, as the GPUs would run
    seen = []
    for e in run.run():
        seen.append(e)
        if isinstance(e, ev.CheckpointSaved):
            run.stop()
    assert isinstance(seen[0], ev.Started) and any(isinstance(e, ev.Progress) and e.step >= 2 for e in seen)
    end = seen[-1]
    assert isinstance(end, ev.Finished) and end.reason == "stopped", end
    saved = [e.step for e in seen if isinstance(e, ev.CheckpointSaved)]
    assert saved[0] == 3 and saved[-1] == end.step  # the stop left a checkpoint of the step it stopped at
    assert Path(end.checkpoint).exists()
