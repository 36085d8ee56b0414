"""utils/feature_files.py: --extract_features' .npy + .csv written as one set with a sidecar that names the
checkpoint and the sha256 of both files, so that a stale or half-replaced pair is refused, never read."""
from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pytest

from utils.feature_files import FeatureFilesError, feature_paths, load_features, read_sidecar, write_features


def _index(rows: int, tag: str = "a") -> str:
    return "row,path,label,class_name\n" + "".join(f"{i},{tag}/{i}.png,{i % 2},c{i % 2}\n" for i in range(rows))


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "ckpt.pth"
    path.write_bytes(b"weights v1")
    return path


def test_the_sidecar_names_the_checkpoint_split_rows_and_the_sha256_of_both_files(tmp_path, checkpoint):
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    sidecar = write_features(tmp_path, "test", features, _index(4), checkpoint, data=tmp_path / "data")
    npy, index, meta = feature_paths(tmp_path, "test")
    assert json.loads(meta.read_text()) == sidecar
    buffer = io.BytesIO()
    np.save(buffer, features)  # by hand: the bytes np.save writes, and their sha256
    assert npy.read_bytes() == buffer.getvalue()
    assert sidecar["features"] == {"file": "features_test.npy", "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}
    assert sidecar["index"] == {"file": "features_test.csv", "sha256": hashlib.sha256(_index(4).encode()).hexdigest()}
    assert (sidecar["split"], sidecar["rows"], sidecar["dim"], sidecar["dtype"]) == ("test", 4, 3, "float32")
    assert sidecar["checkpoint"] == {"path": str(checkpoint.resolve()), "size": 10,
                                     "mtime_ns": checkpoint.stat().st_mtime_ns,
                                     "sha256": hashlib.sha256(b"weights v1").hexdigest()}
    assert sidecar["data"] == str((tmp_path / "data").resolve())
    got, rows, read = load_features(tmp_path, "test")
    np.testing.assert_array_equal(got, features)
    assert [r["path"] for r in rows] == [f"a/{i}.png" for i in range(4)] and read == sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "features_test.csv", "features_test.json",
                                                          "features_test.npy"]  # no scratch left


def test_a_stale_pair_is_refused(tmp_path, checkpoint):
    write_features(tmp_path, "test", np.zeros((3, 2), np.float32), _index(3), checkpoint)
    old_csv = feature_paths(tmp_path, "test")[1].read_bytes()
    write_features(tmp_path, "test", np.ones((3, 2), np.float32), _index(3, "b"), checkpoint)
    npy, index, _ = feature_paths(tmp_path, "test")
    index.write_bytes(old_csv)  # a new .npy beside an old .csv (what two separate writes could leave)
    with pytest.raises(FeatureFilesError, match=r"features_test.csv is not the file features_test.json was "
                                                r"written with .*a stale or mixed set of feature files; run "
                                                r"--extract_features test again"):
        load_features(tmp_path, "test")
    buffer = io.BytesIO()
    np.save(buffer, np.full((3, 2), 2, np.float32))
    npy.write_bytes(buffer.getvalue())  # another run's features
    with pytest.raises(FeatureFilesError, match=r"features_test.npy is not the file"):
        read_sidecar(tmp_path, "test")


def test_a_write_killed_between_the_renames_leaves_no_sidecar_vouching_for_the_mixed_pair(tmp_path, checkpoint,
                                                                                          monkeypatch):
    write_features(tmp_path, "val", np.zeros((2, 2), np.float32), _index(2), checkpoint)
    real_replace = os.replace

    def die_at_the_index(src, dst):  # the process dies after the .npy's rename, before the .csv's
        if dst == tmp_path / "features_val.csv":  # (the scratch folder's renames go on)
            raise KeyboardInterrupt
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", die_at_the_index)
    with pytest.raises(KeyboardInterrupt):
        write_features(tmp_path, "val", np.ones((2, 2), np.float32), _index(2, "b"), checkpoint)
    monkeypatch.undo()
    npy, index, meta = feature_paths(tmp_path, "val")
    assert np.load(npy)[0, 0] == 1 and "a/0.png" in index.read_text()  # the mixed pair is on disk...
    assert not meta.exists()  # ...but no sidecar vouches for it
    with pytest.raises(FeatureFilesError, match=r"features_val.json is missing: the feature files of val in .* are "
                                                r"incomplete \(an interrupted --extract_features\)"):
        load_features(tmp_path, "val")
    assert not list(tmp_path.glob(".*"))  # the scratch folder is gone too
    write_features(tmp_path, "val", np.ones((2, 2), np.float32), _index(2, "b"), checkpoint)  # a rerun mends it
    assert load_features(tmp_path, "val")[1][0]["path"] == "b/0.png"


def test_an_index_of_another_length_is_refused_before_anything_is_written(tmp_path, checkpoint):
    with pytest.raises(FeatureFilesError, match=r"the index of test has 2 rows, the features 3"):
        write_features(tmp_path, "test", np.zeros((3, 2), np.float32), _index(2), checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]
