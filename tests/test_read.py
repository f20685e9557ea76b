import json

import numpy as np
import pytest
import tensorflow as tf

from dancedata import DatasetBuilder, ExampleConfig, Holdout, ReadConfig, schema
from dancedata.errors import ConfigError, ManifestError

METADATA = ExampleConfig(with_metadata=True)


def test_element_spec_is_what_fit_takes(built):
    ds = DatasetBuilder(str(built["out"])).as_dataset("train", batch_size=4)
    (features, mask), label = ds.element_spec
    assert features.shape.as_list() == [None, 8, 2048] and features.dtype == tf.float32
    assert mask.shape.as_list() == [None, 8] and mask.dtype == tf.bool
    assert label.shape.as_list() == [None] and label.dtype == tf.int32


def test_info_reports_the_manifest(built):
    info = DatasetBuilder(str(built["out"])).info
    assert info.splits == {name: s["num_examples"] for name, s in built["manifest"]["splits"].items()}
    assert info.feature_dim == 2048 and info.num_frames == 8 and len(info.skipped) == 5
    assert info.extractor["backbone"] == "ResNet50" and info.sampling["sampling"] == "uniform"


def test_eager_and_in_pipeline_parsing_agree(built):
    builder = DatasetBuilder(str(built["out"]))
    records = [r.numpy() for r in tf.data.TFRecordDataset(builder.files("train"))]
    eager = builder.decode(tf.constant(records))
    in_graph = next(iter(tf.data.Dataset.from_tensors(tf.constant(records)).map(builder.decode)))
    for key in eager:
        np.testing.assert_array_equal(eager[key].numpy(), in_graph[key].numpy())


def test_same_seed_same_batches_other_seed_other_order(built):
    builder = DatasetBuilder(str(built["out"]))

    def ids(seed):
        ds = builder.as_dataset("train", batch_size=3, read_config=ReadConfig(shuffle=True, seed=seed),
                                example_config=ExampleConfig(seq_len=5, with_metadata=True))
        return [(tuple(m["video_id"].numpy()), f.numpy().tobytes()) for (f, _), _, m in ds]

    assert ids(7) == ids(7)
    assert [a for a, _ in ids(7)] != [a for a, _ in ids(8)]


def test_shuffling_and_batching_keep_labels_with_their_videos(built):
    builder = DatasetBuilder(str(built["out"]))
    classes = builder.info.classes
    seen = 0
    for split in builder.info.splits:
        ds = builder.as_dataset(split, batch_size=5, read_config=ReadConfig(shuffle=True, seed=1, shuffle_buffer=64),
                                example_config=METADATA)
        for (features, mask), label, metadata in ds:
            for i, video_id in enumerate(metadata["video_id"].numpy()):
                assert classes[label[i]] == built["videos"][video_id.decode()] == metadata["genre"][i].numpy().decode()
                seen += 1
    assert seen == len(built["videos"])


def test_seq_len_windows_and_masks(built):
    builder = DatasetBuilder(str(built["out"]))
    full = {m.decode(): (f, k) for (fs, ks), _, ms in builder.as_dataset("train", batch_size=64, example_config=METADATA)
            for f, k, m in zip(fs.numpy(), ks.numpy(), ms["video_id"].numpy())}
    windows = ExampleConfig(seq_len=4, with_metadata=True)
    evaluation = builder.as_dataset("train", batch_size=64, example_config=windows)
    for (features, mask), _, metadata in evaluation:
        for f, k, video in zip(features.numpy(), mask.numpy(), metadata["video_id"].numpy()):
            stored, stored_mask = full[video.decode()]
            real = int(stored_mask.sum())
            start = max(real - 4, 0) // 2  # centred within the real frames
            np.testing.assert_array_equal(f, stored[start : start + 4])
            np.testing.assert_array_equal(k, stored_mask[start : start + 4])
    training = builder.as_dataset("train", batch_size=64, read_config=ReadConfig(shuffle=True, seed=0), example_config=windows)
    starts = set()
    for (features, mask), _, metadata in training:
        for f, k, video in zip(features.numpy(), mask.numpy(), metadata["video_id"].numpy()):
            stored, _ = full[video.decode()]
            matches = [s for s in range(5) if np.array_equal(stored[s : s + 4], f)]
            assert matches and k.all()
            starts.add(matches[0])
    assert len(starts) > 1  # random windows in training


