import pytest

from selfsup.errors import DataError
from selfsup.pipelines.data.sources import (
    default_roots,
    detect_dataset,
    locate_dataset,
    open_dataset,
)


def test_explicit_path_may_be_the_folder_or_a_root(data_root):
    direct = locate_dataset("cifar10", data_root / "cifar-10-batches-py")
    via_root = locate_dataset("cifar10", data_root)
    assert direct.folder == via_root.folder and direct.format == "cifar10-pickle"
    assert locate_dataset("fashion_mnist", data_root).format == "idx"
    assert locate_dataset("imagenette", data_root).format == "imagefolder"


def test_search_uses_selfsup_data_env(data_root, monkeypatch, tmp_path):
    monkeypatch.setenv("SELFSUP_DATA", str(data_root))
    monkeypatch.chdir(tmp_path)
    assert default_roots()[0] == data_root
    assert len(open_dataset("fashion_mnist", "test")) == 30


def test_missing_folder_and_wrong_format_are_clear(tmp_path, data_root):
    with pytest.raises(DataError, match="does not exist"):
        locate_dataset("cifar10", tmp_path / "nowhere")
    with pytest.raises(
        DataError, match="does not look like CIFAR-10: expected cifar-10-batches-py"
    ):
        locate_dataset("cifar10", data_root / "FashionMNIST")
    with pytest.raises(DataError, match="does not look like Fashion-MNIST"):
        locate_dataset("fashion_mnist", data_root / "cifar-10-batches-py")


def test_not_found_anywhere_lists_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        "selfsup.pipelines.data.sources.checkout_root", lambda: tmp_path / "checkout"
    )
    with pytest.raises(DataError, match=r"CIFAR-10 not found \(looked in .*\); put .* --data"):
        locate_dataset("cifar10")


def test_imagefolder_needs_a_path():
    with pytest.raises(DataError, match="needs a path"):
        locate_dataset("imagefolder")


def test_eval_split_of_a_class_folder_tree_is_val_or_test(data_root):
    assert len(open_dataset("imagenette", "test", data_root)) == 12


@pytest.mark.shared_data
def test_real_datasets_are_found_in_shared_data(shared_data):
    cifar = locate_dataset("cifar10", shared_data.root)
    assert cifar.format == "imagefolder" and cifar.folder == shared_data.cifar10_jpeg
    train = open_dataset("cifar10", "train", shared_data.root)
    test = open_dataset("cifar10", "test", shared_data.root)
    assert (len(train), len(test)) == (50_000, 10_000)
    assert train.classes[0] == "airplane" and train[0][0].shape == (3, 32, 32)
    fmnist = open_dataset("fashion_mnist", "train", shared_data.root)
    assert len(fmnist) == 60_000 and fmnist[0][0].shape == (3, 28, 28)
    imagenette = open_dataset("imagenette", "test", shared_data.root)
    assert len(imagenette) == 3_925 and len(imagenette.classes) == 10


def test_a_plain_class_folder_tree_is_one_split(tmp_path):
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "imagenet", per_class=2, classes=3)
    one_split = root / "train"  # what imagenet/train is on a cluster: <class>/<images>
    assert locate_dataset("imagefolder", one_split).format == "class-tree"
    train = open_dataset("imagefolder", "train", one_split)
    assert len(train) == 6 and len(train.classes) == 3
    # Pointed at it, the tree is that split, whichever one is asked for (data write --split).
    assert len(open_dataset("imagefolder", "test", one_split)) == 6
    assert detect_dataset(one_split) == "imagefolder"


def test_a_root_with_train_alone_serves_pretraining_and_says_what_is_missing(tmp_path):
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "data", per_class=2, classes=3, splits=("train",))
    assert locate_dataset("imagefolder", root).format == "imagefolder-train"
    assert len(open_dataset("imagefolder", "train", root)) == 6
    with pytest.raises(DataError, match="has no test split .*holds train/ alone"):
        open_dataset("imagefolder", "test", root)


def test_a_root_of_several_datasets_is_not_taken_for_a_class_tree(data_root):
    # data_root holds cifar-10-batches-py/, FashionMNIST/, an image folder: no images inside.
    with pytest.raises(DataError, match="holds several datasets"):
        detect_dataset(data_root)
