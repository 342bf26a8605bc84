"""The input pipeline: a D-CHAG rank reads only its channels, workers change nothing, resume is exact."""

import pytest
import torch

from pipeline_src.datasets.era5 import ERA5Forecast
from pipeline_src.datasets.loader import step_loader
from pipeline_src.model.build import ModelSpec, build_model

TARGETS = ["z_500", "t2m"]


@pytest.fixture(scope="module")
def forecast(assembled_era5):
    _, out, _, _ = assembled_era5
    return ERA5Forecast(out, "train", TARGETS, [1.0, 3.0])


def test_a_rank_reads_only_its_channels_and_the_same_values(forecast):
    full = forecast.batch(0, 5, 0, 4, slice(0, 4))
    part = forecast.batch(0, 5, 0, 4, slice(0, 4), slice(3, 6))
    assert part.x.shape[1] == 3 and full.x.shape[1] == len(forecast.channels) == 8
    torch.testing.assert_close(part.x, full.x[:, 3:6])
    assert torch.equal(part.y, full.y) and torch.equal(part.lead_days, full.lead_days)
    # the targets are read as their own channels and encoded as before
    x, y = forecast.pairs([0, 1], [1, 3])
    idx = forecast.transform.target_index
    clim = torch.from_numpy(forecast.climatology.at(forecast.split.times[[1, 4]]))
    raw = torch.from_numpy(forecast.split.read([1, 4]))
    torch.testing.assert_close(y, forecast.transform.encode_targets(raw, clim))
    assert x.shape[1] == 8 and y.shape[1] == len(idx)


def test_loader_workers_and_resume_give_the_same_batches(forecast):
    def fetch(step, micro):
        return forecast.batch(7, step, micro, 2, slice(0, 2), slice(0, 4))

    direct = [fetch(step, micro) for step in range(6) for micro in range(2)]
    for workers in (0, 2):
        got = list(step_loader(fetch, 0, 6, 2, workers=workers, prefetch=2))
        assert len(got) == 12
        for a, b in zip(got, direct):
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    resumed = list(step_loader(fetch, 4, 6, 2, workers=1))
    assert [torch.equal(a.x, b.x) for a, b in zip(resumed, direct[8:])] == [True] * 4


def test_front_end_takes_its_own_channels_or_all():
    spec = ModelSpec(arch="dchag-L", task="forecast", channels=10, image=(8, 16), patch=4, dim=16, depth=1,
                     heads=2, agg_heads=2, outputs=1, partitions=4)
    front = build_model(spec, seed=0).front
    front.keep_partitions([2, 3])  # what TP rank 1 of 2 keeps: channels 6..9
    assert front.input_span() == (6, 10)
    x = torch.randn(2, 10, 8, 16)
    class StandIn(torch.nn.Module):  # for the TP all-gather: rank 0's tokens as zeros, then ours
        def forward(self, t):
            return torch.cat([torch.zeros_like(t), t], dim=1)

    front.gather = StandIn()
    assert set(front.private_modules()) == {"partitions.2", "partitions.3"}
    torch.testing.assert_close(front(x[:, 6:10]), front(x))
    with pytest.raises(ValueError, match="input has 5 channels; .* all 10 or its partitions' channels 6..9"):
        front(x[:, 5:10])


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0])  # the split held in memory, or read per step
def test_a_dchag_rank_takes_only_its_partitions_and_the_targets_from_disk(assembled_era5, cache_bytes):
    """Bytes read from the assembled stores, per channel, by what a D-CHAG rank of 2 partitions
    reads in training: its own input channels and the forecast targets, nothing else."""
    from collections import Counter

    from pipeline_src.datasets.counting import CountingStore, bytes_by_channel

    _, out, _, _ = assembled_era5
    read = {}
    for name, inputs in (("all", None), ("partition 0", slice(0, 4)), ("partition 1", slice(4, 8))):
        counts = Counter()
        data = ERA5Forecast(out, "train", TARGETS, [1.0, 3.0], cache_bytes=cache_bytes,
                            wrap=lambda path, c=counts: CountingStore(path, c))
        data.use_inputs(inputs)
        for step in range(3):
            data.batch(0, step, 0, 4, slice(0, 4), inputs)
        if inputs is not None:
            with pytest.raises(Exception, match="not declared"):  # another partition's channels are refused
                data.batch(0, 9, 0, 4, slice(0, 4), slice(0, 8))
        read[name] = (bytes_by_channel(counts, "fields", 1), bytes_by_channel(counts, "climatology", 2))
        data.close()
    targets = {0, 4}  # z_500 and t2m
    assert set(read["all"][0]) == set(read["all"][1]) == set(range(8))
    assert set(read["partition 0"][0]) == set(read["partition 0"][1]) == {0, 1, 2, 3} | targets
    assert set(read["partition 1"][0]) == set(read["partition 1"][1]) == {4, 5, 6, 7} | targets
    fields = {k: sum(v[0].values()) for k, v in read.items()}
    assert fields["partition 0"] < 0.75 * fields["all"] and fields["partition 1"] < 0.75 * fields["all"]
