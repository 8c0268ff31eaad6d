"""Face detection and EG3D/FFHQ-style alignment of real photographs (adapt3d.inversion.face_align, invert --align).

The photographs ship inside scikit-image (a dev dependency): ``astronaut.png`` (Eileen Collins, 512 px, one frontal
face) and ``coffee.png`` (a cup of coffee, no face). The reference landmarks below were annotated by hand on an 8x
zoom of astronaut.png (pupil centres and the middle of the lips, +-2 px), independently of the detector.
"""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapt3d.inversion.face_align import (EG3D_CROP_UNITS, MEAN_FACE_LANDMARKS, FaceDetectorUnavailable,
                                          NoFaceError, align_face, alignment_quad, detect_face)
from adapt3d.inversion.images import center_crop_resize, read_image

DATA = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
ASTRONAUT = DATA / "astronaut.png"
COFFEE = DATA / "coffee.png"
HAND_EYE_LEFT, HAND_EYE_RIGHT, HAND_MOUTH = np.array([203.0, 101.0]), np.array([246.0, 104.0]), np.array([223.0, 141.0])


def _photo_to_crop(quad: np.ndarray, resolution: int):
    """Affine map photo pixels -> aligned-crop pixels, from the quad (TL, BL, BR, TR) -> the crop's corners."""
    src = np.c_[quad[:3], np.ones(3)]
    dst = np.array([[0, 0], [0, resolution], [resolution, resolution]], float)
    m = np.linalg.solve(src, dst)  # (3, 2)
    return lambda p: np.r_[np.asarray(p, float), 1.0] @ m


def test_the_astronauts_face_and_eyes_are_found_where_a_person_marks_them():
    lm = detect_face(read_image(ASTRONAUT))
    assert lm.eyes_found and lm.faces_found == 1
    assert np.abs(lm.eye_left - HAND_EYE_LEFT).max() < 4 and np.abs(lm.eye_right - HAND_EYE_RIGHT).max() < 4
    x, y, w, h = lm.box
    for p in (HAND_EYE_LEFT, HAND_EYE_RIGHT, HAND_MOUTH):
        assert x < p[0] < x + w and y < p[1] < y + h
    # the mouth is estimated from the eyes (no mouth detector): within a fifth of the eye distance of the real one
    assert np.linalg.norm(lm.mouth - HAND_MOUTH) < 0.25 * np.linalg.norm(HAND_EYE_RIGHT - HAND_EYE_LEFT)


def test_aligned_crop_is_square_level_and_centred_on_the_face_like_eg3d():
    res = 256
    aligned = align_face(read_image(ASTRONAUT), res)
    assert aligned.image.shape == (res, res, 3) and aligned.image.dtype == np.uint8
    assert aligned.outside_fraction == 0.0
    to_crop = _photo_to_crop(aligned.quad, res)
    el, er, mouth = to_crop(HAND_EYE_LEFT), to_crop(HAND_EYE_RIGHT), to_crop(HAND_MOUTH)
    assert abs((el[0] + er[0]) / 2 - res / 2) < 0.02 * res  # centred horizontally between the eyes
    assert abs(el[1] - er[1]) < 0.01 * res                  # eye line level (the photo's 4 deg roll removed)
    # EG3D framing: crop side 700/300 mean-face units, eyes 0.621 units apart, eye line 0.290 above the centre
    # (Deep3DFaceRecon's mean face, EG3D's crop_images_in_the_wild.py)
    lm = MEAN_FACE_LANDMARKS
    assert np.linalg.norm(er - el) / res == pytest.approx((lm[1, 0] - lm[0, 0]) / (700 / 300), abs=0.02)
    assert (el[1] + er[1]) / 2 / res == pytest.approx(0.5 - lm[:2, 1].mean() / (700 / 300), abs=0.03)
    assert mouth[1] > (el[1] + er[1]) / 2 + 0.1 * res  # mouth below the eyes, in the lower half
    assert EG3D_CROP_UNITS == pytest.approx(700 / 300)
    # the crop's pixels are the photo's: the aligned eye region is the photo's eye region (not a blank or shifted
    # image): its correlation with the photo resampled by an independent PIL affine transform is high
    inv = np.linalg.inv(np.r_[np.c_[np.linalg.solve(np.c_[aligned.quad[:3], np.ones(3)],
                                                      np.array([[0, 0], [0, res], [res, res]], float)).T],
                              [[0, 0, 1]]])
    ref = np.asarray(Image.open(ASTRONAUT).convert("RGB").transform((res, res), Image.AFFINE, inv[:2].ravel(),
                                                                    Image.BILINEAR), float)
    a = aligned.image.astype(float)
    assert np.corrcoef(a.ravel(), ref.ravel())[0, 1] > 0.97


