"""train.py --finetune: the backbone and the sequence model trained together from stored frames.

The oracles: the frozen-feature GRU trained on the same build with the same seed (the issue's target),
Adam's closed-form first step (for the backbone's lower learning rate), the feature reader (for the
order of the examples), PNG frames decoded by plain tf.io (for evaluation inputs and for predict),
and a run never interrupted (for resume)."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import FAST_EXTRACTOR, LEARNING_TRAIN_FLAGS, make_aist_folder

import dancedata
from dancedata import ExampleConfig, ReadConfig, cli, frames_input, schema
from dancedata import predict as predict_module
from dancedata import train as train_script
from dancedata.models import finetune

# Random ResNet50 weights are a fragile start: without real batch statistics its features grow ~1500x
# within one epoch at a backbone rate of 1e-3 and still drift 10 % an epoch at 1e-5 (measured); at
# 1e-7 (0.01 x 1e-5) the backbone moves and the features stay usable. ImageNet weights take the usual rates.
FINETUNE_FLAGS = ["--finetune", "--backbone-lr-multiplier", "1e-5"]


def _train(argv):
    return cli.run(train_script.main, "train.py", [str(a) for a in argv])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The learnable build (one colour per genre) with PNG frames; a frozen-feature GRU run and a
    --finetune run of the same flags and seed on it."""
    base = tmp_path_factory.mktemp("finetune")
    made = make_aist_folder(base / "aist", performances=10, cameras=2, frames=6)
    dancedata.build_shards(str(base / "aist"), str(base / "shards"), frames=6, shard_mb=0.1, quiet=True, keep_frames="png",
                           **FAST_EXTRACTOR)
    assert _train(["--shards", base / "shards", "--out", base / "frozen", *LEARNING_TRAIN_FLAGS]) == 0
    assert _train(["--shards", base / "shards", "--out", base / "tuned", *LEARNING_TRAIN_FLAGS, *FINETUNE_FLAGS]) == 0
    return base, made


def test_finetuned_model_reaches_the_frozen_feature_accuracy(runs):
    base, _ = runs
    frozen, tuned = (json.loads((base / run / "metrics.json").read_text()) for run in ("frozen", "tuned"))
    assert tuned["evaluated_split"] == frozen["evaluated_split"] == "test"
    assert tuned["num_examples"] == frozen["num_examples"] >= 8
    assert tuned["test_accuracy"] >= frozen["test_accuracy"], (tuned["test_accuracy"], frozen["test_accuracy"])
    assert json.loads((base / "tuned" / "dataset.json").read_text())["inputs"] == "frames"
    assert len((base / "tuned" / "history.csv").read_text().splitlines()) == 1 + 25


def test_predict_decodes_the_video_and_runs_the_finetuned_model(runs):
    """predict's probabilities for the test videos equal the saved model's on their stored PNG frames
    (lossless: the frames the build decoded), read here with plain tf.io."""
    base, made = runs
    manifest = json.loads((base / "shards" / "manifest.json").read_text())
    spec = schema.parse_spec({key: manifest["feature_spec"][key] for key in (schema.FRAMES, schema.MASK, schema.VIDEO_ID)})
    files = [str(base / "shards" / shard["file"]) for shard in manifest["splits"]["test"]["shards"]]
    stored = {}
    for record in tf.data.TFRecordDataset(files):
        example = tf.io.parse_single_example(record, spec)
        pixels = np.stack([tf.io.decode_png(image, channels=3).numpy() for image in example[schema.FRAMES]])
        stored[example[schema.VIDEO_ID].numpy().decode()] = (pixels, example[schema.MASK].numpy().astype(bool))
    model = keras.saving.load_model(base / "tuned" / "model.keras")
    names = sorted(stored)
    expected = model.predict_on_batch((np.stack([stored[n][0] for n in names]), np.stack([stored[n][1] for n in names])))
    results = predict_module.predict([str(base / "aist" / f"{n}.mp4") for n in names], str(base / "tuned"), top_k=10,
                                     batch_size=4)
    for name, result, row in zip(names, results, expected):
        got = {entry["genre"]: entry["probability"] for entry in result["top"]}
        want = dict(zip(manifest["classes"], row))
        assert all(abs(got[genre] - want[genre]) < 1e-5 for genre in got), name
    correct = sum(result["top"][0]["genre"] == made[name] for name, result in zip(names, results))
    assert correct / len(names) >= 0.75


