"""The training loop on real gloo processes: TP tracks one process, exact resume, resharding."""

import json

import pytest
import torch

from pipeline_src.parallel import checkpoint as ckpt
from pipeline_src.parallel.spawn import run_local
from pipeline_src.train.restore import load_trained

from . import workers


def _history(job):
    return [h["loss"] for h in json.loads(job.summary_path.read_text())["history"]]


def _latest(job):
    (folder,) = (job.run_dir / "checkpoints").iterdir()  # one run configuration
    return ckpt.latest_checkpoint(folder)


def _weights(path):
    model, meta = load_trained(path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, meta


@pytest.mark.timeout(300)
def test_tp2_loss_curve_tracks_single_process(tmp_path):
    single = workers.train_job(tmp_path, "single", tp=1, steps=50, partitions=2, tree=[2])
    tp2 = workers.train_job(tmp_path, "tp2", tp=2, steps=50, partitions=2, tree=[2])
    run_local(workers.train, 1, single)
    run_local(workers.train, 2, tp2)
    a, b = _history(single), _history(tp2)
    assert len(a) == len(b) == 50
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=2e-3, atol=1e-5)


@pytest.mark.timeout(300)
def test_kill_and_resume_is_exact_and_loads_at_other_world_sizes(tmp_path):
    straight = workers.train_job(tmp_path, "straight", tp=2, steps=8, checkpoint_every=3)
    resumed = workers.train_job(tmp_path, "resumed", tp=2, steps=8, checkpoint_every=3)
    run_local(workers.train, 2, straight)
    run_local(workers.train, 2, resumed, 5)  # SIGTERM on rank 0 after step 5, agreed at the step-6 sync
    assert not resumed.final_dir.exists()
    assert _latest(resumed).name == "step_00000006"
    run_local(workers.train, 2, resumed)
    summary = json.loads(resumed.summary_path.read_text())
    assert summary["resumed_from_step"] == 6
    assert _history(resumed) == _history(straight)
    w1, meta = _weights(straight.final_dir)  # trained at world 2, loaded at world 1
    w2, _ = _weights(resumed.final_dir)
    assert meta["mesh"]["tp"] == 2 and meta["step"] == 8
    for name in w1:
        assert torch.equal(w1[name], w2[name]), name
    # The same checkpoint in a TP-4 process group gives the single-process output.
    model, _ = load_trained(straight.final_dir)
    spec_dict = meta["spec"]
    x, lead, mask, _ = workers._inputs(workers.ModelSpec.from_dict(spec_dict))
    with torch.no_grad():
        expected, encoded = model(x, mask), model.encode(x)
    # partitions=2 cannot split over tp 4; probe at tp 2 x fsdp 2 instead
    out_file = tmp_path / "probe.pt"
    run_local(workers.probe_output, 4, str(straight.final_dir), 2, 2, str(out_file))
    got = torch.load(out_file)
    torch.testing.assert_close(got["out"], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["encode"], encoded, atol=1e-5, rtol=1e-4)  # FSDP gathers for encode too


@pytest.mark.timeout(300)
def test_resume_at_another_world_size(tmp_path):
    job4 = workers.train_job(tmp_path, "mesh", tp=2, fsdp=2, steps=6, tree=[2], grad_accum=2)
    run_local(workers.train, 4, job4, 3)
    assert _latest(job4).name == "step_00000004"
    job2 = workers.train_job(tmp_path, "mesh", tp=2, fsdp=1, steps=6, tree=[2], grad_accum=2)
    run_local(workers.train, 2, job2)
    summary = json.loads(job2.summary_path.read_text())
    assert summary["resumed_from_step"] == 4 and summary["mesh"]["fsdp"] == 1
    assert len(summary["history"]) == 6
    # the optimizer state read at world 2 is the world-4 state, parameter by parameter
    states = {}
    for world, tp, fsdp in ((4, 2, 2), (2, 2, 1)):
        out = tmp_path / f"optim{world}.pt"
        run_local(workers.optimizer_state, world, str(_latest(job4)), tp, fsdp, str(out))
        states[world] = torch.load(out)
    assert set(states[4]) == set(states[2]) and len(states[4]) > 20
    for name, ref in states[4].items():
        assert set(ref) == {"step", "exp_avg", "exp_avg_sq"}, name
        assert float(ref["step"]) == 4 and float(ref["exp_avg_sq"].abs().sum()) > 0, name
        for key, value in ref.items():
            assert torch.equal(states[2][name][key], value), (name, key)


