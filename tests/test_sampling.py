import numpy as np
import pytest

from dancedata import sampling
from dancedata.config import SamplingConfig
from dancedata.errors import ConfigError


def test_uniform_spreads_over_the_whole_clip():
    indices, mask = sampling.sample(SamplingConfig(frames=4, sampling="uniform"), 100)
    assert indices.tolist() == [12, 37, 62, 87]
    assert mask.all()


def test_uniform_short_clip_takes_every_frame_and_pads():
    indices, mask = sampling.sample(SamplingConfig(frames=6, sampling="uniform"), 4)
    assert indices.tolist() == [0, 1, 2, 3, -1, -1]
    assert mask.tolist() == [True] * 4 + [False] * 2


@pytest.mark.parametrize("count", [1, 5, 19, 20, 21, 57, 600, 2879])
def test_uniform_indices_are_unique_increasing_and_in_range(count):
    indices, mask = sampling.sample(SamplingConfig(frames=20), count)
    real = indices[mask]
    assert len(real) == min(20, count)
    assert (np.diff(real) > 0).all() and real.min() >= 0 and real.max() < count


def test_first_is_the_notebooks_behaviour():
    indices, mask = sampling.sample(SamplingConfig(frames=5, sampling="first"), 100)
    assert indices.tolist() == [0, 1, 2, 3, 4] and mask.all()
    indices, mask = sampling.sample(SamplingConfig(frames=5, sampling="first"), sampling.UNKNOWN)
    assert indices.tolist() == [0, 1, 2, 3, 4]


def test_stride_by_step_and_by_target_fps():
    indices, _ = sampling.sample(SamplingConfig(frames=4, sampling="stride", stride=3), 100)
    assert indices.tolist() == [0, 3, 6, 9]
    indices, mask = sampling.sample(SamplingConfig(frames=10, sampling="stride", fps=15), 20, video_fps=60)
    assert indices[mask].tolist() == [0, 4, 8, 12, 16]
    assert mask.sum() == 5


def test_padding_is_always_on_the_right():
    for config in (SamplingConfig(frames=8), SamplingConfig(frames=8, sampling="stride", stride=5)):
        _, mask = sampling.sample(config, 13)
        assert mask.tolist() == sorted(mask.tolist(), reverse=True)


def test_uniform_needs_a_frame_count():
    with pytest.raises(ValueError):
        sampling.sample(SamplingConfig(), sampling.UNKNOWN)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"frames": 0}, "frames must be positive, got 0"),
        ({"sampling": "random"}, "sampling must be one of uniform, first, stride; got 'random'"),
        ({"sampling": "stride"}, "needs stride > 0 or fps > 0"),
        ({"stride": -2}, "stride must be non-negative, got -2"),
        ({"sampling": "stride", "stride": 2, "keyframes": True}, "keyframes works with sampling uniform or first"),
    ],
)
def test_bad_sampling_config_names_the_field_and_value(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SamplingConfig(**kwargs)
