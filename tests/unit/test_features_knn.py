"""engine/features.py: the embedding is the classifier head's input (checked by hand per family), the k-NN vote
equals scikit-learn's KNeighborsClassifier(metric='cosine'), and the index csv of --extract_features."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.neighbors import KNeighborsClassifier

from engine.features import KNN_TEMPERATURE, capture_embeddings, embed, knn_predict
from models import create_model


def _embedding(model: nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    with capture_embeddings(model, num_classes) as store, torch.no_grad():
        model(x)
    assert len(store) == 1
    return store[0]


def test_simple_cnn_embedding_is_its_pooled_features():
    torch.manual_seed(0)
    model, x = create_model("simple_cnn", 3).eval(), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model.features(x).mean((2, 3))  # global average pooling of the last stage, by hand
    got = _embedding(model, x, 3)
    assert got.shape == (4, 128)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_resnet18_embedding_is_layer4_averaged():
    torch.manual_seed(0)
    model, x = create_model("resnet18", 5).eval(), torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        expected = model.layer4(model.layer3(model.layer2(model.layer1(stem)))).mean((2, 3))
    torch.testing.assert_close(_embedding(model, x, 5), expected, rtol=1e-5, atol=1e-5)


def test_a_convolutional_head_gets_its_input_map_averaged():
    """squeezenet's head is Dropout, Conv2d(512, K, 1), ReLU, pool: the embedding is features(x) averaged."""
    torch.manual_seed(0)
    model, x = create_model("squeezenet1_1", 4).eval(), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.features(x).mean((2, 3))
    torch.testing.assert_close(_embedding(model, x, 4), expected, rtol=1e-5, atol=1e-5)


def test_the_hook_is_removed_and_a_headless_model_is_refused():
    model = create_model("simple_cnn", 3).eval()
    with capture_embeddings(model, 3):
        pass
    assert not model.fc._forward_pre_hooks
    with pytest.raises(ValueError, match="no Linear or Conv2d layer with 7 outputs"):
        with capture_embeddings(model, 7):
            pass


def test_embeddings_are_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="run without torchrun"):
        embed(create_model("simple_cnn", 3), [], 3, preprocess=lambda x: x)


def _clusters(seed: int, n: int, classes: int = 4, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + 1.2 * rng.normal(size=(n, dim))).astype(np.float32), labels


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("vote", ["weighted", "majority"])
def test_knn_equals_scikit_learn_cosine_neighbours(k, vote):
    """Overlapping clusters (so that the vote matters): the same predictions as scikit-learn's cosine k-NN with
    uniform weights (majority) or exp((1 - cosine distance) / 0.07) (DINO's weighted vote)."""
    bank, bank_labels = _clusters(0, 300)
    queries, _ = _clusters(1, 200)
    weights = "uniform" if vote == "majority" else (lambda d: np.exp((1 - d) / KNN_TEMPERATURE))
    reference = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute", weights=weights)
    expected = reference.fit(bank, bank_labels).predict(queries)
    got = knn_predict(torch.from_numpy(bank), torch.from_numpy(bank_labels), torch.from_numpy(queries), k, 4, vote=vote)
    np.testing.assert_array_equal(got.numpy(), expected)
    if k == 20:  # the data make the rule matter: the other vote answers otherwise for some queries
        other = knn_predict(torch.from_numpy(bank), torch.from_numpy(bank_labels), torch.from_numpy(queries), k, 4,
                            vote="majority" if vote == "weighted" else "weighted")
        assert (other.numpy() != expected).any()


def test_knn_by_hand_weights_and_ties():
    """Bank at angles 0, 10, 80 and 90 degrees with labels 0, 0, 1, 1 (cosines to a query at 45 deg: 0.707, 0.819,
    0.819, 0.707). k=4 majority: 2 votes each, the tie goes to class 0; k=3: neighbours at 10, 80 (tied) and one
    of the two at 0.707; weighted k=2: 10 and 80 degrees, equal weights, class 0 again."""
    angles = torch.tensor([0.0, 10.0, 80.0, 90.0]).deg2rad()
    bank, labels = torch.stack([angles.cos(), angles.sin()], 1), torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[1.0, 1.0]])
    assert knn_predict(bank, labels, query, 4, 2, vote="majority").tolist() == [0]
    assert knn_predict(bank, labels, query, 2, 2, vote="weighted").tolist() == [0]
    near_one = torch.tensor([[0.2, 1.0]])  # 78.7 degrees: 80 and 90 (class 1) are nearest
    assert knn_predict(bank, labels, near_one, 2, 2).tolist() == [1]
    # weighted: one very close neighbour of class 1 outvotes two farther ones of class 0
    bank2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    q = torch.tensor([[1.0, 0.05]])
    assert knn_predict(bank2, torch.tensor([1, 0, 0]), q, 3, 2, vote="weighted").tolist() == [1]
    assert knn_predict(bank2, torch.tensor([1, 0, 0]), q, 3, 2, vote="majority").tolist() == [0]


def test_knn_refuses_a_k_beyond_the_bank_and_an_unknown_vote():
    bank = torch.eye(3)
    with pytest.raises(ValueError, match="needs 1 <= k <= the memory bank's 3 images"):
        knn_predict(bank, torch.arange(3), bank, 4, 3)
    with pytest.raises(ValueError, match="unknown k-NN vote 'mean'; choose one of weighted, majority"):
        knn_predict(bank, torch.arange(3), bank, 1, 3, vote="mean")


def test_index_rows_name_each_image_its_label_and_class():
    from applications.features import index_text
    text = index_text(["test/a/x.png", "test/b,c/y.png"], torch.tensor([0, 1]), ["a", "b,c"])
    assert text == 'row,path,label,class_name\n0,test/a/x.png,0,a\n1,"test/b,c/y.png",1,"b,c"\n'
    multi = index_text(["m.png"], torch.tensor([[1, 0, 1]]), ["a", "b", "c"])
    assert multi.splitlines()[1] == "0,m.png,0;2,a;c"
