"""The embedded and packaged data sources, read from the files that ship with scikit-learn and Debian."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curvenet_dist.data.embedded import FASHION_MNIST_DEBIAN, digits_dataset, fashion_mnist_dataset
from curvenet_dist.data.sample_table import DataError


def test_digits_become_image_files_with_a_balanced_held_out_test_set(tmp_path):
    dataset = digits_dataset(tmp_path / "digits", test_fraction=0.3)
    train, test = dataset.splits["train"], dataset.splits["test"]
    assert len(train) + len(test) == 1797
    assert np.abs(test.class_counts() - 0.3 * (train.class_counts() + test.class_counts())).max() <= 1
    with Image.open(train.image_path(0)) as image:
        assert image.size == (8, 8)
    again = digits_dataset(tmp_path / "digits", test_fraction=0.3)
    assert again.splits["train"].fingerprint() == train.fingerprint()


@pytest.mark.skipif(not FASHION_MNIST_DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed "
                    "(apt-get install dataset-fashion-mnist; CI installs it)")
def test_fashion_mnist_from_debian_files(tmp_path):
    dataset = fashion_mnist_dataset(None, tmp_path / "fashion")
    assert len(dataset.splits["train"]) == 60000 and len(dataset.splits["test"]) == 10000
    assert dataset.splits["test"].class_counts().tolist() == [1000] * 10
    with Image.open(dataset.splits["train"].image_path(0)) as image:
        assert image.size == (28, 28)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist_dataset(Path(tmp_path / "nowhere"), tmp_path / "out")