def test_cache_keeps_every_example_exact_and_reshuffles_each_epoch(built):
    builder = DatasetBuilder(str(built["out"]))

    def by_video(ds):
        return {m.decode(): (f.tobytes(), k.tobytes(), int(y)) for (fs, ks), ys, ms in ds
                for f, k, y, m in zip(fs.numpy(), ks.numpy(), ys.numpy(), ms["video_id"].numpy())}

    plain = by_video(builder.as_dataset("train", batch_size=4, example_config=METADATA))
    cached = builder.as_dataset("train", batch_size=4, read_config=ReadConfig(shuffle=True, seed=3, cache=True),
                                example_config=METADATA)
    first, second = by_video(cached), by_video(cached)  # the second epoch reads the cache
    assert first == plain and second == plain

    def order(cache):
        ds = builder.as_dataset("train", batch_size=4, read_config=ReadConfig(shuffle=True, seed=3, cache=cache),
                                example_config=ExampleConfig(seq_len=5, with_metadata=True))
        return [(tuple(m["video_id"].numpy()), f.numpy().tobytes()) for (f, _), _, m in ds]

    assert order(cache=True) == order(cache=False)  # same seed: same batches and windows, cached or not
    cached = builder.as_dataset("train", batch_size=64, read_config=ReadConfig(shuffle=True, seed=3, cache=True),
                                example_config=METADATA)
    epochs = [[m.decode() for _, _, ms in cached for m in ms["video_id"].numpy()] for _ in range(3)]
    assert all(sorted(epoch) == sorted(plain) for epoch in epochs)
    assert epochs[1] != epochs[2]  # epochs served from the cache are still reshuffled


def test_holdout_by_sequence_is_disjoint_and_complete(built):
    builder = DatasetBuilder(str(built["out"]))

    def sequences(part):
        ds = builder.as_dataset("train", batch_size=64, read_config=ReadConfig(holdout=Holdout(0.5, part=part)),
                                example_config=METADATA)
        return [s.decode() for _, _, m in ds for s in m["sequence_id"].numpy()]

    kept, held = sequences("rest"), sequences("held")
    assert kept and held and not set(kept) & set(held)
    assert len(kept) + len(held) == builder.info.splits["train"]


def test_verify_catches_a_changed_shard(built, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built["out"], copy)
    builder = DatasetBuilder(str(copy))
    builder.verify("train")
    shard = copy / builder.manifest["splits"]["train"]["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ManifestError, match="does not match its sha256"):
        builder.as_dataset("train", read_config=ReadConfig(verify=True))


def test_clear_errors(built, tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json in"):
        DatasetBuilder(str(tmp_path))
    with pytest.raises(ConfigError, match="unknown split 'dev'; .* has: train, val, test"):
        DatasetBuilder(str(built["out"])).as_dataset("dev")
    manifest = dict(built["manifest"], schema_version=99)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="schema version '99'; this dancedata reads versions 1, 2, 3, 4. Upgrade dancedata"):
        DatasetBuilder(str(tmp_path))
    with pytest.raises(ConfigError, match="seq_len must be in 1..8"):
        DatasetBuilder(str(built["out"])).as_dataset("train", example_config=ExampleConfig(seq_len=9))


def test_works_under_a_distribution_strategy(built):
    builder = DatasetBuilder(str(built["out"]))
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    distributed = strategy.distribute_datasets_from_function(lambda context: builder.as_dataset("train", batch_size=4, input_context=context))
    (features, mask), label = next(iter(distributed))
    assert features.shape[0] == label.shape[0] <= 4


def test_plain_parse_spec_matches_schema_keys(built):
    spec = schema.parse_spec(built["manifest"]["feature_spec"])
    assert set(spec) == {schema.FEATURES, schema.MASK, schema.LABEL, schema.FRAME_INDICES, schema.FRAME_TIMES, schema.FPS,
                         schema.CLAIMED_FRAMES, schema.DECODED_FRAMES, schema.TRUNCATED, *schema.METADATA}


def test_windows_cut_frame_indices_with_the_features(built):
    builder = DatasetBuilder(str(built["out"]))
    windows = ExampleConfig(seq_len=3, with_metadata=True)
    for (features, mask), _, metadata in builder.as_dataset("train", batch_size=64, example_config=windows):
        indices = metadata["frame_indices"].numpy()
        assert indices.shape == (len(features), 3)
        assert ((indices >= 0) == mask.numpy()).all()


@pytest.mark.parametrize("pipelines", [1, 3])
def test_input_pipelines_split_the_data_without_overlap(built, pipelines):
    builder = DatasetBuilder(str(built["out"]))
    seen = []
    for pipeline in range(pipelines):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline, num_replicas_in_sync=pipelines)
        ds = builder.as_dataset("train", batch_size=6, example_config=METADATA, input_context=context)
        seen += [v.decode() for _, _, m in ds for v in m["video_id"].numpy()]
    assert len(seen) == len(set(seen)) == builder.info.splits["train"]


