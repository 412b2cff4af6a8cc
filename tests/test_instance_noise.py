"""bias.noise_type=instance on real images (scikit-learn's digits written as PNG files): exact rates per class, and
the errors land where a model confuses the images."""
import re

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from curvenet_dist.config import BiasConfig
from curvenet_dist.data.bias import apply_bias
from curvenet_dist.data.embedded import digits_dataset
from curvenet_dist.data.sample_table import DataError, SampleTable

RATE = 0.3


@pytest.fixture(scope="module")
def digits_train(tmp_path_factory) -> SampleTable:
    return digits_dataset(tmp_path_factory.mktemp("data") / "digits", 0.3).splits["train"]


def bias(noise_type: str) -> BiasConfig:
    return BiasConfig(meta_per_class=10, imbalance_factor=5, noise_type=noise_type, noise_rate=RATE, seed=1)


def out_of_fold_probabilities(table: SampleTable) -> np.ndarray:
    """[N, C] each sample's class probabilities from a pixel model of the test's own (native 8x8 pixels, 5 folds)
    fit on the true labels of the other folds: what a model takes each image for."""
    pixels = np.stack([np.asarray(Image.open(table.image_path(i)), np.float32).ravel() / 255 for i in table.ids])
    return cross_val_predict(LogisticRegression(max_iter=1000), pixels, table.true_labels,
                             cv=StratifiedKFold(5, shuffle=True, random_state=7), method="predict_proba")


def confusion(table: SampleTable) -> tuple[float, float, float]:
    """Under the test's own model: the flipped samples' mean probability of their new class, the share of them whose
    most likely other class is their new class, and the unflipped samples' mean probability of their most likely
    other class."""
    flipped = table.labels != table.true_labels
    probabilities = out_of_fold_probabilities(table)
    others = probabilities.copy()
    others[table.ids, table.true_labels] = 0
    return (probabilities[flipped, table.labels[flipped]].mean(),
            (others.argmax(1)[flipped] == table.labels[flipped]).mean(), others.max(1)[~flipped].mean())


def test_instance_noise_mislabels_the_rate_of_every_class_with_the_class_its_images_look_like(digits_train):
    train = apply_bias(digits_train, bias("instance")).train
    for c in range(10):
        true_c = train.true_labels == c
        assert (train.labels[true_c] != c).sum() == round(RATE * true_c.sum())
    new_class, to_most_likely_other, kept_most_likely_other = confusion(train)
    assert new_class > 3 * kept_most_likely_other and to_most_likely_other > 0.5
    again = apply_bias(digits_train, bias("instance")).train
    assert again.paths == train.paths and (again.labels == train.labels).all()
    # Pair noise takes as many samples of each class, to a class chosen without looking at the images.
    paired_new_class, paired_to_most_likely_other, _ = confusion(apply_bias(digits_train, bias("pair")).train)
    assert new_class > 5 * paired_new_class and paired_to_most_likely_other < 0.2


def test_an_unreadable_image_is_named(tmp_path):
    labels = np.repeat(np.arange(3), 3)
    for i in range(len(labels)):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "4.png").write_bytes(b"not a png")
    table = SampleTable(tmp_path, [f"{i}.png" for i in range(len(labels))], labels, labels, 3)
    message = f"{tmp_path / '4.png'}: cannot be read to score bias.noise_type=instance"
    with pytest.raises(DataError, match=re.escape(message)):
        apply_bias(table, BiasConfig(noise_type="instance", noise_rate=RATE))


def test_a_class_too_small_to_score_out_of_fold_is_named(digits_train):
    tiny = digits_train.select(np.concatenate([np.flatnonzero(digits_train.labels == c)[:2 if c == 4 else 20]
                                               for c in range(10)]))
    with pytest.raises(DataError, match="class 4 has 2 training samples; bias.noise_type=instance needs 3"):
        apply_bias(tiny, BiasConfig(noise_type="instance", noise_rate=RATE))

