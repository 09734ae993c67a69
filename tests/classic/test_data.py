import torch

from kdistill.classic.data import load_classification_data
from kdistill.classic.methods.base import RunContext
from kdistill.config import parse_config


def test_digits_split_and_labeled_subset_are_seeded_and_stratified():
    a = load_classification_data("digits", labeled_fraction=0.1, split_seed=0)
    b = load_classification_data("digits", labeled_fraction=0.1, split_seed=0)
    c = load_classification_data("digits", labeled_fraction=0.1, split_seed=1)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert len(a.x_train) + len(a.x_test) == 1797 and a.input_shape == (1, 8, 8)
    labeled_classes = a.y_train[a.labeled]
    assert set(labeled_classes.tolist()) == set(range(10))  # every class keeps labels
    assert abs(a.labeled.float().mean().item() - 0.1) < 0.02
    targets = a.student_targets()
    assert torch.equal(targets[a.labeled], a.y_train[a.labeled]) and (targets[~a.labeled] == -1).all()


def test_mnist1d_transfer_set_has_extra_unlabeled_samples():
    data = load_classification_data("mnist1d", labeled_fraction=0.5, extra_unlabeled=300, num_samples=1000)
    assert data.input_shape == (1, 40) and len(data.x_extra) == 300
    assert len(data.x_train) + len(data.x_test) == 1000
    # the extra samples are new draws, not copies of the training set
    assert not any(torch.equal(data.x_extra[0], row) for row in data.x_train)
    cfg = parse_config({"data": {"dataset": "mnist1d", "extra_unlabeled": 300, "num_samples": 1000}})
    ctx = RunContext(cfg, data, teacher=None, device=torch.device("cpu"), run_dir=None, logger=None)
    x, y = ctx.transfer_set()
    assert len(x) == len(data.x_train) + 300 and (y[-300:] == -1).all()