def test_the_build_records_the_train_split_moments_a_reader_computes(built):
    from dancedata.read import build_moments, feature_moments

    builder = DatasetBuilder(str(built["out"]))
    assert builder.manifest["feature_statistics"]["split"] == "train"
    mean, variance = build_moments(builder)
    read_mean, read_variance = feature_moments(builder.as_dataset("train", batch_size=7))
    assert mean.shape == (builder.info.feature_dim,) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, read_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(variance, read_variance, rtol=1e-3, atol=1e-6)
    assert builder.manifest["feature_statistics"]["frames"] == sum(
        int(mask.numpy().sum()) for (_, mask), _ in builder.as_dataset("train", batch_size=64)
    )


def test_preview_shows_the_frames_the_build_samples(built, tmp_path, capsys):
    """The contact sheet's tiles carry the stamped frame numbers of the frames uniform sampling picks."""
    import cv2
    from stamped import read_stamp, write_pyav

    from dancedata import cli
    from dancedata import inspect as inspect_module

    video = tmp_path / "stamped.mp4"
    write_pyav(video, 40)
    out = tmp_path / "sheet.png"
    code = cli.run(inspect_module.main, "inspect", [str(built["out"]), "--preview", str(video), "--preview-out", str(out)])
    assert code == 0 and f"wrote {out}" in capsys.readouterr().out
    sheet = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    frames, tile, label = 8, 160, 22  # the build's --frames 8 at 32 px, shown at 160 px
    stamps = [read_stamp(sheet[(k // 5) * (tile + label) + label:(k // 5) * (tile + label) + label + tile,
                               (k % 5) * tile:(k % 5 + 1) * tile]) for k in range(frames)]
    # uniform: the frame shown at the middle of each of 8 equal parts of 40 frames: 2, 7, 12, ..., 37
    assert stamps == [int((k + 0.5) * 40 / frames) for k in range(frames)]
    code = cli.run(inspect_module.main, "inspect", [str(built["out"]), "--preview", str(tmp_path / "none.mp4")])
    assert code == 2 and "cannot preview" in capsys.readouterr().err


@pytest.mark.parametrize("options", [
    dict(batch_size=5, read_config=ReadConfig(shuffle=True, seed=3)),
    dict(batch_size=4, read_config=ReadConfig(shuffle=True, seed=4, repeat=True), example_config=ExampleConfig(seq_len=5)),
    dict(batch_size=6, read_config=ReadConfig(shuffle=True, seed=5, holdout=Holdout(0.3))),
    dict(batch_size=6, read_config=ReadConfig(holdout=Holdout(0.3, part="held"))),
])
def test_index_batches_are_the_batches_as_dataset_gives(built, options):
    """Device-resident training gathers batches from a table by index: the same examples in the same
    batches with the same windows as the pipeline that reads the shards."""
    from dancedata.device_table import index_dataset, load_table

    builder = DatasetBuilder(str(built["out"]))
    table = load_table(builder, ["train", "val"])
    assert table.offsets == {"train": 0, "val": builder.info.splits["train"]}
    assert len(table.labels) == builder.info.splits["train"] + builder.info.splits["val"]
    steps = 7 if options["read_config"].repeat else None
    read = builder.as_dataset("train", **options)
    indexed = index_dataset(builder, "train", table, **options)
    pairs = list(zip(read.take(steps) if steps else read, indexed.take(steps) if steps else indexed))
    assert len(pairs) == (steps or sum(1 for _ in read)) and pairs
    for ((features, mask), label), ((index, positions), index_label) in pairs:
        gathered = np.take_along_axis(table.features[index.numpy()], positions.numpy()[:, :, None], axis=1)
        np.testing.assert_array_equal(features.numpy(), gathered.astype(np.float32))
        np.testing.assert_array_equal(mask.numpy(), np.take_along_axis(table.masks[index.numpy()], positions.numpy(), axis=1))
        np.testing.assert_array_equal(label.numpy(), index_label.numpy())
