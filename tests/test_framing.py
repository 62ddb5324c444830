"""Input framing: trimming uniform borders before the squash (``--framing trim``), and histogram equalisation
after the trim (``--framing trim_equalize``), on tiny synthetic images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pneumo_core.imaging import content_box, frame_square, place_in_frame, read_xray

BLACK, EDGE = cv2.BORDER_CONSTANT, cv2.BORDER_REPLICATE


def textured(height: int = 90, width: int = 120, seed: int = 0) -> np.ndarray:
    """Noise over a gradient: every row and column differs from its neighbours, so nothing is a border."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(40, 200, width)[None, :] + np.linspace(-20, 20, height)[:, None]
    return np.clip(gradient + rng.normal(0, 15, (height, width)), 0, 255).astype(np.uint8)


def padded(gray: np.ndarray, top: int, bottom: int, left: int, right: int, border: int) -> np.ndarray:
    return cv2.copyMakeBorder(gray, top, bottom, left, right, border, value=0)


def test_an_image_without_borders_keeps_its_whole_frame():
    gray = textured()
    assert content_box(gray) == (0, gray.shape[0], 0, gray.shape[1])
    np.testing.assert_array_equal(frame_square(gray, 32, "trim"), frame_square(gray, 32, "squash"))


@pytest.mark.parametrize("border", [BLACK, EDGE], ids=["black", "edge pixels repeated"])
@pytest.mark.parametrize("sides", [(9, 9, 12, 12), (9, 9, 0, 0), (0, 0, 12, 12), (0, 20, 3, 0)])
@pytest.mark.parametrize("framing", ["trim", "trim_equalize"])
def test_padding_does_not_change_the_trimmed_input(border, sides, framing):
    gray = textured()
    bigger = padded(gray, *sides, border)
    assert content_box(bigger) == (sides[0], sides[0] + gray.shape[0], sides[2], sides[2] + gray.shape[1])
    np.testing.assert_array_equal(frame_square(bigger, 32, framing), frame_square(gray, 32, framing))
    assert not np.array_equal(frame_square(bigger, 32, "squash"), frame_square(gray, 32, "squash"))


@pytest.mark.parametrize("gamma", [0.7, 1.4])
def test_equalising_makes_a_gamma_change_barely_change_the_input(gamma):
    gray = textured()
    darker = cv2.LUT(gray, (255 * (np.arange(256) / 255) ** gamma).round().astype(np.uint8))

    def change(framing: str) -> float:
        return np.abs(frame_square(darker, 32, framing).astype(float) - frame_square(gray, 32, framing)).mean()

    assert change("trim") > 10 and change("trim_equalize") < 2


def test_training_squares_are_equalised_again_after_augmentation():
    from pneumo_core.registry import REGISTRY
    from pneumo_core.train import make_dataset

    spec = REGISTRY["cnn"]
    dark = np.stack([textured(spec.input_size, spec.input_size, seed) // 4 for seed in range(8)])  # grey levels 0-63
    targets = np.zeros(8, np.int64)

    def change_when_equalised(equalize: bool) -> np.ndarray:
        """Per square, the mean |change| in grey levels when it is equalised once more (0: already equalised)."""
        dataset = make_dataset(dark, targets, spec, 8, 1, augment_policy="robust", equalize=equalize)
        images, _ = next(iter(dataset))
        squares = np.rint(np.asarray(images)[..., 0] * 255).astype(np.uint8)
        return np.array([np.abs(cv2.equalizeHist(x).astype(float) - x).mean() for x in squares])

    assert change_when_equalised(equalize=False).max() > 20
    assert change_when_equalised(equalize=True).max() < 2


def test_at_most_a_fixed_share_of_each_side_is_trimmed():
    gray = np.zeros((100, 100), np.uint8)
    gray[45:55, 45:55] = textured(10, 10)
    top, bottom, left, right = content_box(gray)
    assert (top, left) == (35, 35) and (bottom, right) == (65, 65)


def test_an_unknown_framing_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="squash, trim"):
        frame_square(textured(), 32, "letterbox")


def test_a_square_map_lies_over_the_content_and_is_zero_on_trimmed_borders():
    gray = padded(textured(), 0, 0, 30, 30, BLACK)  # 90 x 180
    square_map = np.ones((16, 16), np.float32)
    assert place_in_frame(square_map, gray, "squash") is square_map
    framed = place_in_frame(square_map, gray, "trim")
    assert framed.shape == gray.shape
    assert framed[:, :30].max() == 0 and framed[:, -30:].max() == 0 and framed[:, 30:-30].min() == 1
    assert place_in_frame(square_map, cv2.resize(gray, (1800, 900)), "trim", max_side=512).shape == (256, 512)


def test_a_model_trained_with_trim_reads_a_padded_image_as_the_original(synthetic_dataset, tmp_path):
    """``train --framing trim`` records the framing; the loaded model squares, reads and explains with it."""
    from pneumo_core import artifacts
    from pneumo_core.__main__ import main
    from pneumo_core.gradcam import methods_for
    from pneumo_core.imaging import png_bytes
    from pneumo_core.reading import Reader

    argv = ["train", "--model", "mlp", "--data", str(synthetic_dataset), "--epochs", "1", "--framing", "trim",
            "--out", str(tmp_path / "models"), "--run-dir", str(tmp_path / "runs"),
            "--split-file", str(tmp_path / "split.csv"), "--no-gate", "--no-subtype"]  # fmt: skip
    assert main(argv) == 0
    loaded = artifacts.load_model_dir(tmp_path / "models" / "mlp")
    assert loaded.framing == "trim" and "Input framing (trim)" in (loaded.directory / "card.md").read_text()
    reader = Reader(loaded)
    original = textured(88, 72, seed=3)
    plain, framed = (read_xray(png_bytes(image)) for image in (original, padded(original, 8, 8, 10, 10, EDGE)))
    assert reader.read(framed).probability == pytest.approx(reader.read(plain).probability, abs=1e-6)
    heat = reader.heatmap(framed, methods_for(loaded)[0], 1)
    assert heat.shape == framed.gray.shape
    assert heat[:8].max() == 0 and heat[:, :10].max() == 0 and heat[8:-8, 10:-10].max() > 0
