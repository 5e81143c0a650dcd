#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one run, on a machine with an NVIDIA GPU and the CUDA build of
# torch installed in .venv: the CUDA tests, the bench against the tutorial's loop, 64 images through 100
# DDPM steps, and a 300-step training run of the tutorial recipe. Everything goes to OUT (default gpu-check/).
#
#     bash scripts/gpu_check.sh [OUT]
set -u
out=${1:-gpu-check}
mkdir -p "$out"
py=.venv/bin/python
ddpm=.venv/bin/ddpm-gui
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} > "$out/device.txt" 2>&1
cat "$out/device.txt"

# 1. the tests that need CUDA (and the GPU-path tests, which run everywhere)
$py -m pytest -q -rs -k "cuda or gpu or accel or async_save or precision" tests > "$out/tests.txt" 2>&1
tail -3 "$out/tests.txt"

# 2. DDPM Studio against the tutorial's loop, with the bf16 peak probed between chunks
$ddpm bench --device cuda --preset tutorial --json "$out/bench.json" > "$out/bench.txt" 2>&1
tail -25 "$out/bench.txt"

# 3. 64 images through 100 DDPM steps of the tutorial UNet (the CUDA graph is captured on the first run)
$py - > "$out/sample.txt" 2>&1 <<'EOF'
import time, torch
from ddpm_gui.engine.sampler import ModelBundle, SampleConfig, accelerated, sample_images
from ddpm_gui.core.schedule import NoiseSchedule
from ddpm_gui.models.presets import build_model
model = build_model("tutorial").cuda().eval()
bundle = accelerated(ModelBundle(model=model, schedule=NoiseSchedule(), prediction="eps", image_size=32,
                                 num_classes=None, class_names=None, step=0, preset="tutorial",
                                 source="gpu check", device=torch.device("cuda")))
cfg = SampleConfig(n=64, sampler="ddpm", seed=0)
for run in range(4):
    torch.cuda.synchronize(); t0 = time.perf_counter()
    sample_images(bundle, cfg)
    torch.cuda.synchronize()
    print(f"run {run}: 64 images x 100 DDPM steps in {time.perf_counter() - t0:.3f} s")
EOF
cat "$out/sample.txt"

# 4. a 300-step tutorial training run (background checkpoints at 100 and 200)
/usr/bin/time -v $ddpm train --recipe tutorial --steps 300 --checkpoint-every 100 --out "$out/run" \
  > "$out/train.txt" 2>&1
grep -E "img/s|Finished|Elapsed|Maximum resident" "$out/train.txt" | tail -6
