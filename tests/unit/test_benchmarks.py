"""Benchmark scripts run in their --quick mode (that they work, not their numbers). loss_options.py runs
with every option under z_task_shell/2_train_with_strategies.sh (tests/e2e/test_recipes.py)."""
from __future__ import annotations


def test_make_photo_set_is_reproducible_jpegs(tmp_path):
    from PIL import Image

    from benchmarks.make_photo_set import make_photo_set
    a = make_photo_set(tmp_path / "a", train_per_class=3, val_per_class=1, classes=3)
    b = make_photo_set(tmp_path / "b", train_per_class=3, val_per_class=1, classes=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 12 and files == sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    for f in files:
        with Image.open(a / f) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 0.8 * 375 <= min(im.size) <= 1.2 * 375 and 0.8 * 500 <= max(im.size) <= 1.2 * 500


def test_make_photo_set_test_split(tmp_path):
    """``test_per_class`` adds a test split of that many images per class; without it there is none."""
    from benchmarks.make_photo_set import make_photo_set
    out = make_photo_set(tmp_path / "p", train_per_class=2, val_per_class=1, classes=2, test_per_class=3)
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"train", "val", "test"}
    assert [len(list((out / "test" / c).glob("*.jpg"))) for c in sorted(p.name for p in (out / "test").iterdir())] \
        == [3, 3]
    assert not (make_photo_set(tmp_path / "q", train_per_class=2, val_per_class=1, classes=2) / "test").exists()
