"""Find the face in a user's photo and crop it the way EG3D's FFHQ training images are cropped.

Users' photos are not FFHQ-aligned: the face can be anywhere, at any size, tilted. A tri-plane face generator only
inverts well when the input is framed like its training data (NVlabs/eg3d#28), so ``adapt3d invert`` aligns the
photo first (``--no-align`` keeps the plain centred square crop).

**Detector.** OpenCV's Viola-Jones Haar cascades, whose trained models ship inside the ``opencv-python-headless``
wheel (``cv2.data.haarcascades``; BSD / Intel licence): ``haarcascade_frontalface_alt2`` (then ``_default``) for the
face box, ``haarcascade_eye`` (then ``_eye_tree_eyeglasses``) inside its upper half for the eyes. Why these: they are
the only face models that ship inside a package this project already depends on, they run in milliseconds on a CPU
and need no download. OpenCV's better detector, YuNet (``cv2.FaceDetectorYN``), needs an ONNX file that no OpenCV
wheel ships; dlib's 68-point model (what FFHQ used) would add dlib and a 100 MB model package whose training data
forbids commercial use; MediaPipe pulls in a large dependency tree. OpenCV 5 dropped the Haar cascades and
``CascadeClassifier``, hence ``opencv-python-headless<5`` in pyproject.toml. Limits: near-frontal faces (about
+-30 deg yaw, +-20 deg roll); the largest face is used.

**Landmarks.** Eye centres are the centres of the two eye boxes (the best left/right pair: similar size, level,
0.25-0.65 face widths apart). When no eye pair is found they are placed at fixed fractions of the face box
(:data:`EYES_IN_FACE_BOX`, measured on the astronaut photo and stated in the result). The cascades give no mouth:
the mouth centre is *estimated* on the perpendicular bisector of the eyes, below them, at
:data:`MOUTH_BELOW_EYES` x the eye distance: the ratio of the mean face (Deep3DFaceRecon's standard landmarks,
below), so the estimate is exact for an average frontal face and off by the individual's proportions otherwise.

**Crop** (``crop="eg3d"``, default). EG3D's FFHQ images were made in two steps: FFHQ's oriented crop (rotation from
the eye line) and then Deep3DFaceRecon's crop: fit the 5 detected landmarks to the 3D mean-face landmarks
:data:`MEAN_FACE_LANDMARKS` (least squares, scale ``s`` pixels per unit), centre on the projected origin of the mean
face, side ``700 / 300 * s`` (EG3D's ``crop_images_in_the_wild.py``: rescale factor 300, 1024 px target, 700 px centre
crop, resized to 512). Here the eyes and the mouth centre are fitted to the frontal projection of the mean face with
a similarity (scale, rotation, translation), and the square of side ``700 / 300`` mean-face units around its origin,
rotated with the face, is cropped: EG3D's framing with FFHQ's roll removal. ``crop="ffhq"`` uses FFHQ's own quad
(``ffhq-dataset`` ``recreate_aligned_images``): side ``2 max(2 |e2e|, 1.8 |e2m|)``, centred at ``eye_avg + 0.1 e2m``.

The quad is sampled with bilinear interpolation at up to 4x the output size (after an antialiased shrink when the
face is much larger), then Lanczos-resized; pixels outside the photo are filled by reflection (as FFHQ pads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

__all__ = ["FaceLandmarks", "AlignedFace", "NoFaceError", "FaceDetectorUnavailable", "detect_face",
           "alignment_quad", "align_face", "draw_alignment", "MEAN_FACE_LANDMARKS", "MOUTH_BELOW_EYES", "EG3D_CROP_UNITS",
           "CROP_STYLES"]

CROP_STYLES = ("eg3d", "ffhq")

# Deep3DFaceRecon's 5 standard 3D landmarks (BFM similarity_Lm3D_all.mat reduced by util/load_mats.load_lm3d; the
# values EG3D's preprocessing fits to): left eye, right eye (image left/right of a frontal face), nose tip, left and
# right mouth corner; x right, y up, z towards the camera, in BFM decimetres.
MEAN_FACE_LANDMARKS = np.array([[-0.31148657, 0.29036078, 0.13377953],
                                [0.30979887, 0.28972036, 0.13179526],
                                [0.0032535, -0.04617932, 0.55244243],
                                [-0.25216928, -0.38133916, 0.22405732],
                                [0.2484662, -0.38128236, 0.22235769]])
# EG3D crop_images_in_the_wild.py: rescale_factor 300 -> 700 px centre crop of the 1024 px image = 700/300 units.
EG3D_CROP_UNITS = 700.0 / 300.0


def _mean_face_2d() -> np.ndarray:
    """Frontal projection of (left eye, right eye, mouth centre) in image orientation (x right, y down), (3, 2)."""
    lm = MEAN_FACE_LANDMARKS
    pts = np.stack([lm[0, :2], lm[1, :2], (lm[3, :2] + lm[4, :2]) / 2])
    return pts * np.array([1.0, -1.0])


_MF = _mean_face_2d()
# |eye midpoint -> mouth centre| / |eye -> eye| of the mean face (= 1.0806).
MOUTH_BELOW_EYES = float(np.linalg.norm(_MF[2] - (_MF[0] + _MF[1]) / 2) / np.linalg.norm(_MF[1] - _MF[0]))
# Eye centres as fractions (x, y) of OpenCV's frontal-face box when no eye pair is found: the astronaut photo's
# detected eyes in its alt2 box (178, 69, 92, 92): (203, 103) and (247.5, 105.5) -> (0.27, 0.37), (0.77, 0.40).
EYES_IN_FACE_BOX = ((0.28, 0.38), (0.74, 0.38))


class NoFaceError(ValueError):
    """No face was found in the image (the message names the argument and the file)."""


class FaceDetectorUnavailable(RuntimeError):
    """The installed OpenCV has no Haar cascades (OpenCV 5 removed them)."""


@dataclass
class FaceLandmarks:
    """Face box (x, y, w, h) and landmark centres (x, y) in pixels of the original photo (x right, y down)."""

    box: tuple[float, float, float, float]
    eye_left: np.ndarray   # the eye on the image's left (the subject's right eye)
    eye_right: np.ndarray
    mouth: np.ndarray
    eyes_found: bool       # False: eyes placed at EYES_IN_FACE_BOX fractions of the box
    mouth_estimated: bool = True
    faces_found: int = 1
    detector: str = ""

    def to_dict(self) -> dict:
        r = lambda v: [round(float(x), 2) for x in v]  # noqa: E731
        return {"box": r(self.box), "eye_left": r(self.eye_left), "eye_right": r(self.eye_right),
                "mouth": r(self.mouth), "eyes_found": self.eyes_found, "mouth_estimated": self.mouth_estimated,
                "faces_found": self.faces_found, "detector": self.detector}


@dataclass
class AlignedFace:
    """The aligned crop (R, R, 3) uint8, the quad it was sampled from (corners top-left, bottom-left, bottom-right,
    top-right, in photo pixels), the landmarks, and the fraction of the crop that lay outside the photo."""

    image: np.ndarray
    quad: np.ndarray
    landmarks: FaceLandmarks
    crop: str
    outside_fraction: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"crop": self.crop, "quad": [[round(float(v), 2) for v in p] for p in self.quad],
                "landmarks": self.landmarks.to_dict(), "outside_fraction": round(self.outside_fraction, 4),
                "roll_deg": round(self.roll_deg, 2), "notes": self.notes}

    @property
    def roll_deg(self) -> float:
        """Angle of the eye line in the photo, degrees (positive: the right eye is lower, clockwise on screen)."""
        d = self.landmarks.eye_right - self.landmarks.eye_left
        return math.degrees(math.atan2(d[1], d[0]))


def _cascades():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - cv2 is a dependency
        raise FaceDetectorUnavailable("face alignment needs OpenCV (pip install 'opencv-python-headless<5'); "
                                      "or pass --no-align") from e
    root = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or "")
    names = ("haarcascade_frontalface_alt2.xml", "haarcascade_frontalface_default.xml", "haarcascade_eye.xml",
             "haarcascade_eye_tree_eyeglasses.xml")
    if not hasattr(cv2, "CascadeClassifier") or not all((root / n).is_file() for n in names):
        raise FaceDetectorUnavailable(
            f"face alignment needs OpenCV's Haar cascades, which OpenCV {cv2.__version__} does not ship (OpenCV 5 "
            "removed them): pip install 'opencv-python-headless>=4.8,<5', or pass --no-align")
    return cv2, {n: cv2.CascadeClassifier(str(root / n)) for n in names}


def _best_eye_pair(eyes: np.ndarray, face_w: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Pick (left, right) eye centres from eye boxes (N, 4) relative to the face box; None if no plausible pair."""
    centres = eyes[:, :2] + eyes[:, 2:4] / 2
    sizes = eyes[:, 2].astype(float)
    best, best_score = None, math.inf
    for i in range(len(eyes)):
        for j in range(len(eyes)):
            a, b = centres[i], centres[j]
            dx, dy = b[0] - a[0], b[1] - a[1]
            if dx <= 0 or a[0] > face_w / 2 or b[0] < face_w / 2:
                continue
            if not (0.25 * face_w <= dx <= 0.65 * face_w) or abs(dy) > 0.5 * dx:
                continue
            score = abs(dy) / dx + abs(sizes[i] - sizes[j]) / max(sizes[i], sizes[j]) + abs(dx / face_w - 0.45)
            if score < best_score:
                best, best_score = (a.astype(float), b.astype(float)), score
    return best


