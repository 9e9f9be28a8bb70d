"""A trained model applied to new raw data: the preprocessing in the model file, predict, and the commands."""

import configparser
import importlib
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import scipy.sparse
import pytest
from sklearn.datasets import dump_svmlight_file, make_classification

import wasap
from wasap import DataError, SparseMLP, load_dataset, predict, run
from wasap.cli import main as wasap_main
from wasap.data import read_table
from wasap.preprocessing import Preprocessing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_FEATURES = 8
LABELS = np.array(["ant", "bee", "cow"])
N_TRAIN_FILE, N_NEW_FILE = 3000, 3000


def _raw_rows():
    """Rows of one generator, far from standardised (columns scaled by 0.01 to 1000, shifted +500), text labels."""
    X, y = make_classification(n_samples=N_TRAIN_FILE + N_NEW_FILE, n_features=N_FEATURES, n_informative=5,
                               n_redundant=1, n_classes=3, class_sep=1.5, random_state=0)
    scales = 10.0 ** np.array([3, 0, -2, 3, 1, -1, 2, 0])
    return X * scales + 500.0, LABELS[y]


def _write_csv(path, X, labels=None):
    header = [f"f{i}" for i in range(X.shape[1])] + ([] if labels is None else ["kind"])
    rows = [",".join(f"{value:.6f}" for value in row) + ("" if labels is None else f",{label}")
            for row, label in zip(X, labels if labels is not None else [None] * len(X))]
    path.write_text("\n".join([",".join(header), *rows]) + "\n")
    return path