def test_ffhq_quad_matches_a_hand_computed_example():
    # eyes (0, 0), (10, 0), mouth (5, 10): e2e = (10, 0), e2m = (0, 10) -> x = (20, 0) scaled to max(20, 18) = 20,
    # y = (0, 20), centre = eye_avg + 0.1 e2m = (5, 1)
    quad = alignment_quad(np.array([0.0, 0.0]), np.array([10.0, 0.0]), np.array([5.0, 10.0]), "ffhq")
    assert np.allclose(quad, [[-15, -19], [-15, 21], [25, 21], [25, -19]])
    with pytest.raises(ValueError, match="--align-crop: 'dlib'"):
        alignment_quad(np.zeros(2), np.ones(2), np.ones(2), "dlib")  # type: ignore[arg-type]


def test_alignment_removes_a_tilt_of_the_head():
    photo = Image.open(ASTRONAUT).convert("RGB")
    tilted = np.asarray(photo.rotate(12, resample=Image.BICUBIC, center=(224, 120)))  # counter-clockwise 12 deg
    upright, rolled = align_face(np.asarray(photo), 128), align_face(tilted, 128)
    assert upright.landmarks.eyes_found and rolled.landmarks.eyes_found
    assert rolled.roll_deg == pytest.approx(upright.roll_deg - 12, abs=3)
    # both crops show the same, level face: far closer to each other than the plain centre crops are
    diff_aligned = np.abs(upright.image.astype(float) - rolled.image).mean()
    diff_plain = np.abs(center_crop_resize(np.asarray(photo), 128).astype(float)
                        - center_crop_resize(tilted, 128)).mean()
    assert diff_aligned < 0.5 * diff_plain, (diff_aligned, diff_plain)


def test_a_photo_without_a_face_gets_an_error_naming_the_file():
    with pytest.raises(NoFaceError, match=r"image: no face found in .*coffee\.png.*--no-align"):
        align_face(read_image(COFFEE), 64, name=str(COFFEE))


def test_opencv_without_cascades_gets_an_error_saying_what_to_install(monkeypatch, tmp_path):
    import cv2
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path))
    with pytest.raises(FaceDetectorUnavailable, match=r"opencv-python-headless>=4.8,<5.*--no-align"):
        detect_face(read_image(ASTRONAUT))


def _fast_invert(image, out, **kw):
    from adapt3d.pipelines.invert import InvertConfig
    return InvertConfig(image=image, out=out, preset="tiny", num_steps=2, loss="mse", w_avg_samples=32,
                        search_yaw_steps=1, search_pitch_steps=1, search_keep=1, search_steps=1, video="none",
                        clip_model="none", progress=False, **kw)


def test_invert_aligns_the_photo_by_default_and_no_align_keeps_the_centre_crop(tmp_path):
    from adapt3d.pipelines.invert import run
    res = run(_fast_invert(ASTRONAUT, tmp_path / "a"))
    inverted = np.asarray(Image.open(tmp_path / "a" / "input.png"))
    assert np.array_equal(inverted, align_face(read_image(ASTRONAUT), 64).image)
    summary = json.loads((tmp_path / "a" / "invert.json").read_text())
    assert summary["alignment"]["crop"] == "eg3d" and summary["alignment"]["landmarks"]["eyes_found"]
    assert (tmp_path / "a" / "alignment.png").is_file() and any("face aligned" in n for n in res.notes)
    run(_fast_invert(ASTRONAUT, tmp_path / "b", align=False))
    plain = np.asarray(Image.open(tmp_path / "b" / "input.png"))
    assert np.array_equal(plain, center_crop_resize(read_image(ASTRONAUT), 64))
    assert json.loads((tmp_path / "b" / "invert.json").read_text())["alignment"] is None
    assert not math.isclose(float(np.abs(plain.astype(float) - inverted).mean()), 0.0)


def test_invert_refuses_a_photo_without_a_face_before_loading_anything(tmp_path):
    from adapt3d.pipelines.invert import run
    with pytest.raises(NoFaceError, match=r"image: no face found in .*coffee\.png"):
        run(_fast_invert(COFFEE, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
