"""Single-process checks: config rules for training, launch variables, model pieces, schedule, losses."""

import copy

import pytest
import torch

from pipeline_src.config import validate_dict
from pipeline_src.io import ConfigError
from pipeline_src.model.aggregation import PartialAggregator, partition_bounds
from pipeline_src.model.arch import random_mask
from pipeline_src.model.build import ModelSpec, build_model
from pipeline_src.model.tokenizer import patchify, unpatchify
from pipeline_src.parallel.mesh import first_host, launch_env, resolve_mesh
from pipeline_src.parallel.plans import check_tp
from pipeline_src.train.losses import latitude_weights, mae_targets
from pipeline_src.model.mae_objective import MaeObjective
from pipeline_src.train.schedule import learning_rate
from tests.conftest import SMALL
from tests.parallel.workers import SMALL as SMALL_MODEL

FORECAST_TARGETS = {"targets": ["z_500", "t2m"]}


def _config(train=None, model=None, mae=None, forecast=FORECAST_TARGETS):
    raw = copy.deepcopy(SMALL)  # 8 ERA5 channels
    raw["train"] = train or {}
    raw["model"] = model or {}
    raw["mae"] = mae or {}
    raw["forecast"] = forecast
    return validate_dict(raw)


@pytest.mark.parametrize("kwargs, message", [
    ({"train": {"mesh": {"tp": 16}, "nproc": 16}, "model": {"heads": 16, "agg_heads": 16}},
     "tp 16 is larger than the 8 input channels"),
    ({"train": {"nproc": 3}}, "train.nproc 3 is not a product of the mesh"),
    ({"train": {"nproc": 4, "mesh": {"tp": 2, "dp": 1}}}, "train.nproc 4 is not a product of the mesh"),
    ({"model": {"partitions": 3}}, "model.partitions 3 must be a multiple of tp 2"),
    ({"model": {"tree": [8]}}, "more groups than the 4 channels of the smallest partition"),
    ({"model": {"heads": 3}}, "model.heads 3 must divide dim 64"),
    ({"forecast": {"targets": ["z_300"]}}, "forecast.targets: ['z_300'] are not among era5.channels"),
    ({"train": {"variants": [{"name": "a", "task": "mae", "arch": "dchag-L"},
                             {"name": "a", "task": "mae", "arch": "dchag-C"}]}}, "duplicate names ['a']"),
    ({"train": {"variants": [{"name": "a", "task": "mae", "arch": "dchag-X"}]}}, "train.variants.0.arch"),
    ({"train": {"variants": [{"name": "m", "task": "mae", "arch": "dchag-L"}], "mesh": {"tp": 4}, "nproc": 4},
      "mae": {"bands": 3, "source": "synthetic"}}, "tp 4 is larger than the 3 input channels"),
])
def test_bad_training_config_is_rejected(kwargs, message):
    with pytest.raises(ConfigError) as err:
        _config(**kwargs)
    assert message in str(err.value)


def test_variant_model_overrides_and_defaults():
    from pipeline_src.config import Config

    cfg = Config(_config(train={"variants": [{"name": "c", "task": "forecast", "arch": "dchag-C",
                                              "model": {"tree": [2]}}]}, model={"dim": 32}))
    m = cfg.variant("c")["model"]
    assert m["tree"] == [2] and m["dim"] == 32 and m["arch"] == "dchag-C" and m["partitions"] == "auto"


def test_mesh_must_multiply_to_world_size():
    assert resolve_mesh(8, tp=2, fsdp=2).dp == 2
    with pytest.raises(ConfigError, match="world size 6 is not a multiple of tp 4 x fsdp 1"):
        resolve_mesh(6, tp=4)
    with pytest.raises(ConfigError, match="world size 8 is not dp 1 x fsdp 2 x tp 2 = 4"):
        resolve_mesh(8, tp=2, fsdp=2, dp=1)


