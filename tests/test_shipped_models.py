"""The models committed in models/: complete, verified, and right on the sample X-rays."""

from __future__ import annotations

import pytest

from pneumo_core import artifacts, data
from pneumo_core.diagnosis import list_samples
from pneumo_core.inference import predict_bytes
from pneumo_core.registry import REGISTRY

SHIPPED = ("mlp", "cnn", "xception")
MAX_MODELS_MB = 150


def test_every_shippable_model_is_shipped():
    """The three shippable models are in models/; densenet201 is not, with its reason in the registry."""
    shipped = artifacts.shipped_model_dirs()
    assert set(shipped) == set(SHIPPED)
    assert not REGISTRY["densenet201"].shippable


def test_models_folder_fits_the_budget():
    """models/ stays within its 150 MB budget."""
    size = sum(path.stat().st_size for path in artifacts.MODELS_DIR.rglob("*") if path.is_file())
    assert size < MAX_MODELS_MB * 2**20


@pytest.mark.parametrize("name", SHIPPED)
def test_artifacts_are_consistent(name):
    """Every file's checksum matches config.json, and the split hash is that of the committed split."""
    directory = artifacts.MODELS_DIR / name
    config = artifacts.read_json(directory / artifacts.CONFIG_FILE)
    for file_name, digest in config["checksums"].items():
        assert artifacts.sha256_of(directory / file_name) == digest, file_name
    assert config["data"]["split_hash"] == data.split_hash()
    assert 0.0 < config["threshold"] < 1.0
    assert "not a medical device" in (directory / artifacts.CARD_FILE).read_text()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_reads_the_samples_correctly(name):
    """Each shipped model loads (checksum verified) and labels every sample X-ray as its ground truth."""
    loaded = artifacts.load_model_dir(artifacts.MODELS_DIR / name)
    samples = list_samples()
    assert len(samples) >= 4
    for sample in samples:
        probability = predict_bytes(loaded, sample.path.read_bytes())
        assert 0.0 <= probability <= 1.0
        assert loaded.label(probability) == sample.label, (sample.path.name, probability, loaded.threshold)