def test_checkpoint_from_another_architecture_is_refused(tmp_path):
    from pipeline_src.model.build import build_model
    from pipeline_src.parallel.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    specs = workers.exactness_specs()
    a, b = specs[1], specs[2]  # dchag-L vs dchag-C
    model = build_model(a, seed=0)
    save_checkpoint(tmp_path / "ck", model, None, {"fingerprint": a.fingerprint(), "spec": a.to_dict(), "step": 1})
    with pytest.raises(CheckpointError, match="another architecture.*arch: checkpoint 'dchag-L' vs config 'dchag-C'"):
        load_checkpoint(tmp_path / "ck", build_model(b), None, spec_dict=b.to_dict(), fingerprint=b.fingerprint())
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "nothing", model, None, spec_dict=a.to_dict(), fingerprint=a.fingerprint())


@pytest.mark.timeout(120)
def test_bf16_autocast_tracks_fp32(tmp_path):
    """The bf16 autocast path (the default on GPUs) runs on CPU and stays near fp32."""
    fp32 = workers.train_job(tmp_path, "fp32", tp=1, steps=4, precision="fp32")
    bf16 = workers.train_job(tmp_path, "bf16", tp=1, steps=4, precision="bf16")
    run_local(workers.train, 1, fp32)
    run_local(workers.train, 1, bf16)
    a, b = _history(fp32), _history(bf16)
    assert a != b  # autocast really changed the arithmetic
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=5e-2, atol=1e-3)


def _final_weights_equal(a, b):
    w1, _ = _weights(a.final_dir)
    w2, _ = _weights(b.final_dir)
    assert w1.keys() == w2.keys()
    for name in w1:
        assert torch.equal(w1[name], w2[name]), name


@pytest.mark.timeout(300)
def test_sigkill_between_checkpoints_then_resume_is_bit_exact(tmp_path):
    straight = workers.train_job(tmp_path, "straight", tp=2, steps=8, checkpoint_every=4)
    crashed = workers.train_job(tmp_path, "crashed", tp=2, steps=8, checkpoint_every=4)
    run_local(workers.train, 2, straight)
    with pytest.raises(Exception):  # rank 0 dies by SIGKILL at step 6: no stop, no checkpoint
        run_local(workers.train, 2, crashed, 6, "SIGKILL")
    assert not crashed.final_dir.exists() and _latest(crashed).name == "step_00000004"
    run_local(workers.train, 2, crashed)  # steps 5-8 again, from the step-4 checkpoint
    assert json.loads(crashed.summary_path.read_text())["resumed_from_step"] == 4
    assert _history(crashed) == _history(straight)
    _final_weights_equal(straight, crashed)


@pytest.mark.timeout(300)
def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    straight = workers.train_job(tmp_path, "straight", tp=2, steps=6, checkpoint_every=2)
    crashed = workers.train_job(tmp_path, "crashed", tp=2, steps=6, checkpoint_every=2)
    run_local(workers.train, 2, straight)
    with pytest.raises(Exception):  # SIGKILL inside the second checkpoint write (step 4)
        run_local(workers.train, 2, crashed, None, "SIGTERM", 2)
    folder = _latest(crashed).parent
    assert _latest(crashed).name == "step_00000002"
    assert (folder / ".step_00000004.partial").is_dir()  # the half-written one, never taken for complete
    run_local(workers.train, 2, crashed)
    assert json.loads(crashed.summary_path.read_text())["resumed_from_step"] == 2
    _final_weights_equal(straight, crashed)


