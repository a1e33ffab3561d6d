"""With every default speed lever on, the crowd photo gives the reference pipeline's faces (issue 3)."""

from __future__ import annotations

import numpy as np
from conftest import read_bgr, shared_path
from test_correctness import iou, reference  # noqa: F401  (the reference InsightFace pipeline fixture)

from facerest.pipeline import ExtractOptions


def test_lumia_faces_match_reference(analyzer, reference):  # noqa: F811
    image = read_bgr(shared_path("anchor", "lumia.jpg"))
    # pinned: reference-equal faces and embeddings are the `reference` scale's promise (issue 18)
    [result] = analyzer.process([image], ExtractOptions(threshold=0.6, detect_scale="reference"))
    ref_boxes, ref_vecs = reference(image)
    ours = np.stack([f.bbox for f in result.faces])
    print(f"\nlumia.jpg at 0.6: {len(ours)} faces, reference {len(ref_boxes)}")
    assert abs(len(ours) - len(ref_boxes)) <= 0.02 * len(ref_boxes)
    # every face on one side has its twin on the other, boxes overlapping by IoU > 0.9
    unmatched_ours = [b for b in ours if iou(b, ref_boxes[:, :4]).max() <= 0.9]
    unmatched_ref = [b for b in ref_boxes[:, :4] if iou(b, ours).max() <= 0.9]
    allowed = int(0.02 * len(ref_boxes))
    assert len(unmatched_ours) <= allowed and len(unmatched_ref) <= allowed, (unmatched_ours, unmatched_ref)
    cosines = [
        float(face.embedding @ ref_vecs[int(np.argmax(iou(face.bbox, ref_boxes[:, :4])))])
        for face in result.faces
    ]
    print(f"cosine to the reference: min {min(cosines):.4f}, median {np.median(cosines):.4f}")
    assert min(cosines) >= 0.99