def test_launch_from_slurm_and_torchrun_variables():
    slurm = launch_env({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
                        "SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "frontier[00012-00013]"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.launcher) == (9, 16, 1, "slurm")
    assert slurm.master_addr == "frontier00012" and slurm.master_port == 20000 + 123456 % 20000
    tr = launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                     "MASTER_PORT": "1234", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert (tr.rank, tr.world_size, tr.master_addr, tr.master_port, tr.launcher) == (1, 2, "h", 1234, "torchrun")
    assert launch_env({}).launcher == "single"
    assert first_host("node7") == "node7"
    assert first_host("gpu[003,010-012],cpu1") == "gpu003"


def test_tp_split_checks_heads_and_partitions():
    spec = ModelSpec(arch="dchag-L", task="forecast", channels=6, image=(8, 8), patch=4, dim=24,
                     depth=1, heads=6, agg_heads=3, mlp_ratio=2.0, partitions=3, outputs=1)
    model = build_model(spec)
    check_tp(model, 3)
    with pytest.raises(ConfigError, match="has 3 heads, not divisible by tp 2"):
        check_tp(model, 2)
    with pytest.raises(ConfigError, match="tp 3 does not divide the 2 D-CHAG partitions"):
        check_tp(build_model(ModelSpec(**{**spec.to_dict(), "partitions": 2,
                                          "image": (8, 8), "tree": (), "channel_names": ()})), 3)


def test_uneven_channel_partitions_cover_every_channel_once():
    assert partition_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert partition_bounds(5, 5) == [(i, i + 1) for i in range(5)]


def test_linear_tree0_is_a_weighted_channel_sum_and_trees_nest():
    agg = PartialAggregator(5, "linear", [], dim=3, heads=1)
    tokens = torch.randn(2, 5, 4, 3)
    with torch.no_grad():
        node = agg.levels[0][0]
        node.weight.copy_(torch.arange(5.0))
        node.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    expected = (tokens * torch.arange(5.0)[None, :, None, None]).sum(1) + torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(agg(tokens), expected)
    deep = PartialAggregator(7, "attention", [3], dim=4, heads=2)
    assert deep.group_sizes == [[3, 2, 2], [3]] and deep(torch.randn(2, 7, 5, 4)).shape == (2, 5, 4)
    with pytest.raises(ValueError, match="tree level of 4 groups needs at least 4 tokens"):
        PartialAggregator(3, "linear", [4], dim=4, heads=1)


def test_patchify_roundtrip_and_mae_loss_counts_masked_patches_only():
    x = torch.randn(2, 3, 8, 12)
    assert patchify(x, 4).shape == (2, 3, 6, 16)
    torch.testing.assert_close(unpatchify(patchify(x, 4), 4, (2, 3)), x)
    mask = random_mask(2, 6, 0.5, torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [3, 3]
    target = mae_targets(x, 4)
    pred = target.clone()
    pred[~mask] += 100.0  # errors on visible patches must not count
    every_pixel = MaeObjective(4, plant_only=False)
    assert every_pixel.loss(pred, x, mask).item() == 0.0
    pred[mask] += 1.0
    assert every_pixel.loss(pred, x, mask).item() == pytest.approx(1.0)


def test_schedule_and_latitude_weights():
    lrs = [learning_rate(s, 1.0, 4, 20, 0.1) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] > 0.1
    assert learning_rate(20, 1.0, 4, 20, 0.1) == pytest.approx(0.1)
    w = latitude_weights([-87.1875 + 5.625 * i for i in range(32)])
    assert w.mean().item() == pytest.approx(1.0) and w[16] > w[0]


def _changed(value):
    """Another value of the same kind (for flipping one setting)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return value + (1,)
    if isinstance(value, dict):
        return {**value, "changed": 1}
    return 1  # None


def test_resume_folder_follows_exactly_the_run_defining_sections():
    """Every field of every section, flipped alone: the resume folder's key changes iff its section
    defines the run (model, optimisation, data) and the field is not marked unfingerprinted (the
    D-CHAG partitions); the mesh, checkpointing and runtime never move it."""
    import dataclasses

    from pipeline_src.train.settings import (ForecastData, MaeData, ModelSettings, run_fingerprint,
                                             train_sections)

    for data in (MaeData(store="t.zarr"), ForecastData(assembled="a", targets=["z_500"], lead_days=[1.0])):
        sections = {"model": ModelSettings(arch="dchag-L", partitions=2), "data": data, **train_sections(tp=2)}
        base = run_fingerprint(sections)
        seen = 0
        for name, section in sections.items():
            for f in dataclasses.fields(section):
                flipped = {**sections, name: dataclasses.replace(section, **{f.name: _changed(getattr(section, f.name))})}
                moves = type(section).defines_run and f.metadata.get("fingerprint", True)
                assert (run_fingerprint(flipped) != base) == moves, (name, f.name)
                seen += moves
        assert seen >= 20
    with pytest.raises(TypeError, match="no section holds: \\['stpes'\\]"):
        train_sections(stpes=3)


def test_every_train_config_key_has_a_section(tmp_path):
    """The schema's train: keys all reach a section of the job (job_from_config refuses others)."""
    from pipeline_src import config
    from pipeline_src.train.job import job_from_config

    cfg = config.load(config.REPO_ROOT / "config.yaml")
    variant = cfg.data["train"]["variants"][0]["name"]
    job = job_from_config(cfg, variant, tmp_path, tmp_path, tiles=tmp_path)
    t = cfg.data["train"]
    assert job.optim.steps == t["variants"][0].get("train", {}).get("steps", t["steps"])
    assert job.parallel.tp == t["mesh"]["tp"] and job.parallel.expected_world == t["nproc"]
    assert job.checkpoint.checkpoint_async == t["checkpoint_async"] and job.runtime.data_cache_mb == t["data_cache_mb"]


def test_gather_all_control_computes_the_baseline_function():
    """Distributed tokenization + gather of every channel token + final attention = the TP-only front end."""
    base = build_model(ModelSpec(arch="tp-baseline", task="forecast", **SMALL_MODEL), seed=0)
    control = build_model(ModelSpec(arch="gather-all", task="forecast", partitions=2, **SMALL_MODEL), seed=1)
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("front.")}
    front = base.front
    for i, (start, stop) in enumerate(control.front.bounds):
        state[f"front.partitions.{i}.tokenizer.weight"] = front.tokenizer.weight[start:stop]
        state[f"front.partitions.{i}.tokenizer.channel_embed"] = front.tokenizer.channel_embed[start:stop]
    state.update({f"front.final.{k}": v for k, v in front.aggregate.state_dict().items()})
    control.load_state_dict(state)  # strict: the control has no other parameters
    x = torch.randn(2, SMALL_MODEL["channels"], *SMALL_MODEL["image"])
    lead = torch.tensor([7.0, 30.0])
    torch.testing.assert_close(control(x, lead), base(x, lead))
    with pytest.raises(ValueError, match="gather-all .* equal partitions"):
        build_model(ModelSpec(arch="gather-all", task="forecast", partitions=3, **SMALL_MODEL))


def test_lead_code_starts_on_the_tokens_scale():
    """The lead embedding (fan-in 1) starts with unit-variance weights, so a forecaster's output
    already depends on the lead at initialisation; drawn like the wide layers (std 0.02) the code
    was a fiftieth of the tokens and a hundred steps did not teach the leads apart."""
    spec = ModelSpec(arch="dchag-L", task="forecast", partitions=2, **SMALL_MODEL)
    model = build_model(spec, seed=0)
    weight, bias = model.lead_embed.weight, model.lead_embed.bias
    assert 0.7 < float(weight.std()) < 1.3 and float(bias.abs().max()) == 0.0
    x = torch.randn(4, SMALL_MODEL["channels"], *SMALL_MODEL["image"])
    with torch.no_grad():
        tokens = model.front_norm(model.front(x)) + model.pos_embed
        code = model.lead_embed(torch.ones(1, 1))  # the lead scale (30 days)
        assert float(code.pow(2).mean().sqrt()) > 0.3 * float(tokens.pow(2).mean().sqrt())
        week, month = model(x, torch.full((4,), 7.0)), model(x, torch.full((4,), 30.0))
    assert float((week - month).norm() / week.norm()) > 0.1
