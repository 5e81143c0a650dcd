"""Property tests (hypothesis): whatever a person, a hand-edited config.json or a damaged file supplies,
config validation and checkpoint loading answer with a valid result or a user-facing error (ConfigError /
CheckpointError), never another exception, never a hang; and a valid noise schedule is always finite.

Kept fast (a few hundred examples in all, no example database written): `pytest tests/test_properties.py`
takes well under a minute; raise HYPOTHESIS_EXAMPLES for a longer hunt, e.g. HYPOTHESIS_EXAMPLES=2000."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ddpm_gui.core.schedule import SCHEDULE_KINDS, NoiseSchedule, ScheduleConfig
from ddpm_gui.engine import checkpoint as ck
from ddpm_gui.engine.config import TrainConfig, load_run_config
from ddpm_gui.engine.sampler import load_bundle
from ddpm_gui.errors import CheckpointError, ConfigError, DDPMError
from ddpm_gui.models.presets import PRESETS, build_model

SCALE = max(1, int(os.environ.get("HYPOTHESIS_EXAMPLES", "100"))) / 100


def fast(n: int):
    return settings(
        max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )  # fmt: skip


# ----------------------------------------------------------------------------- value strategies

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=8,
)
# values near the valid ones: most of the interesting boundaries are here
near_valid = (
    st.integers(min_value=-3, max_value=300)
    | st.floats(min_value=-1.5, max_value=1.5)
    | st.floats(min_value=0, max_value=1e-12)
    | st.sampled_from(
        [0, 1, 2, 8, 16, 30, 32, 256, 257, 10000, 10001, 2**63, 0.0, 1.0, 1e-4, 0.04, 0.999, -0.0]
    )
    | st.sampled_from(
        [*PRESETS, *SCHEDULE_KINDS, "eps", "v", "auto", "cpu", "cuda:0", "cuda:x", "builtin", ""]
    )
)
anything = json_values | near_valid

TRAIN_FIELDS = [f.name for f in fields(TrainConfig)]
SCHEDULE_FIELDS = [f.name for f in fields(ScheduleConfig)]


def schedule_configs():
    """Any field values (mostly refused), or the default with one or two fields near their limits."""
    return st.builds(
        lambda kw: ScheduleConfig(**kw),
        st.dictionaries(st.sampled_from(SCHEDULE_FIELDS), anything, max_size=6)
        | st.dictionaries(st.sampled_from(SCHEDULE_FIELDS), near_valid, max_size=2),
    )


def train_kwargs():
    """Any field values (mostly refused), or the defaults with one or two fields near their limits."""
    return st.dictionaries(
        st.sampled_from(TRAIN_FIELDS), anything | schedule_configs(), max_size=len(TRAIN_FIELDS)
    ) | st.dictionaries(st.sampled_from(TRAIN_FIELDS), near_valid | schedule_configs(), max_size=2)


# ----------------------------------------------------------------------------- config validation


@fast(300)
@given(schedule_configs())
def test_schedule_validate_is_valid_or_config_error(sc):
    try:
        sc.validate()
    except ConfigError as exc:
        event("ConfigError")
        assert str(exc)
        return
    event("valid")
    NoiseSchedule(sc)  # a config that validates builds


@fast(200)
@given(
    kind=st.sampled_from(SCHEDULE_KINDS),
    T=st.integers(1, 3000) | st.sampled_from([1, 2, 10000]),
    b0=st.floats(0, 1, exclude_min=True, exclude_max=True),
    b1=st.floats(0, 1, exclude_min=True, exclude_max=True),
    s=st.floats(0, 1, exclude_max=True),
    zero_snr=st.booleans(),
)
# the failures hypothesis found, kept as fixed examples (docs/reliability.md, "Bugs these checks found")
@example(kind="linear", T=1, b0=0.5, b1=5e-324, s=0.0, zero_snr=False)  # 0/0 posterior variance
@example(kind="linear", T=1, b0=1e-4, b1=0.04, s=0.0, zero_snr=True)  # zero-SNR rescale of one step
@example(kind="linear", T=1073, b0=0.5, b1=0.5, s=0.0, zero_snr=True)  # alpha_bar underflows before T
@example(kind="quadratic", T=2, b0=1 - 2**-53, b1=1 - 2**-53, s=0.0, zero_snr=True)  # beta rounds to 1
def test_every_valid_schedule_is_finite_and_monotone(kind, T, b0, b1, s, zero_snr):
    sc = ScheduleConfig(kind=kind, T=T, beta_start=min(b0, b1), beta_end=max(b0, b1), cosine_s=s,
                        rescale_zero_snr=zero_snr)  # fmt: skip
    try:
        sc.validate()
    except ConfigError:
        event("ConfigError")
        return
    event("valid")
    sched = NoiseSchedule(sc)
    for name in ("betas", "alphas", "alpha_bars", "alpha_bars_prev", "posterior_variance"):
        v = getattr(sched, name)
        assert torch.isfinite(v).all(), (name, sc)
    # beta may reach 0 only where alpha_bar has underflowed (nothing of the image left to remove)
    assert ((sched.betas >= 0) & (sched.betas <= 1)).all(), sc
    assert (sched.betas[sched.alpha_bars_prev > 1e-200] > 0).all(), sc
    ab = sched.alpha_bars
    assert ((ab >= 0) & (ab < 1)).all() and (ab[1:] <= ab[:-1]).all(), sc
    assert (sched.posterior_variance >= 0).all() and not torch.isnan(sched.snr).any(), sc
    if zero_snr:
        assert ab[-1] == 0
    f32 = sched.to("cpu")  # the model's float32 copy is finite too
    assert all(torch.isfinite(getattr(f32, n)).all() for n in ("betas", "alpha_bars", "posterior_variance"))


@fast(400)
@given(train_kwargs())
@example({"version": 2})  # found: validated, but could not be read back
def test_train_config_validate_is_valid_or_config_error(kw):
    c = TrainConfig(**kw)
    try:
        c.validate()
    except ConfigError as exc:
        event("ConfigError")
        assert str(exc) and "\n" not in str(exc)
        return
    event("valid")
    # a valid config survives its JSON round trip unchanged
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


@fast(300)
@given(
    st.dictionaries(st.sampled_from(TRAIN_FIELDS) | st.text(max_size=8), anything, max_size=8)
    | json_values
    | st.builds(
        lambda d: {**TrainConfig().to_dict(), **d},
        st.dictionaries(st.sampled_from(TRAIN_FIELDS), anything, max_size=3),
    )
    | st.builds(
        lambda d: {**TrainConfig().to_dict(), "schedule": {**ScheduleConfig().to_dict(), **d}},
        st.dictionaries(st.sampled_from(SCHEDULE_FIELDS) | st.text(max_size=4), anything, max_size=3),
    )
)
def test_from_dict_of_any_json_is_valid_or_config_error(d):
    try:
        TrainConfig.from_dict(d).validate()
        event("valid")
    except ConfigError as exc:
        event("ConfigError")
        assert str(exc)


@fast(60)
@given(st.binary(max_size=64) | st.builds(lambda v: json.dumps(v, allow_nan=True).encode(), json_values)
       | st.builds(lambda d: json.dumps({**TrainConfig().to_dict(), **d}).encode(),
                   st.dictionaries(st.sampled_from(TRAIN_FIELDS), anything, max_size=3)))  # fmt: skip
def test_run_config_file_of_any_bytes_is_valid_or_user_error(tmp_path_factory, raw):
    run = tmp_path_factory.mktemp("cfg")
    (run / "config.json").write_bytes(raw)
    try:
        load_run_config(run)
        event("valid")
    except DDPMError as exc:
        event(type(exc).__name__)
        assert str(exc)


# ----------------------------------------------------------------------------- checkpoint bytes


def small_checkpoint_bytes() -> bytes:
    """A real checkpoint layout (our header, digests) around a handful of small tensors."""
    meta = {"step": 3, "config": TrainConfig(image_size=16).to_dict(), "model_config": PRESETS["tiny"].to_dict(),
            "num_classes": None, "class_names": None, "optim_groups": [{"lr": 1e-3}], "batch_size": 8}  # fmt: skip
    g = torch.Generator().manual_seed(0)
    tensors = {
        "model.a": torch.randn(4, 3, generator=g),
        "model.b": torch.arange(5, dtype=torch.int64),
        "ema.a": torch.randn(4, 3, generator=g),
        "rng.torch": torch.randint(0, 255, (16,), dtype=torch.uint8, generator=g),
    }
    return b"".join(bytes(c) for c in ck.checkpoint_bytes(tensors, meta))


GOOD = small_checkpoint_bytes()


@st.composite
def mutated(draw, base: bytes = GOOD):
    """Truncations, flipped bits, overwritten or inserted or deleted runs of bytes, a lying header length."""
    data = bytearray(base)
    n_header = int.from_bytes(base[:8], "little")
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "length", "header"])
        )
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if kind == "truncate":
            del data[i:]
        elif kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[i : i + len(chunk)] = chunk
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[i : i + draw(st.integers(1, 16))]
        elif kind == "length":
            v = draw(st.integers(0, 2**64 - 1) | st.integers(0, len(data) + 8))
            data[:8] = v.to_bytes(8, "little")
        else:  # inside the JSON header, where the parser works hardest
            j = 8 + draw(st.integers(0, max(0, min(n_header, len(data) - 9))))
            data[j : j + 1] = draw(
                st.sampled_from([b"{", b"}", b"[", b'"', b",", b":", b"\\", b"0", b"9", b"-", b" "])
            )
    return bytes(data)


def load_or_error(path: Path):
    t0 = time.monotonic()
    try:
        return ck.load_checkpoint(path)
    except CheckpointError as exc:
        assert str(exc)
        return None
    finally:
        assert time.monotonic() - t0 < 10, "loading took too long"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    p = tmp_path_factory.mktemp("orig") / "c.safetensors"
    p.write_bytes(GOOD)
    return ck.load_checkpoint(p)


def same(a, b) -> bool:
    (ta, ma), (tb, mb) = a, b
    return ma == mb and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@fast(300)
@given(data=mutated())
def test_mutated_checkpoint_loads_identically_or_is_a_checkpoint_error(tmp_path_factory, original, data):
    path = tmp_path_factory.getbasetemp() / "mutated.safetensors"
    path.write_bytes(data)
    got = load_or_error(path)
    event("refused (CheckpointError)" if got is None else "loaded, identical")
    assert got is None or same(got, original), "a damaged file loaded as different weights"
    try:  # the header-only read agrees: it may pass a file whose tensor bytes are damaged, never raise else
        ck.read_meta(path)
    except CheckpointError:
        pass


def without_digest(base: bytes, meta_change=None) -> bytes:
    """The same file as an older version wrote it: no digest key (so nothing catches a damaged header but
    the parser and the checks of its fields)."""
    n = int.from_bytes(base[:8], "little")
    header = json.loads(base[8 : 8 + n])
    header["__metadata__"].pop(ck.DIGEST_KEY)
    if meta_change is not None:
        meta = json.loads(header["__metadata__"][ck.META_KEY])
        meta_change(meta)
        header["__metadata__"][ck.META_KEY] = json.dumps(meta, allow_nan=True)
    return ck._encode_header(header) + base[8 + n :]


@fast(200)
@given(data=mutated(without_digest(GOOD)))
def test_mutated_undigested_checkpoint_is_data_or_a_checkpoint_error(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "undigested.safetensors"
    path.write_bytes(data)
    got = load_or_error(path)
    event("refused (CheckpointError)" if got is None else "loaded")
    if got is not None:
        tensors, meta = got
        assert isinstance(meta, dict) and all(torch.is_tensor(v) for v in tensors.values())


META_KEYS = ["step", "config", "model_config", "num_classes", "class_names", "optim_groups", "batch_size",
             "format_version", "format"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A real tiny-preset checkpoint (model + EMA weights) at 16x16, undigested so its header can be edited."""
    torch.manual_seed(0)
    sd = build_model("tiny").state_dict()
    tensors = {**ck.prefixed("model", sd), **{k: v.clone() for k, v in ck.prefixed("ema", sd).items()}}
    meta = {"step": 1, "config": TrainConfig(image_size=16).to_dict(), "model_config": PRESETS["tiny"].to_dict(),
            "num_classes": None}  # fmt: skip
    return b"".join(bytes(c) for c in ck.checkpoint_bytes(tensors, meta))