def _wasap(*args, module="wasap.predict"):
    completed = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO,
                               timeout=120)
    return completed.returncode, completed.stdout, completed.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of ``python -m wasap.run`` on a raw csv file, and a second file of fresh rows."""
    folder = tmp_path_factory.mktemp("predict")
    X, labels = _raw_rows()
    train_csv = _write_csv(folder / "train.csv", X[:N_TRAIN_FILE], labels[:N_TRAIN_FILE])
    new_csv = _write_csv(folder / "new.csv", X[N_TRAIN_FILE:], labels[N_TRAIN_FILE:])
    out = folder / "run"
    status = run.main(["--dataset", str(train_csv), "--hidden", "32,32", "--epsilon", "5", "--epochs", "8",
                       "--threads", "1", "--out", str(out), "--quiet"])
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    return dict(folder=folder, train_csv=train_csv, new_csv=new_csv, model=out / "model.npz", summary=summary,
                X_new=X[N_TRAIN_FILE:], labels_new=labels[N_TRAIN_FILE:])


def _noise_bound(accuracy, *sizes):
    """Four standard deviations of the difference between accuracies measured on samples of these sizes."""
    return 4 * math.sqrt(accuracy * (1 - accuracy) * sum(1 / n for n in sizes))


def test_new_raw_rows_predict_as_well_as_the_runs_test_split(trained):
    code, stdout, stderr = _wasap(str(trained["model"]), str(trained["new_csv"]), "--out",
                                  str(trained["folder"] / "predictions.txt"))
    assert code == 0, stderr
    predicted = (trained["folder"] / "predictions.txt").read_text().splitlines()
    assert len(predicted) == N_NEW_FILE and set(predicted) <= set(LABELS)
    accuracy = float(np.mean(np.array(predicted) == trained["labels_new"]))
    n_test = round(0.3 * N_TRAIN_FILE)
    run_accuracy = trained["summary"]["final_test_accuracy"]
    assert run_accuracy > 1 / len(LABELS) + _noise_bound(1 / len(LABELS), n_test)  # it learned something
    assert abs(accuracy - run_accuracy) <= _noise_bound(run_accuracy, n_test, N_NEW_FILE)
    reported = re.search(r"accuracy: [\d.]+% \((\d+) of (\d+) rows\)", stderr)
    assert reported and int(reported.group(1)) == round(accuracy * N_NEW_FILE) and int(reported.group(2)) == N_NEW_FILE
    # The Python API gives the same labels.
    model = SparseMLP.load(trained["model"])
    assert model.predict(trained["X_new"]).tolist() == predicted


def test_stored_statistics_are_the_training_splits(trained):
    """The model file's mean and scale are those of the run's raw training split (same seed, same split)."""
    raw = load_dataset(str(trained["train_csv"]), standardize=False, seed=0)
    standardised = load_dataset(str(trained["train_csv"]), seed=0)
    preprocessing = SparseMLP.load(trained["model"]).preprocessing
    np.testing.assert_allclose(preprocessing.mean, raw.X_train.astype(np.float64).mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(preprocessing.scale, raw.X_train.astype(np.float64).std(axis=0), rtol=1e-6)
    # New rows go through exactly the arithmetic the training split went through.
    np.testing.assert_array_equal(preprocessing.transform(raw.X_train), standardised.X_train)
    np.testing.assert_array_equal(standardised.preprocessing.transform(raw.X_test), standardised.X_test)
    assert preprocessing.classes.tolist() == LABELS.tolist()


def test_predict_equals_the_network_on_rows_standardised_by_hand(trained):
    model = SparseMLP.load(trained["model"])
    X = trained["X_new"][:200]
    by_hand = ((X.astype(np.float32) - model.preprocessing.mean.astype(np.float32))
               / model.preprocessing.scale.astype(np.float32))
    probabilities = model.predict_output(by_hand)
    np.testing.assert_array_equal(model.predict_proba(X), probabilities)
    np.testing.assert_array_equal(model.predict(X), model.classes[probabilities.argmax(axis=1)])
    np.testing.assert_array_equal(X, trained["X_new"][:200])  # the caller's rows are left alone


def test_unlabelled_file_through_the_wasap_command(trained):
    features_only = _write_csv(trained["folder"] / "features.csv", trained["X_new"][:50])
    code, stdout, stderr = _wasap("predict", str(trained["model"]), str(features_only), module="wasap")
    assert code == 0, stderr
    assert "accuracy" not in stderr
    assert stdout.splitlines() == SparseMLP.load(trained["model"]).predict(trained["X_new"][:50]).tolist()


@pytest.mark.parametrize("change, fragment", [
    (lambda X, y: (X[:, :-2], y), "7 columns but the model takes 8 features"),
    (lambda X, y: (np.hstack([X, X[:, :2]]), y), "11 columns"),
    (lambda X, y: (X, np.where(y == "cow", "dog", y)), "'dog'"),
])
def test_mismatches_exit_2_with_a_message(trained, capsys, change, fragment):
    X, y = change(trained["X_new"][:40], trained["labels_new"][:40])
    path = _write_csv(trained["folder"] / "mismatch.csv", X, y)
    status = predict.main([str(trained["model"]), str(path)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert fragment in err, err


def test_features_only_file_with_a_text_column_exits_2(trained, capsys):
    """As many columns as features reads as features only: a label column there means one feature is missing."""
    path = _write_csv(trained["folder"] / "short.csv", trained["X_new"][:10, :-1], trained["labels_new"][:10])
    assert predict.main([str(trained["model"]), str(path)]) == 2
    err = capsys.readouterr().err
    assert "holds text such as" in err and "Traceback" not in err, err


def test_numeric_labels_unknown_to_a_text_model_exit_2(trained, capsys):
    path = _write_csv(trained["folder"] / "numbers.csv", trained["X_new"][:10], np.arange(10))
    assert predict.main([str(trained["model"]), str(path)]) == 2
    assert "not among the model's classes" in capsys.readouterr().err


def test_bad_model_or_data_path_exit_2(trained, tmp_path, capsys):
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 and then nothing")
    (tmp_path / "rows.xlsx").write_text("x")
    for argv, fragment in (([str(tmp_path / "missing.npz"), str(trained["new_csv"])], "no such file"),
                           ([str(trained["train_csv"]), str(trained["new_csv"])], "not an .npz archive"),
                           ([str(tmp_path / "garbage.npz"), str(trained["new_csv"])], "garbage.npz"),
                           ([str(trained["model"]), str(tmp_path / "absent.csv")], "absent.csv"),
                           ([str(trained["model"]), str(tmp_path / "rows.xlsx")], "rows.xlsx")):
        assert predict.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and fragment in err and "Traceback" not in err, err


def test_unwritable_out_exits_2(trained, tmp_path, capsys):
    status = predict.main([str(trained["model"]), str(trained["new_csv"]), "--out", str(tmp_path / "no" / "p.txt")])
    assert status == 2 and "cannot write" in capsys.readouterr().err


def test_model_saved_without_preprocessing_predicts_rows_as_given(trained, tmp_path, capsys):
    model = SparseMLP.load(trained["model"])
    model.save(tmp_path / "old.npz", classes=model.classes)
    old = SparseMLP.load(tmp_path / "old.npz")
    assert old.preprocessing is None and old.classes.tolist() == LABELS.tolist()
    X = model.preprocessing.transform(trained["X_new"][:30])
    np.testing.assert_array_equal(old.predict(X), model.predict(trained["X_new"][:30]))
    path = _write_csv(tmp_path / "standardised.csv", X, trained["labels_new"][:30])
    assert predict.main([str(tmp_path / "old.npz"), str(path)]) == 0
    assert "saved without its preprocessing" in capsys.readouterr().err


# -- the commands --------------------------------------------------------------------------------------------


def test_version_flags(capsys):
    for main in (wasap_main, run.main, predict.main):
        with pytest.raises(SystemExit) as exited:
            main(["--version"])
        assert exited.value.code == 0
        assert capsys.readouterr().out.split()[-1] == wasap.__version__


def test_console_script_entry_point(capsys):
    """setup.cfg's console script is wasap.cli:main; the installed script, when there is one, runs it."""
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    name, target = (part.strip() for part in config["options.entry_points"]["console_scripts"].strip().split("="))
    module, function = target.split(":")
    assert name == "wasap" and getattr(importlib.import_module(module), function) is wasap_main
    script = shutil.which("wasap")
    if script is not None:
        completed = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
        assert completed.returncode == 0 and completed.stdout.strip() == f"wasap {wasap.__version__}"