def detect_face(image: np.ndarray, *, arg: str = "image", name: str = "the image") -> FaceLandmarks:
    """Largest frontal face of a uint8 (H, W, 3) RGB photo: box, eye centres, estimated mouth centre.

    Raises :class:`NoFaceError` (naming ``arg`` and ``name``) when no face is found.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{arg}: expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    cv2, cascade = _cascades()
    h, w = image.shape[:2]
    scale = min(1.0, 1024.0 / max(h, w))  # detect on at most 1024 px; coordinates are scaled back
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    grey = cv2.equalizeHist(grey)
    min_side = max(24, int(0.06 * min(grey.shape)))
    faces, detector = np.zeros((0, 4)), ""
    for cname in ("haarcascade_frontalface_alt2.xml", "haarcascade_frontalface_default.xml"):
        found = cascade[cname].detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        if len(found):
            faces, detector = np.asarray(found, dtype=float), cname.removesuffix(".xml")
            break
    if not len(faces):
        raise NoFaceError(f"{arg}: no face found in {name} (OpenCV frontal-face Haar cascades, faces of at least "
                          f"{round(min_side / scale)} px); give a photo with a visible, roughly frontal face, or pass "
                          "--no-align to invert the centred square crop as it is")
    fx, fy, fw, fh = faces[np.argmax(faces[:, 2] * faces[:, 3])]
    roi = grey[int(fy):int(fy + 0.6 * fh), int(fx):int(fx + fw)]
    pair = None
    for cname in ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml"):
        eyes = cascade[cname].detectMultiScale(roi, scaleFactor=1.05, minNeighbors=3,
                                               minSize=(max(4, int(0.1 * fw)),) * 2,
                                               maxSize=(max(5, int(0.45 * fw)),) * 2)
        if len(eyes) >= 2:
            pair = _best_eye_pair(np.asarray(eyes, dtype=float), fw)
            if pair is not None:
                break
    origin = np.array([fx, fy])
    if pair is not None:
        eye_left, eye_right = origin + pair[0], origin + pair[1]
    else:
        (lx, ly), (rx, ry) = EYES_IN_FACE_BOX
        eye_left, eye_right = origin + np.array([lx * fw, ly * fh]), origin + np.array([rx * fw, ry * fh])
    d = eye_right - eye_left
    mouth = (eye_left + eye_right) / 2 + MOUTH_BELOW_EYES * np.array([-d[1], d[0]])  # perpendicular, downwards
    return FaceLandmarks(box=tuple(float(v) / scale for v in (fx, fy, fw, fh)), eye_left=eye_left / scale,
                         eye_right=eye_right / scale, mouth=mouth / scale, eyes_found=pair is not None,
                         faces_found=len(faces), detector=detector)


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ~ s R src + t (Umeyama, no reflection); src, dst (N, 2)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    s = float(np.trace(np.diag(sig) @ sign) / (a ** 2).sum(1).mean())
    return s, rot, mu_d - s * rot @ mu_s


def alignment_quad(eye_left: np.ndarray, eye_right: np.ndarray, mouth: np.ndarray,
                   crop: Literal["eg3d", "ffhq"] = "eg3d") -> np.ndarray:
    """The oriented square to crop, (4, 2) corners top-left, bottom-left, bottom-right, top-right (photo pixels).

    ``eg3d``: similarity fit of (eyes, mouth) to the mean face, square of EG3D_CROP_UNITS around its origin;
    ``ffhq``: FFHQ's quad from the eye and mouth centres (see the module docstring).
    """
    el, er, m = (np.asarray(v, dtype=float) for v in (eye_left, eye_right, mouth))
    if crop == "ffhq":
        eye_avg, e2e = (el + er) / 2, er - el
        e2m = m - eye_avg
        x = e2e - np.flipud(e2m) * [-1, 1]
        x = x / np.hypot(*x) * max(np.hypot(*e2e) * 2.0, np.hypot(*e2m) * 1.8)
        y = np.flipud(x) * [-1, 1]
        c = eye_avg + e2m * 0.1
        return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    if crop != "eg3d":
        raise ValueError(f"--align-crop: {crop!r} is not one of {', '.join(CROP_STYLES)}")
    s, rot, t = _similarity(_MF, np.stack([el, er, m]))
    half = EG3D_CROP_UNITS / 2
    corners = np.array([[-half, -half], [-half, half], [half, half], [half, -half]])  # mean-face units, y down
    return corners @ (s * rot).T + t


def _warp(image: np.ndarray, quad: np.ndarray, resolution: int) -> tuple[np.ndarray, float]:
    """Sample the quad (TL, BL, BR, TR) into a (resolution, resolution, 3) uint8 image; also the outside fraction."""
    import cv2

    quad = quad.astype(np.float64).copy()  # pixel-centre coordinates (OpenCV's convention)
    qsize = float(np.linalg.norm(quad[3] - quad[0]))
    work = int(max(resolution, min(4 * resolution, round(qsize))))
    src = image
    shrink = int(math.floor(qsize / work * 0.5))
    if shrink > 1:  # antialiased shrink first, as FFHQ does, so the bilinear sampling below does not alias
        size = (max(1, round(image.shape[1] / shrink)), max(1, round(image.shape[0] / shrink)))
        src = np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
        factor = np.array([size[0] / image.shape[1], size[1] / image.shape[0]])
        quad = (quad + 0.5) * factor - 0.5
    # the quad's corners are the output's outer edges: (0, 0), (0, work), (work, work) in edge coordinates
    edges = np.array([[0, 0], [0, work], [work, work]], dtype=np.float32) - 0.5
    matrix = cv2.getAffineTransform(quad[:3].astype(np.float32), edges)
    out = cv2.warpAffine(src, matrix, (work, work), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    inside = cv2.warpAffine(np.ones(src.shape[:2], np.uint8), matrix, (work, work), flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if work != resolution:
        out = np.asarray(Image.fromarray(out).resize((resolution, resolution), Image.LANCZOS))
    return np.array(out, dtype=np.uint8, copy=True), float(1.0 - inside.mean())  # writable, contiguous


def align_face(image: np.ndarray, resolution: int, crop: Literal["eg3d", "ffhq"] = "eg3d", *, arg: str = "image",
               name: str = "the image") -> AlignedFace:
    """Detect the face of a uint8 (H, W, 3) photo and return its aligned (resolution, resolution, 3) crop."""
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution: expected a positive integer, got {resolution!r}")
    if crop not in CROP_STYLES:
        raise ValueError(f"--align-crop: {crop!r} is not one of {', '.join(CROP_STYLES)}")
    lm = detect_face(image, arg=arg, name=name)
    quad = alignment_quad(lm.eye_left, lm.eye_right, lm.mouth, crop)
    aligned, outside = _warp(image, quad, resolution)
    notes = [f"face aligned ({crop} crop, {lm.detector}): eyes at {lm.eye_left.round(1).tolist()} and "
             f"{lm.eye_right.round(1).tolist()}, mouth estimated at {lm.mouth.round(1).tolist()}"]
    if not lm.eyes_found:
        notes.append("no eye pair found: eyes placed at fixed positions in the face box (less precise alignment)")
    if lm.faces_found > 1:
        notes.append(f"{lm.faces_found} faces found: the largest is used")
    if outside > 0.01:
        notes.append(f"{outside:.0%} of the aligned crop lies outside the photo (filled by reflection)")
    return AlignedFace(image=aligned, quad=quad, landmarks=lm, crop=crop, outside_fraction=outside, notes=notes)


def draw_alignment(photo: np.ndarray, aligned: AlignedFace, max_side: int = 768) -> np.ndarray:
    """The photo (uint8 (H, W, 3), downscaled to ``max_side``) with the face box (blue), the eyes (green), the
    estimated mouth (orange) and the crop quad (red, its top edge thicker) drawn: what was aligned and how."""
    from PIL import ImageDraw

    h, w = photo.shape[:2]
    k = min(1.0, max_side / max(h, w))
    img = Image.fromarray(photo)
    if k < 1.0:
        img = img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.LANCZOS)
    draw = ImageDraw.Draw(img)
    lm, width = aligned.landmarks, max(1, round(max(img.size) / 256))
    x, y, bw, bh = (v * k for v in lm.box)
    draw.rectangle([x, y, x + bw, y + bh], outline=(40, 90, 255), width=width)
    q = [tuple(p * k) for p in aligned.quad]
    draw.line(q + [q[0]], fill=(255, 40, 40), width=width)
    draw.line([q[0], q[3]], fill=(255, 40, 40), width=3 * width)  # the crop's top edge
    r = 2 * width
    for p, colour in ((lm.eye_left, (40, 220, 40)), (lm.eye_right, (40, 220, 40)), (lm.mouth, (255, 150, 0))):
        px, py = p * k
        draw.ellipse([px - r, py - r, px + r, py + r], outline=colour, width=width)
    return np.asarray(img)
