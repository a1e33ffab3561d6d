"""Faces marked by hand (issue 20): `images.faces` of /extract embeds exactly the marked faces."""

from __future__ import annotations

import numpy as np
from conftest import Server, package_photo, read_bgr, shared_path
from helpers import b64

from facerest.pipeline import ExtractOptions
from facerest.pipeline.analyzer import FINE_LANDMARKS_PX


def detected(analyzer, path):  # type: ignore[no-untyped-def]
    [result] = analyzer.process([read_bgr(path)], ExtractOptions(return_landmarks=True))
    return result.faces


def extract(server: Server, path, faces) -> dict:  # type: ignore[no-untyped-def]
    with server.client() as client:
        r = client.post("/extract", json={"images": {"data": [b64(path)], "faces": [faces]}})
    assert r.status_code == 200, r.text
    return r.json()["data"][0]


def test_marked_landmarks_and_boxes_embed_the_detected_faces(server: Server, analyzer) -> None:  # type: ignore[no-untyped-def]
    photos = [package_photo("players.jpg"), shared_path("anchor", "Stallone.jpg")]
    from_landmarks, from_boxes, from_loose_boxes, tiny = [], [], [], []
    for path in photos:
        faces = detected(analyzer, path)
        reference = np.stack([f.embedding for f in faces])
        answer = extract(server, path, [{"landmarks": f.landmarks.tolist()} for f in faces])
        assert answer["status"] == "ok" and len(answer["faces"]) == len(faces)
        assert {f["marked"] for f in answer["faces"]} == {"landmarks"}
        got = np.array([f["vec"] for f in answer["faces"]], np.float32)
        from_landmarks += list(np.sum(got * reference, axis=1))

        answer = extract(server, path, [{"bbox": f.bbox.tolist()} for f in faces])
        assert {f["marked"] for f in answer["faces"]} == {"box"}, answer["faces"]
        got = np.array([f["vec"] for f in answer["faces"]], np.float32)
        # faces under FINE_LANDMARKS_PX at the detector's input take their landmarks from the
        # box enlarged, not from the whole image's detection: compared in the test below instead
        scale = analyzer._plan(read_bgr(path), ExtractOptions()).first.scale
        large = np.array([f.width * scale >= FINE_LANDMARKS_PX for f in faces])
        cosines = np.sum(got * reference, axis=1)
        from_boxes += list(cosines[large])
        tiny += list(cosines[~large])

        # a box drawn by a hand: 15% larger and shifted by a tenth of the face
        loose = []
        for f in faces:
            x1, y1, x2, y2 = (float(v) for v in f.bbox)
            w, h = x2 - x1, y2 - y1
            loose.append({"bbox": [x1 - 0.05 * w, y1 - 0.1 * h, x2 + 0.15 * w, y2 + 0.05 * h]})
        answer = extract(server, path, loose)
        got = np.array([f["vec"] for f in answer["faces"]], np.float32)
        from_loose_boxes += list(np.sum(got * reference, axis=1)[large])
    print(
        f"\n{len(from_landmarks)} faces: cosine to the detected face's embedding, from its landmarks "
        f"min {min(from_landmarks):.5f}; from its box min {min(from_boxes):.5f}; "
        f"from a looser, shifted box min {min(from_loose_boxes):.5f}; {len(tiny)} faces under "
        f"{FINE_LANDMARKS_PX} px at the detector's input (landmarks from the enlarged box): "
        f"{np.round(tiny, 3).tolist()}"
    )
    assert len(from_boxes) >= 16
    assert min(from_landmarks) >= 0.999
    assert min(from_boxes) >= 0.95
    assert min(from_loose_boxes) >= 0.95


def test_marks_outside_the_image_fail_that_image_alone(server: Server) -> None:
    path = shared_path("anchor", "Stallone.jpg")
    w = read_bgr(path).shape[1]
    good = [[100, 100], [140, 100], [120, 120], [105, 140], [135, 140]]
    outside = [[x + w, y] for x, y in good]
    with server.client() as client:
        r = client.post(
            "/extract",
            json={
                "images": {
                    "data": [b64(path)] * 4,
                    "faces": [
                        [{"landmarks": outside}],
                        [{"bbox": [50, 50, 50, 90]}],
                        None,
                        [{"landmarks": good}],
                    ],
                }
            },
        )
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["status"] for d in data] == ["failed", "failed", "ok", "ok"]
        assert "outside" in data[0]["traceback"] and data[0]["code"] == "bad_face_mark"
        assert "zero area" in data[1]["traceback"]
        assert len(data[2]["faces"]) == 1 and "marked" not in data[2]["faces"][0]
        assert data[3]["faces"][0]["marked"] == "landmarks"
        r = client.post("/extract", json={"images": {"data": [b64(path)] * 2, "faces": [None]}})
        assert r.status_code == 422 and "1 entries for 2 images" in r.text
        r = client.post("/extract", json={"images": {"data": [b64(path)], "faces": [[{}]]}})
        assert r.status_code == 422 and "bbox" in r.text
        r = client.post("/extract", json={"images": {"data": [b64(path)], "faces": [[{"bbox": [1, 2, 3]}]]}})
        assert r.status_code == 422


def test_a_box_around_a_face_too_small_for_the_whole_image_is_searched_enlarged(
    server: Server, analyzer
) -> None:  # type: ignore[no-untyped-def]
    """A 48-pixel face in a 3000x3000 photo is 10 pixels at the detector's input: missed. Marked by
    a box, it is looked for in the box enlarged, and embeds as the same face shown on its own."""
    import cv2

    photo = read_bgr(shared_path("anchor", "Stallone.jpg"))
    [face] = detected(analyzer, shared_path("anchor", "Stallone.jpg"))[:1]
    x1, y1, x2, y2 = face.bbox.astype(int)
    pad = (x2 - x1) // 2
    head = photo[max(y1 - pad, 0) : y2 + pad, max(x1 - pad, 0) : x2 + pad]
    scale = 96 / head.shape[1]
    small = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((3000, 3000, 3), 127, np.uint8)
    canvas[1500 : 1500 + small.shape[0], 1500 : 1500 + small.shape[1]] = small
    alone = np.full((400, 400, 3), 127, np.uint8)
    alone[150 : 150 + small.shape[0], 150 : 150 + small.shape[1]] = small
    [reference] = analyzer.process([alone], ExtractOptions())[0].faces
    assert analyzer.process([canvas], ExtractOptions())[0].faces == []
    bx1, by1, bx2, by2 = (float(v) for v in reference.bbox)
    box = [bx1 - 150 + 1500, by1 - 150 + 1500, bx2 - 150 + 1500, by2 - 150 + 1500]
    _, jpeg = cv2.imencode(".png", canvas)
    with server.client() as client:
        r = client.post(
            "/extract", json={"images": {"data": [b64(jpeg.tobytes())], "faces": [[{"bbox": box}]]}}
        )
    assert r.status_code == 200, r.text
    [got] = r.json()["data"][0]["faces"]
    cosine = float(np.asarray(got["vec"], np.float32) @ reference.embedding)
    print(
        f"\na {reference.bbox[2] - reference.bbox[0]:.0f}-pixel face marked in a 3000x3000 photo: "
        f"{got['marked']}, "
        f"cosine to the face detected alone {cosine:.4f}"
    )
    assert got["marked"] == "box" and cosine >= 0.95