def test_wasap_train_help_lists_the_training_flags():
    code, stdout, stderr = _wasap("train", "--help", module="wasap")
    assert code == 0, stderr
    assert "--hidden" in stdout and "--no-standardize" in stdout and "--version" in stdout


def test_wasap_without_a_command_shows_the_commands(capsys):
    assert wasap_main([]) == 2
    err = capsys.readouterr().err
    assert "train" in err and "predict" in err
    with pytest.raises(SystemExit) as exited:
        wasap_main(["fly"])
    assert exited.value.code == 2


# -- the pieces: read_table, Preprocessing, SparseMLP.predict ------------------------------------------------


def test_read_table_formats(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 4)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    np.savez(tmp_path / "xy.npz", X=X, y=y)
    np.savez(tmp_path / "x.npz", X=X)
    np.savez(tmp_path / "four.npz", X_train=X[:8], y_train=y[:8], X_test=X[8:], y_test=y[8:])
    for name, labels in (("xy.npz", y), ("x.npz", None), ("four.npz", y)):
        got_X, got_y = read_table(tmp_path / name)
        np.testing.assert_array_equal(got_X, X)
        assert (got_y is None) if labels is None else got_y.tolist() == labels.tolist()
    X[:, -1] = 0.0  # svmlight leaves zeros out: the last column is absent from the file
    dump_svmlight_file(X, y, str(tmp_path / "rows.svm"), zero_based=True)
    got_X, got_y = read_table(tmp_path / "rows.svm", n_features=4)
    assert scipy.sparse.issparse(got_X) and got_X.shape == (12, 4)  # svmlight rows stay sparse, padded to 4
    np.testing.assert_allclose(got_X.toarray(), X, rtol=1e-6)
    assert got_y.tolist() == y.tolist()
    _write_csv(tmp_path / "rows.csv", X, y)
    assert read_table(tmp_path / "rows.csv", n_features=4)[1].tolist() == y.tolist()
    got_X, got_y = read_table(tmp_path / "rows.csv", n_features=5)  # as many columns as features: no labels
    assert got_y is None and got_X.shape == (12, 5)
    np.testing.assert_allclose(got_X[:, :4], X, atol=1e-6)
    with pytest.raises(DataError, match="5 columns but the model takes 7 features"):
        read_table(tmp_path / "rows.csv", n_features=7)