@fast(120)
@given(
    edits=st.dictionaries(st.sampled_from(META_KEYS), anything, min_size=1, max_size=3),
    nested=st.dictionaries(
        st.sampled_from(["config", "model_config"]),
        st.dictionaries(
            st.sampled_from(
                TRAIN_FIELDS
                + [
                    "n_channels",
                    "ch_mults",
                    "is_attn",
                    "n_blocks",
                    "image_channels",
                    "compound",
                    "dropout",
                    "x",
                ]
            ),
            anything,
            min_size=1,
            max_size=2,
        ),
        max_size=2,
    ),  # fmt: skip
)
@example(edits={"config": {}}, nested={"config": {"image_size": 0}})  # found: a bundle of 0x0 images
def test_any_header_edit_gives_a_bundle_or_a_user_error(tmp_path_factory, tiny_checkpoint, edits, nested):
    """load_bundle (what the CLI, the GUI and resume call) of a checkpoint whose JSON header was edited in
    any way: a model to sample from, or a DDPMError, never another exception (and never a model built from
    a header that does not fit its weights)."""

    def change(meta):
        meta.update(edits)
        for k, sub in nested.items():
            if isinstance(meta.get(k), dict):
                meta[k] = {**meta[k], **sub}

    path = tmp_path_factory.getbasetemp() / "edited.safetensors"
    path.write_bytes(without_digest(tiny_checkpoint, change))
    t0 = time.monotonic()
    try:
        b = load_bundle(path, device="cpu")
    except DDPMError as exc:
        event(f"refused ({type(exc).__name__})")
        assert str(exc)
        return
    finally:
        assert time.monotonic() - t0 < 20
    event("loaded a model")
    assert b.image_size >= 1 and b.schedule.T >= 1 and b.prediction in ("eps", "v")
    assert all(math.isfinite(float(v)) for v in b.schedule.betas)


