"""The error messages users see for their mistakes: each names the value and what to do."""
import json

import pytest

from dancedata import DatasetBuilder, Holdout, ReadConfig, manifest, scan
from dancedata.config import BuildConfig, ExtractorConfig
from dancedata.errors import ConfigError, InputError, ManifestError


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: BuildConfig(val_fraction=0.5, test_fraction=0.5), r"val_fraction \+ test_fraction must leave room for train, got 0.5 \+ 0.5"),
        (lambda: BuildConfig(test_fraction=1.2), r"test_fraction must be in \[0, 1\), got 1.2"),
        (lambda: BuildConfig(split="by-colour"), "split must be one of sequence, dancer, random, crossmodal; got 'by-colour'"),
        (lambda: BuildConfig(workers=0), "workers must be positive, got 0"),
        (lambda: ExtractorConfig(image_size=16, weights="none"), "image_size must be at least 32, got 16"),
        (lambda: ExtractorConfig(mixed_precision="maybe", weights="none"), "mixed_precision must be one of auto, on, off; got 'maybe'"),
    ],
)
def test_config_errors(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_scan_errors(tmp_path):
    (tmp_path / "file.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="input is not a folder: .*file.mp4"):
        scan.scan(str(tmp_path / "file.mp4"))
    with pytest.raises(ConfigError, match="layout csv needs a CSV file, got the folder"):
        scan.scan(str(tmp_path), layout="csv")
    (tmp_path / "list.csv").write_text("file,genre\na.mp4,x\n")
    with pytest.raises(InputError, match="needs columns path,label; missing label, path"):
        scan.scan(str(tmp_path / "list.csv"))


def test_manifest_errors(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read .*manifest.json"):
        manifest.load(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1, "classes": []}))
    with pytest.raises(ManifestError, match="lacks feature_spec, num_frames, feature_dim, feature_dtype, splits; it was not written by dancedata"):
        manifest.load(str(tmp_path))


def test_reader_argument_errors(built):
    builder = DatasetBuilder(str(built["out"]))
    with pytest.raises(ConfigError, match="batch_size must be positive, got 0"):
        builder.as_dataset("train", batch_size=0)
    with pytest.raises(ConfigError, match=r"holdout fraction must be in \(0, 1\), got 1.5"):
        builder.as_dataset("train", read_config=ReadConfig(holdout=Holdout(1.5)))


def test_output_path_that_is_a_file_is_one_line(tmp_path, capsys):
    from conftest import make_aist_folder

    from dancedata import cli
    from dancedata.build_shards import main

    make_aist_folder(tmp_path / "aist", genres=("BR",), performances=1, cameras=1, frames=3)
    (tmp_path / "taken").write_text("a file, not a folder")
    argv = [str(tmp_path / "aist"), "--out", str(tmp_path / "taken"), "--weights", "none", "--quiet"]
    assert cli.run(main, "build_shards", argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"build_shards: error: output {tmp_path / 'taken'} is a file, not a folder; pass --out with a folder path"]


def test_cli_turns_filesystem_errors_into_one_line(capsys):
    from dancedata import cli

    def main(argv):
        raise PermissionError(13, "Permission denied", "/data/aist/x.mp4")

    assert cli.run(main, "build_shards", []) == 2
    assert capsys.readouterr().err == "build_shards: error: Permission denied: /data/aist/x.mp4\n"