@pytest.mark.timeout(300)
def test_bf16_fsdp_mixed_precision_tracks_fp32(tmp_path):
    """FSDP2's MixedPrecisionPolicy (bf16 parameters and all-gathers, fp32 gradient reduction) at
    2 ranks stays near the fp32 run, and keeps fp32 master weights in the checkpoint."""
    fp32 = workers.train_job(tmp_path, "fp32", fsdp=2, steps=6, precision="fp32", partitions=1)
    bf16 = workers.train_job(tmp_path, "bf16", fsdp=2, steps=6, precision="bf16", partitions=1,
                             activation_checkpointing="full")
    run_local(workers.train, 2, fp32)
    run_local(workers.train, 2, bf16)
    a, b = _history(fp32), _history(bf16)
    assert a != b  # bf16 really changed the arithmetic
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=5e-2, atol=1e-3)
    weights, _ = _weights(bf16.final_dir)
    assert all(w.dtype == torch.float32 for w in weights.values())


@pytest.mark.timeout(300)
def test_a_mesh_change_that_changes_auto_partitions_is_refused_with_what_to_do(tmp_path):
    run_local(workers.train, 2, workers.train_job(tmp_path, "run", tp=2, steps=4, checkpoint_every=2,
                                                  partitions="auto"))  # 2 partitions; keeps the step-2 checkpoint
    at_tp1 = workers.train_job(tmp_path, "run", tp=1, steps=4, checkpoint_every=2, partitions="auto")
    with pytest.raises(Exception, match=r"partitions: checkpoint 2 vs config 1.*model.partitions auto follows "
                                        r"train.mesh.tp, now 1: pin model.partitions: 2 to resume"):
        run_local(workers.train, 1, at_tp1)
    pinned = workers.train_job(tmp_path, "run", tp=1, steps=4, checkpoint_every=2, partitions=2)
    run_local(workers.train, 1, pinned)  # the same run folder, resharded from TP 2 to one rank
    summary = json.loads(pinned.summary_path.read_text())
    assert summary["resumed_from_step"] == 2 and len(summary["history"]) == 4
    assert len(list((tmp_path / "run" / "checkpoints").iterdir())) == 1


@pytest.mark.timeout(300)
def test_async_checkpoints_equal_sync_ones_and_a_crash_mid_save_keeps_the_previous_one(tmp_path):
    straight = workers.train_job(tmp_path, "straight", tp=2, steps=8, checkpoint_every=2)
    background = workers.train_job(tmp_path, "async", tp=2, steps=8, checkpoint_every=2, checkpoint_async=True)
    run_local(workers.train, 2, straight)
    with pytest.raises(Exception):  # rank 0 SIGKILLed in the thread writing the step-4 checkpoint
        run_local(workers.train, 2, background, None, "SIGTERM", 2)
    assert _latest(background).name == "step_00000002"  # the save in flight was never committed
    assert (_latest(background).parent / ".step_00000004.partial").is_dir()
    run_local(workers.train, 2, background)  # resumes from step 2, saves steps 4 and 6 in the background
    assert json.loads(background.summary_path.read_text())["resumed_from_step"] == 2
    assert _history(background) == _history(straight)
    _final_weights_equal(straight, background)
    # the step-6 checkpoint, written while steps 7 and 8 trained on, holds the step-6 weights
    a, meta_a = _weights(_latest(straight))
    b, meta_b = _weights(_latest(background))
    assert meta_a["step"] == meta_b["step"] == 6
    assert [h["loss"] for h in meta_a["history"]] == [h["loss"] for h in meta_b["history"]]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in _latest(background).parent.iterdir()) == ["step_00000004", "step_00000006"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fsdp", [1, 2])
def test_bf16_with_tensor_parallelism_tracks_fp32(tmp_path, fsdp):
    """bf16 on real TP ranks: autocast over DTensor TP 2, and FSDP2's MixedPrecisionPolicy on a
    TP 2 x FSDP 2 mesh (bf16 parameters, all-gathers and TP collectives, fp32 reduction)."""
    world = 2 * fsdp
    fp32 = workers.train_job(tmp_path, "fp32", tp=2, fsdp=fsdp, steps=6, precision="fp32")
    bf16 = workers.train_job(tmp_path, "bf16", tp=2, fsdp=fsdp, steps=6, precision="bf16")
    run_local(workers.train, world, fp32)
    run_local(workers.train, world, bf16)
    a, b = _history(fp32), _history(bf16)
    assert a != b  # bf16 really changed the arithmetic
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=5e-2, atol=1e-3)
    weights, _ = _weights(bf16.final_dir)
    assert all(w.dtype == torch.float32 for w in weights.values())  # fp32 master weights