def test_unmutated_files_load():
    """The strategies' starting points are good files (so a property failure is the mutation's doing)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.safetensors"
        p.write_bytes(GOOD)
        assert ck.load_checkpoint(p)[1]["step"] == 3
        p.write_bytes(without_digest(GOOD))
        assert ck.load_checkpoint(p)[1]["step"] == 3


def test_renamed_checksum_entry_is_refused(tmp_path):
    """Found with HYPOTHESIS_EXAMPLES=2000: two flipped letters turned the checksum entry's name and
    "format_version" into unknown names, and the file loaded as an old file without checksums (so a flipped
    tensor byte beside them would have loaded as different weights)."""
    bad = GOOD.replace(ck.DIGEST_KEY.encode(), b"e" + ck.DIGEST_KEY.encode()[1:], 1)
    n = len(bad) - 1
    flipped = bad[:n] + bytes([bad[n] ^ 1])  # and one flipped bit in the tensor bytes
    for i, data in enumerate(
        (bad, flipped, bad.replace(b'\\"format_version\\"', b'\\"gormat_version\\"', 1))
    ):
        p = tmp_path / f"c{i}.safetensors"
        p.write_bytes(data)
        with pytest.raises(CheckpointError, match="damaged DDPM Studio header"):
            ck.load_checkpoint(p)


def test_checkpoint_without_format_version_is_refused(tmp_path):
    p = tmp_path / "c.safetensors"
    p.write_bytes(without_digest(GOOD, lambda m: m.pop("format_version")))
    with pytest.raises(CheckpointError, match="format_version"):
        ck.load_checkpoint(p)
