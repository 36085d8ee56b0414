"""Run directories: no path escapes ``<output>/<arch>/<tag>``, ``--overwrite`` clears only our own run,
one run per directory, no folder left by a failed run, and best.pth always the best epoch's, whatever
moment a run was killed at."""
from __future__ import annotations

import pytest

from helpers import file_tree, run_main, tiny_train_args


def _parse_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        run_main(args)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("tag", [".", "..", "...", "a/b", ""])
def test_a_tag_that_is_no_plain_folder_name_is_refused_before_anything_is_written(tiny_data, tmp_path, tag, capsys):
    out = tmp_path / "out"
    (out / "resnet18" / "keep").mkdir(parents=True)
    (out / "resnet18" / "keep" / "config.yaml").write_text("arch: resnet18\n")
    before = file_tree(tmp_path)
    err = _parse_error(tiny_train_args(tiny_data["folder"], out, "--tag", tag, "--overwrite"), capsys)
    assert "--tag may hold letters" in err and "not be '.' or '..' (it names the run folder" in err
    assert file_tree(tmp_path) == before


@pytest.mark.parametrize("arch", ["..", ".", "resnet181", "timm/../x"])
def test_an_unknown_arch_is_refused_before_anything_is_written(tiny_data, tmp_path, arch, caplog):
    out = tmp_path / "work" / "out"
    (tmp_path / "work" / "source.py").parent.mkdir(parents=True)
    (tmp_path / "work" / "source.py").write_text("print('the user project')\n")
    before = file_tree(tmp_path)
    assert run_main(tiny_train_args(tiny_data["folder"], out, "--arch", arch, "--tag", "x", "--overwrite")) == 1
    assert "unknown" in caplog.text and "model" in caplog.text
    assert file_tree(tmp_path) == before  # no <output> folder either


def test_overwrite_refuses_a_folder_that_holds_no_run_of_ours(tiny_data, tmp_path, caplog):
    folder = tmp_path / "resnet18" / "mine"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "thesis.tex").write_text("months of work")
    (folder / "config.yaml").write_text("arch: resnet50\ntag: other\ntrain: true\n")  # not this run's
    before = file_tree(tmp_path)
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "mine", "--overwrite")) == 1
    assert "--overwrite refused" in caplog.text and "nothing was deleted" in caplog.text
    assert file_tree(tmp_path) == before