def test_preprocessing_round_trip_and_errors():
    rng = np.random.default_rng(1)
    prep = Preprocessing(3, mean=rng.normal(size=3), scale=rng.uniform(1, 2, 3), classes=np.array([2, 5, 9]))
    again = Preprocessing.from_arrays(prep.to_arrays())
    np.testing.assert_array_equal(again.mean, prep.mean)
    np.testing.assert_array_equal(again.scale, prep.scale)
    assert again.classes.tolist() == [2, 5, 9] and Preprocessing.from_arrays({}) is None
    X = rng.normal(size=(4, 3))
    expected = (X.astype(np.float32) - prep.mean.astype(np.float32)) / prep.scale.astype(np.float32)
    np.testing.assert_array_equal(prep.transform(X), expected)
    assert prep.label_indices(np.array([9, 2, 5])).tolist() == [2, 0, 1]
    with pytest.raises(DataError, match="2 features"):
        prep.transform(X[:, :2])
    with pytest.raises(DataError, match="NaN"):
        prep.transform(np.full((2, 3), np.nan))
    with pytest.raises(DataError, match="not among the model's classes"):
        prep.label_indices(np.array([2, 3]))
    with pytest.raises(ValueError, match="give scale with mean"):
        Preprocessing(3, mean=np.zeros(3))
    # Scaled without centering (sparse training data): the scale alone goes to the file and back, and
    # dense and sparse rows are divided alike, sparse rows staying sparse.
    scaled = Preprocessing.from_arrays(Preprocessing(3, scale=prep.scale).to_arrays())
    assert scaled.standardized and not scaled.centered and scaled.mean is None
    np.testing.assert_array_equal(scaled.scale, prep.scale)
    X[X < 0] = 0.0
    divided = X.astype(np.float32) / prep.scale.astype(np.float32)
    np.testing.assert_array_equal(scaled.transform(X), divided)
    sparse_rows = scipy.sparse.csr_matrix(X)
    transformed = scaled.transform(sparse_rows)
    assert scipy.sparse.issparse(transformed) and transformed.data is not sparse_rows.data
    np.testing.assert_array_equal(transformed.toarray(), divided)
    np.testing.assert_array_equal(sparse_rows.toarray(), X)  # the caller's rows are unchanged
    # A centring preprocessing (a model trained on dense rows) takes sparse rows as the dense ones they are.
    np.testing.assert_array_equal(prep.transform(sparse_rows), prep.transform(X))
    raw = Preprocessing(3, classes=np.array(["1", "2", "x"]))
    assert not raw.standardized and raw.label_indices(np.array([2, 1])).tolist() == [1, 0]


def test_predict_of_models_without_classes_and_of_mse_models():
    X = np.random.default_rng(2).normal(size=(20, 5)).astype(np.float32)
    classifier = SparseMLP.random([5, 6, 3], epsilon=2, seed=0, warn=False)
    np.testing.assert_array_equal(classifier.predict(X), classifier.predict_output(X).argmax(axis=1))
    regressor = SparseMLP.random([5, 6, 2], epsilon=2, seed=0, warn=False, output_activation="identity", loss="mse")
    np.testing.assert_array_equal(regressor.predict(X), regressor.predict_output(X))
    with pytest.raises(ValueError, match="not class probabilities"):
        regressor.predict_proba(X)


def test_save_refuses_preprocessing_or_classes_that_do_not_fit(tmp_path):
    model = SparseMLP.random([5, 6, 3], epsilon=2, seed=0, warn=False)
    with pytest.raises(ValueError, match="preprocessing is of 4 features"):
        model.save(tmp_path / "m.npz", preprocessing=Preprocessing(4))
    with pytest.raises(ValueError, match="differ"):
        model.save(tmp_path / "m.npz", classes=[0, 1, 2], preprocessing=Preprocessing(5, classes=np.array([1, 2, 3])))
    with pytest.raises(ValueError, match="2 classes given for a model of 3 outputs"):
        model.save(tmp_path / "m.npz", classes=["a", "b"])
    assert not (tmp_path / "m.npz").exists()


def test_dataset_hands_over_its_preprocessing(tmp_path):
    raw = load_dataset("madelon", standardize=False)
    assert not raw.preprocessing.standardized and raw.preprocessing.classes.tolist() == [-1, 1]
    data = load_dataset("madelon")
    np.testing.assert_array_equal(data.preprocessing.transform(raw.X_test), data.X_test)
