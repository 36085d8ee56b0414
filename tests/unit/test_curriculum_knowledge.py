"""--make_curriculum and --knowledge on a multi-label checkpoint: the curriculum weighs each image by the mean
probability of the truth of each of its labels; teacher files (softmax targets of --distill) are refused."""
from __future__ import annotations

import pytest
import torch

from applications.curriculum import curriculum_weights, true_probability
from helpers import multi_label_checkpoint, run_main
from utils.sidefiles import read_rows


def test_true_probability_single_and_multi_label():
    probs = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3]])
    assert torch.allclose(true_probability(probs, torch.tensor([2, 1])), torch.tensor([0.6, 0.8]))
    multi_hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    # image 0: (0.9 + 0.8 + 0.6) / 3; image 1, no label: (0.9 + 0.2 + 0.7) / 3
    assert torch.allclose(true_probability(probs, multi_hot), torch.tensor([2.3 / 3, 1.8 / 3]))


@pytest.fixture(scope="module")
def checkpoint(mosaics, tmp_path_factory):
    return multi_label_checkpoint(tmp_path_factory.mktemp("ml") / "run", mosaics)


def mode_args(checkpoint, mosaics, *extra):
    return ["--resume", str(checkpoint), "--multi_label", "--dataset", "csv", "--data", str(mosaics), "-j", "0",
            "--no_progress", *extra]


def test_make_curriculum_on_a_multi_label_model(mosaics, checkpoint, tmp_path):
    from applications.setup.common import build_dataset, build_loader, preprocessor, restore_for_inference
    from config import parse_config
    cfg = parse_config(mode_args(checkpoint, mosaics, "--make_curriculum"))
    restored = restore_for_inference(cfg)
    dataset = build_dataset(cfg, "train", restored.class_names, train=False, spec=restored.spec)
    expected = {}  # by hand: sigmoid of the model's logits, the truth of each label from the csv's label sets
    with torch.no_grad():
        for images, _, indices in build_loader(cfg, dataset, train=False, device=restored.device):
            probs = restored.model(preprocessor(restored.spec, restored.device)(images)).sigmoid()
            for p, i in zip(probs, indices.tolist()):
                labels = dataset.targets[i]
                expected[dataset.key(i)] = sum(float(p[c]) if c in labels else 1 - float(p[c])
                                               for c in range(10)) / 10
    middle = sorted(expected.values())[len(expected) // 2]  # thresholds that split the images in two
    thresholds, weights = [middle - 1e-6, 0.0], [1.0, 0.25]
    out = tmp_path / "curriculum.txt"
    assert run_main(mode_args(checkpoint, mosaics, "--make_curriculum", "--curriculum_file", str(out),
                              "--curriculum_thresholds", *map(str, thresholds),
                              "--curriculum_weights", *map(str, weights))) == 0
    written = {key: row[0] for key, row in read_rows(out, 1).items()}
    assert written.keys() == expected.keys() and len(written) == 12
    hand = curriculum_weights(torch.tensor(list(expected.values())), thresholds, weights).tolist()
    assert [written[k] for k in expected] == pytest.approx(hand)
    assert 0 < sum(w == 1.0 for w in written.values()) < 12  # both weights used


def test_knowledge_refuses_a_multi_label_model(mosaics, checkpoint, capsys):
    assert run_main(mode_args(checkpoint, mosaics, "--knowledge", "train")) == 1
    err = capsys.readouterr().err
    assert "is a multi-label model; teacher files are the softmax targets of --distill" in err
    assert "Traceback" not in err and not list(mosaics.glob("distill_*.txt"))
