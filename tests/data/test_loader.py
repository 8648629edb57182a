import gzip

import numpy as np
import pytest

from fedsparse.cli import main
from fedsparse.data import load_dataset, most_interacted_items, synthetic_dataset
from fedsparse.data.lightgcn_format import read_interactions
from fedsparse.errors import DataError


def write_split(directory, train: str, test: str, val: str | None = None):
    directory.mkdir(exist_ok=True)
    (directory / "train.txt").write_text(train)
    (directory / "test.txt").write_text(test)
    if val is not None:
        (directory / "model_val.txt").write_text(val)
    return directory


def test_reads_lightgcn_lines_and_skips_blank_lines(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("0 3 1\n\n2 0\n5\n")
    users, items = read_interactions(path)
    assert users.tolist() == [0, 0, 2]
    assert items.tolist() == [3, 1, 0]


def test_reads_gzip(tmp_path):
    path = tmp_path / "train.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write("1 2 3\n")
    assert [a.tolist() for a in read_interactions(path)] == [[1, 1], [2, 3]]


@pytest.mark.parametrize(("content", "message"), [
    ("0 1 2\n1 x 3\n", "train.txt:2: id 'x' is not an integer"),
    ("0 1\n1 2.5\n", "train.txt:2: id '2.5' is not an integer"),
    ("0 1\n\n3 -4 1\n", "train.txt:3: negative id -4"),
])
def test_malformed_lines_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "train.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_interactions(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="missing train.txt"):
        load_dataset(str(tmp_path))
    with pytest.raises(DataError, match="not a bundled dataset"):
        load_dataset(str(tmp_path / "nowhere"))


def test_directory_dataset_binarises_and_infers_sizes(tmp_path):
    directory = write_split(tmp_path / "d", "0 1 1 2\n1 0\n", "0 3\n2 2\n")
    data = load_dataset(str(directory))
    assert (data.n_users, data.n_items) == (3, 4)
    assert data.train.nnz == 3 and data.test.nnz == 2
    assert data.train.max() == 1.0


def test_out_of_range_id_names_file_and_line(tmp_path):
    directory = write_split(tmp_path / "d", "0 1\n1 0\n", "0 1\n1 9\n")
    (directory / "dataset.toml").write_text("n_users = 2\nn_items = 4\n")
    with pytest.raises(DataError, match=r"test.txt:2: item id 9 >= 4 \(out of range\)"):
        load_dataset(str(directory))


def test_val_split_trains_on_train_minus_val(tmp_path):
    directory = write_split(tmp_path / "d", "0 1 2 3\n1 0 2\n", "0 0\n", val="0 2 2\n1 0\n")
    data = load_dataset(str(directory), split="val")
    assert sorted(zip(*data.train.nonzero())) == [(0, 1), (0, 3), (1, 2)]
    assert sorted(zip(*data.test.nonzero())) == [(0, 2), (1, 0)]


def test_most_interacted_items_keeps_the_busiest_items_renumbered(tmp_path):
    # training counts per item: 0 -> 1, 1 -> 3, 2 -> 2, 3 -> 2, 4 -> 0
    directory = write_split(tmp_path / "d", "0 1 2 3\n1 1 2\n2 0 1 3\n", "0 4 0\n1 3\n2 2\n")
    data = load_dataset(str(directory), max_items=3)
    assert data.n_items == 3 and data.n_users == 3               # items 1, 2, 3 (tie: lower id)
    assert sorted(zip(*data.train.nonzero())) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1),
                                                  (2, 0), (2, 2)]
    assert sorted(zip(*data.test.nonzero())) == [(1, 2), (2, 1)]  # items 0 and 4 dropped
    assert "3 most interacted items" in data.name
    full = load_dataset(str(directory))
    assert most_interacted_items(full, 5).train.nnz == full.train.nnz


@pytest.mark.parametrize("max_items", [0, 6])
def test_most_interacted_items_refuses_a_count_out_of_range(tmp_path, max_items):
    data = load_dataset(str(write_split(tmp_path / "d", "0 1 2\n1 4\n", "0 3\n")))
    with pytest.raises(DataError, match=f"max_items: {max_items} is not between 1 and d's 5 items"):
        most_interacted_items(data, max_items)


def test_bundled_gowalla_statistics():
    stats = load_dataset("gowalla").stats()
    assert (stats["users"], stats["items"]) == (29858, 40981)
    assert (stats["train_interactions"], stats["test_interactions"]) == (810128, 217242)
    val = load_dataset("gowalla", split="val").stats()
    assert (val["train_interactions"], val["test_interactions"]) == (739019, 71109)


def test_bundled_lastfm_statistics():
    data = load_dataset("lastfm")
    assert (data.n_users, data.n_items, data.train.nnz, data.test.nnz) == (1892, 4489, 42135, 10533)
    assert data.train.multiply(data.test).nnz == 0


def test_lastfm_validation_is_a_seeded_carve_out_of_train_disjoint_from_test():
    full, val = load_dataset("lastfm"), load_dataset("lastfm", split="val")
    again = load_dataset("lastfm", split="val")
    assert (val.test != again.test).nnz == 0 and (val.train != again.train).nnz == 0
    # train = (train minus val) + val, disjoint; nothing of test is in either
    assert val.train.multiply(val.test).nnz == 0
    assert (val.train + val.test != full.train).nnz == 0
    assert full.test.multiply(val.test).nnz == 0 and full.test.multiply(val.train).nnz == 0
    per_user = np.diff(full.train.indptr)
    held = np.diff(val.test.indptr)
    assert np.array_equal(held[per_user >= 2],
                          np.maximum(1, np.round(0.1 * per_user[per_user >= 2])))
    assert held[per_user < 2].sum() == 0


def test_a_directory_without_a_validation_file_gets_the_carve_out(tmp_path):
    directory = write_split(tmp_path / "d", "0 1 2 3 4 5\n1 0\n2 4 5\n", "0 0\n")
    data = load_dataset(str(directory), split="val")
    assert np.diff(data.test.indptr).tolist() == [1, 0, 1]
    assert data.train.nnz == 6 and data.train.multiply(data.test).nnz == 0


def test_data_stats_command(capsys):
    assert main(["data", "stats", "gowalla"]) == 0
    out = capsys.readouterr().out
    for expected in ("29858", "40981", "810128", "217242"):
        assert expected in out


def test_data_stats_command_on_the_most_interacted_items(capsys):
    assert main(["data", "stats", "gowalla", "--max-items", "5000"]) == 0
    out = capsys.readouterr().out
    for expected in ("29858", "5000", "348155", "92909"):
        assert expected in out
    assert main(["data", "stats", "lastfm", "--max-items", "5000"]) == 2
    assert "max_items: 5000 is not between 1 and lastfm's 4489 items" in capsys.readouterr().err


def test_data_stats_command_reports_bad_file_in_one_line(tmp_path, capsys):
    directory = write_split(tmp_path / "d", "0 1\n1 zz\n", "0 1\n")
    assert main(["data", "stats", str(directory)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.txt:2" in err and "Traceback" not in err


def test_synthetic_is_seeded_and_split():
    a, b = synthetic_dataset(seed=1), synthetic_dataset(seed=1)
    assert (a.train != b.train).nnz == 0 and (a.test != b.test).nnz == 0
    assert (synthetic_dataset(seed=2).train != a.train).nnz > 0
    assert np.all(np.diff(a.test.indptr) == 4)
    assert a.train.multiply(a.test).nnz == 0