def test_scaled_adam_moves_backbone_variables_by_the_multiplied_rate():
    """Adam's first step is about lr * sign(g) whatever the gradient's scale: a lower rate is the only
    way to move the backbone less, and this checks it is applied to the backbone's variables only."""
    with keras.name_scope(finetune.SCOPE):
        inner = keras.Variable(np.zeros(3, np.float32), name="kernel")
    outer = keras.Variable(np.zeros(3, np.float32), name="head_kernel")
    optimizer = finetune.ScaledAdam(0.01, multiplier=0.1)
    gradient = np.array([1.0, -2.0, 0.5], np.float32)
    optimizer.apply_gradients([(gradient, inner), (gradient, outer)])
    b1, b2, g = optimizer.beta_1, optimizer.beta_2, gradient.astype(np.float64)  # Kingma & Ba's step, as Keras writes it
    first_step = 0.01 * np.sqrt(1 - b2) / (1 - b1) * (1 - b1) * g / (np.sqrt((1 - b2) * g * g) + optimizer.epsilon)
    np.testing.assert_allclose(-outer.numpy(), first_step, rtol=1e-5)
    np.testing.assert_allclose(-inner.numpy(), 0.1 * first_step, rtol=1e-5)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert (type(again), again.multiplier, again.prefix) == (finetune.ScaledAdam, 0.1, "backbone/")


def test_the_model_scales_every_backbone_step(runs):
    """One training step of the real model: every backbone weight moves by at most lr * multiplier,
    the head's by up to lr (Adam's bound), so the two rates are told apart."""
    base, _ = runs
    builder = dancedata.DatasetBuilder(str(base / "shards"))
    model = finetune.build(finetune.extractor_config(builder.info.extractor), "gru", len(builder.info.classes), 6,
                           np.zeros(2048, np.float32), np.ones(2048, np.float32), seed=0)
    finetune.compile_phase(model, 0.01, 0.1, True)
    before = [v.numpy().copy() for v in model.trainable_variables]
    (frames, mask), label = next(iter(frames_input.as_dataset(builder, "train", batch_size=8)))
    model.train_on_batch((frames, mask), label)
    steps = {"backbone": 0.0, "head": 0.0}
    for variable, old in zip(model.trainable_variables, before):
        part = "backbone" if variable.path.startswith("backbone/") else "head"
        steps[part] = max(steps[part], float(np.abs(variable.numpy() - old).max()))
    assert 0.0005 < steps["backbone"] <= 0.001 * 1.0001 and 0.005 < steps["head"] <= 0.01 * 1.0001, steps


def test_frames_come_in_the_feature_readers_order_and_augment_reproducibly(runs):
    base, _ = runs
    builder = dancedata.DatasetBuilder(str(base / "shards"))
    read = ReadConfig(shuffle=True, seed=5, shuffle_buffer=7)
    feature_labels = np.concatenate([label.numpy() for _, label in builder.as_dataset("train", batch_size=4, read_config=read)])
    first, second = (list(frames_input.as_dataset(builder, "train", batch_size=4, read_config=read)) for _ in range(2))
    assert np.array_equal(np.concatenate([label.numpy() for _, label in first]), feature_labels)
    for ((a, mask_a), _), ((b, _), _) in zip(first, second):
        assert a.dtype == tf.uint8 and a.shape[1:] == (6, 32, 32, 3) and mask_a.dtype == tf.bool
        assert np.array_equal(a.numpy(), b.numpy())  # crops and flips are seeded by the sampler's batch seeds
    plain = next(iter(frames_input.as_dataset(builder, "test", batch_size=4, example_config=ExampleConfig(training=False))))
    kept = next(iter(frames_input.as_dataset(builder, "test", batch_size=4, example_config=ExampleConfig(training=True))))
    assert not np.array_equal(plain[0][0].numpy(), kept[0][0].numpy())


def test_augment_gives_all_frames_of_an_example_one_crop_and_flip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (4, 1, 32, 32, 3), dtype=np.uint8)
    pixels = np.repeat(image, 5, axis=1).reshape(20, 32, 32, 3)  # 4 examples of 5 identical frames
    out = frames_input.augment(tf.constant(pixels), 5, tf.constant([3, 4], tf.int64), 32).numpy().reshape(4, 5, 32, 32, 3)
    assert all(np.array_equal(example[0], frame) for example in out for frame in example)
    assert not np.array_equal(out[:, 0], image[:, 0])


