"""People in a gallery over HTTP (issue 20): faces enrolled without a subject, POST .../cluster,
incremental updates and feedback."""

from __future__ import annotations

import csv

import numpy as np
from conftest import Server, read_bgr, shared_path
from helpers import b64

from facerest.gallery import clustering
from facerest.pipeline import ExtractOptions

SETS = ["deepface", "facerec_ageitgey"]


def shared_faces(analyzer) -> tuple[list[str], list[str], np.ndarray]:  # type: ignore[no-untyped-def]
    paths, people, vectors = [], [], []
    for set_name in SETS:
        root = shared_path("verify", set_name)
        with (root / "identities.csv").open() as fh:
            for row in csv.DictReader(fh):
                [result] = analyzer.process([read_bgr(root / row["img"])], ExtractOptions(limit_faces=1))
                paths.append(str(root / row["img"]))
                people.append(f"{set_name}/{row['identity']}")
                vectors.append(result.faces[0].embedding)
    return paths, people, np.stack(vectors)


def test_unsorted_faces_cluster_into_people(server: Server, analyzer) -> None:  # type: ignore[no-untyped-def]
    paths, people, vectors = shared_faces(analyzer)
    gallery = "people"
    with server.client() as client:
        client.delete(f"/gallery/{gallery}")
        # an empty gallery has no clusters; one face is one cluster
        r = client.post(f"/gallery/{gallery}/faces", json={"embeddings": [vectors[0].tolist()]})
        assert r.status_code == 200 and r.json()["subject"] is None, r.text
        first_id = r.json()["added"][0]["face_id"]
        r = client.post(f"/gallery/{gallery}/cluster", json={})
        assert r.status_code == 200, r.text
        assert [[f["face_id"] for f in c["faces"]] for c in r.json()["clusters"]] == [[first_id]]

        # half the faces, clustered; then the rest added and clustered incrementally
        half = len(vectors) // 2
        ids = {first_id: 0}
        for start, stop in ((1, half), (half, len(vectors))):
            r = client.post(f"/gallery/{gallery}/faces", json={"embeddings": vectors[start:stop].tolist()})
            assert r.status_code == 200, r.text
            ids.update({a["face_id"]: start + k for k, a in enumerate(r.json()["added"])})
            r = client.post(f"/gallery/{gallery}/cluster", json={})
            assert r.status_code == 200, r.text
            if start == 1:
                half_answer = r.json()
        answer = r.json()
        labels = np.empty(len(vectors), np.int64)
        for k, c in enumerate(answer["clusters"]):
            for f in c["faces"]:
                labels[ids[f["face_id"]]] = k
        p, rec, f_score = clustering.bcubed(labels, people)
        batch = client.post(f"/gallery/{gallery}/cluster", json={"recluster": True}).json()
        print(
            f"\n{len(vectors)} unsorted faces of {len(set(people))} identities: incremental "
            f"{len(answer['clusters'])} clusters, BCubed P {p:.4f} R {rec:.4f} F {f_score:.4f}; all at once "
            f"{len(batch['clusters'])} clusters; decision {answer['decision']}"
        )
        assert f_score >= 0.95 and abs(len(answer["clusters"]) - len(set(people))) <= 0.1 * len(set(people))
        # the second half joined the first half's clusters: their ids stayed
        first_clusters = {c["cluster_id"] for c in half_answer["clusters"]}
        assert first_clusters <= {c["cluster_id"] for c in answer["clusters"]}
        sizes = sorted(len(c["faces"]) for c in batch["clusters"])
        assert sizes == sorted(len(c["faces"]) for c in answer["clusters"])
        # unsorted faces are no subject: not listed, never a search match
        assert client.get(f"/gallery/{gallery}/subjects").json()["subjects"] == []
        r = client.post(f"/gallery/{gallery}/search", json={"embeddings": [vectors[0].tolist()]})
        assert r.json()["data"][0]["faces"][0]["matches"] == []

        # an enrolled subject is suggested for the cluster of the same person
        person = people[0]
        mine = [i for i, who in enumerate(people) if who == person]
        r = client.post(
            f"/gallery/{gallery}/subjects/alice/faces", json={"images": {"data": [b64(paths[mine[0]])]}}
        )
        assert r.status_code == 200, r.text
        alice_face = r.json()["added"][0]["face_id"]
        clusters = client.post(f"/gallery/{gallery}/cluster", json={}).json()["clusters"]
        [theirs] = [c for c in clusters if ids[c["faces"][0]["face_id"]] in mine]
        assert theirs["suggested_subject"] == "alice"
        assert {c["suggested_subject"] for c in clusters} == {"alice", None}

        # feedback: two of that person's faces are different people; one face is not alice
        a, b = [f["face_id"] for f in theirs["faces"]][:2]
        r = client.post(
            f"/gallery/{gallery}/feedback",
            json={"different": [[a, b]], "not": [{"face_id": a, "subject": "alice"}]},
        )
        assert r.status_code == 200, r.text
        clusters = client.post(f"/gallery/{gallery}/cluster", json={}).json()["clusters"]
        where = {f["face_id"]: k for k, c in enumerate(clusters) for f in c["faces"]}
        assert where[a] != where[b]
        assert clusters[where[a]]["suggested_subject"] is None
        # search never names alice for the picture of face `a` (alice's own enrolled face as probe)
        r = client.post(
            f"/gallery/{gallery}/feedback", json={"not": [{"face_id": alice_face, "subject": "alice"}]}
        )
        assert r.status_code == 200
        r = client.post(f"/gallery/{gallery}/search", json={"images": {"data": [b64(paths[mine[0]])]}})
        assert r.json()["data"][0]["faces"][0]["subject"] is None
        r = client.post(f"/gallery/{gallery}/search", json={"images": {"data": [b64(paths[mine[1]])]}})
        assert r.json()["data"][0]["faces"][0]["subject"] == "alice"

        # feedback naming unknown faces or subjects: 404, nothing stored
        r = client.post(f"/gallery/{gallery}/feedback", json={"different": [[a, 987654321]]})
        assert r.status_code == 404 and "987654321" in r.text
        r = client.post(f"/gallery/{gallery}/feedback", json={"not": [{"face_id": a, "subject": "bob"}]})
        assert r.status_code == 404 and "bob" in r.text
        r = client.post("/gallery/no-such-gallery/cluster", json={})
        assert r.status_code == 404
        assert client.delete(f"/gallery/{gallery}").status_code == 200
