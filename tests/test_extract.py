import sys

import numpy as np
import pytest
from conftest import FAST_EXTRACTOR

from dancedata.config import ExtractorConfig
from dancedata.errors import ConfigError
from dancedata.extract import Extractor, VideoBatcher, resolve_batch


@pytest.fixture(scope="module")
def extractor():
    return Extractor(ExtractorConfig(**FAST_EXTRACTOR))


def frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)


def test_batched_equals_one_by_one_and_never_retraces(extractor):
    batch = frames(19)
    together = extractor(batch)
    alone = np.concatenate([extractor(batch[i : i + 1]) for i in range(19)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)
    assert extractor._full.experimental_get_tracing_count() == 1
    assert extractor._partial.experimental_get_tracing_count() <= 1


def test_video_batcher_keeps_order_and_a_video_s_features_do_not_depend_on_its_neighbours():
    """A video's features are bit-identical whichever videos are decoded around it: the property
    resumed and incremental builds rely on to write the same bytes."""
    per_video = 6
    extractor = Extractor(ExtractorConfig(**FAST_EXTRACTOR), frames_per_video=per_video)
    assert extractor.batch_size == per_video and extractor.videos_per_batch == 1  # auto on CPU: one video
    videos = [frames(n, seed=n) for n in (3, 0, 6, 5, 0, 1)]  # 0 frames: a failed video passing through

    def run(sequence):
        batcher, out = VideoBatcher(extractor), []
        for i, video in sequence:
            out += batcher.add(i, video)
        return out + batcher.flush()

    out = run(list(enumerate(videos)))
    assert [item for item, _ in out] == list(range(len(videos)))
    for i, video in enumerate(videos[::-1]):  # each video alone, in a different order
        [(_, alone)] = run([(0, video)])
        [(_, together)] = [(item, f) for item, f in out if item == len(videos) - 1 - i]
        assert together.shape == (len(video), extractor.feature_dim)
        np.testing.assert_array_equal(together, alone)
    assert extractor._full.experimental_get_tracing_count() == 1


def test_batch_size_holds_whole_videos():
    assert resolve_batch(0, 20, gpu=False) == (20, 1)
    assert resolve_batch(0, 20, gpu=True) == (60, 3)
    assert resolve_batch(8, 20, gpu=False) == (20, 1)  # never less than one video
    assert resolve_batch(50, 8, gpu=False) == (48, 6)
    assert resolve_batch(0, None, gpu=False) == (8, 0)


def test_gpu_fast_path_runs_on_cpu():
    """Mixed precision + XLA, the GPU configuration, gives the same features up to float16 rounding."""
    fast = Extractor(ExtractorConfig(**FAST_EXTRACTOR, mixed_precision="on", jit_compile=True))
    plain = Extractor(ExtractorConfig(**FAST_EXTRACTOR))
    batch = frames(8)
    a, b = fast(batch), plain(batch)
    assert fast.model.layers[-1].compute_dtype == "float16"
    np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05 * np.abs(b).mean())


def test_random_weights_are_reproducible_across_instances(extractor):
    assert Extractor(ExtractorConfig(**FAST_EXTRACTOR)).fingerprint == extractor.fingerprint
    assert Extractor(ExtractorConfig(**{**FAST_EXTRACTOR, "weights_seed": 1})).fingerprint != extractor.fingerprint


def test_weights_file_round_trip_and_unknown_backbone(extractor, tmp_path):
    path = str(tmp_path / "backbone.weights.h5")
    extractor.model.save_weights(path)
    loaded = Extractor(ExtractorConfig(**{**FAST_EXTRACTOR, "weights": path, "weights_seed": 5}))
    assert loaded.fingerprint == extractor.fingerprint
    with pytest.raises(ConfigError, match="backbone must be one of"):
        Extractor(ExtractorConfig(**{**FAST_EXTRACTOR, "backbone": "ResNet9000"}))


def test_offline_imagenet_failure_says_what_to_do(monkeypatch):
    import keras

    from dancedata.errors import WeightsError

    def offline(**kwargs):
        raise Exception("URL fetch failure on https://example.invalid/x_notop.h5: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.applications, "InceptionV3", offline)
    with pytest.raises(WeightsError) as caught:
        Extractor(ExtractorConfig(weights="imagenet", batch_size=8))
    message = str(caught.value)
    assert message.startswith("cannot load ImageNet weights for InceptionV3 (URL fetch failure")
    assert "~/.keras/models/" in message and "--weights /path/to/weights.h5" in message and "--weights none" in message
    assert "\n" not in message


def test_a_failed_build_leaves_no_build_behind(tmp_path, monkeypatch, capsys):
    """A weights failure happens before --out is touched; leftovers of an interrupted run do not block the next."""
    import keras
    from conftest import make_aist_folder

    from dancedata import build_shards, cli

    make_aist_folder(tmp_path / "aist", genres=("BR",), performances=1, cameras=1, frames=4)
    (tmp_path / "out" / ".build").mkdir(parents=True)
    (tmp_path / "out" / "train-00000-of-00001.tfrecord.incomplete").write_bytes(b"half")
    monkeypatch.setattr(keras.applications, "InceptionV3", lambda **kwargs: (_ for _ in ()).throw(Exception("URL fetch failure")))
    argv = [str(tmp_path / "aist"), "--out", str(tmp_path / "out"), "--quiet"]
    assert cli.run(sys.modules["dancedata.build_shards"].main, "build_shards", argv) == 2
    assert "cannot load ImageNet weights" in capsys.readouterr().err
    manifest = build_shards(str(tmp_path / "aist"), str(tmp_path / "out"), frames=4, quiet=True, val_fraction=0, test_fraction=0, **FAST_EXTRACTOR)
    assert manifest["splits"]["train"]["num_examples"] == 1
    assert not list((tmp_path / "out").glob("*.incomplete"))