def _resume_flags(runs) -> list:
    base, _ = runs
    return ["--shards", base / "shards", "--epochs", "3", "--batch-size", "16", "--seed", "2", "--finetune",
            "--freeze-epochs", "1", "--backbone-lr-multiplier", "0.001"]


def test_a_finetune_run_stopped_anywhere_resumes_to_the_uninterrupted_result(runs, tmp_path, monkeypatch):
    """Stopped inside its frozen epoch (a checkpoint at that step, as SIGTERM does), by Ctrl-C right after
    the frozen epoch (the phase boundary) and inside an epoch that trains the backbone, the run continues
    to the history and weights of a run never stopped. (One run stopped three times: a finetune run is
    among the suite's costliest.)"""
    from dancedata.models import training_run

    flags = _resume_flags(runs)
    assert _train([*flags, "--out", tmp_path / "whole"]) == 0
    on_batch, on_epoch = training_run.RunProgress.on_train_batch_end, training_run.RunProgress.on_epoch_end
    stops = [(0, 1), "end of 0", (2, 1)]

    def stop_at(self, batch, logs=None):
        if stops and (self.run.state.epoch, self.offset + batch + 1) == stops[0]:
            stops.pop(0)
            self.run.stop_requested = True
        on_batch(self, batch, logs)

    def interrupt_after(self, epoch, logs=None):
        on_epoch(self, epoch, logs)
        if stops and stops[0] == f"end of {epoch}":
            stops.pop(0)
            raise KeyboardInterrupt

    monkeypatch.setattr(training_run.RunProgress, "on_train_batch_end", stop_at)
    monkeypatch.setattr(training_run.RunProgress, "on_epoch_end", interrupt_after)
    for stopped_at in [(0, 1), (1, 0), (2, 1)]:
        assert _train([*flags, "--out", tmp_path / "cut"]) == 130
        state = json.loads((tmp_path / "cut" / "checkpoints" / "state.json").read_text())
        assert (state["epoch"], state.get("step", 0)) == stopped_at
    assert _train([*flags, "--out", tmp_path / "cut"]) == 0
    whole, cut = ((tmp_path / run / "history.csv").read_text().splitlines() for run in ("whole", "cut"))
    assert len(whole) == len(cut) == 4
    for a, b in zip(whole[1:], cut[1:]):
        np.testing.assert_allclose([float(v) for v in a.split(",")], [float(v) for v in b.split(",")], rtol=1e-4)
    for a, b in zip(keras.saving.load_model(tmp_path / "whole" / "model.keras").get_weights(),
                    keras.saving.load_model(tmp_path / "cut" / "model.keras").get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_finetune_refuses_a_build_without_frames_and_flags_without_it(tmp_path, capsys):
    make_aist_folder(tmp_path / "aist", genres=("BR", "PO"), performances=2, cameras=1, frames=4)
    dancedata.build_shards(str(tmp_path / "aist"), str(tmp_path / "shards"), frames=4, quiet=True, test_fraction=0.0,
                           val_fraction=0.0, **FAST_EXTRACTOR)
    assert _train(["--shards", tmp_path / "shards", "--out", tmp_path / "run", "--finetune"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train.py: error: {tmp_path / 'shards'} holds no stored frames, and --finetune trains on them: build with "
        "--keep-frames png (or jpeg) to keep them"]
    assert not (tmp_path / "run").exists()
    assert _train(["--shards", tmp_path / "shards", "--freeze-epochs", "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "train.py: error: freeze_epochs apply to finetune only: add --finetune, or leave them out"]


def test_the_head_follows_the_run_seed_though_the_backbone_reseeds():
    """A --weights none backbone re-seeds Keras with its weights_seed; the head is built after it with the
    run's --seed, so other seeds give other heads and the same seed the same one."""
    from dancedata.config import ExtractorConfig

    extractor = ExtractorConfig(backbone="ResNet50", weights="none", image_size=32)

    def head(seed):
        model = finetune.build(extractor, "gru", 4, 4, np.zeros(2048, np.float32), np.ones(2048, np.float32), seed=seed)
        return next(layer for layer in model.layers if layer.name.startswith("dancedata_gru")).get_weights()

    first, other, again = head(1), head(2), head(1)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
