"""Every setting of the service, typed, with its default stated once.

Each field is read from one environment variable, `FACEREST_<FIELD>` (e.g. `FACEREST_PORT`),
or from a `.env` file in the working directory. Nothing else in the package reads the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: FACEREST_MODEL_PACK (issue 32): the catalogue names each pack chooses for the model settings
#: left unset. The models still come from the catalogue and go through the same preparation,
#: scheduler and runtimes; "commercial" holds only weights whose licence allows commercial use.
MODEL_PACKS: dict[str, dict[str, str]] = {
    "default": {"det_name": "scrfd_500m_bnkps", "rec_name": "w600k_mbf", "ga_name": "age_gender_dlib"},
    "commercial": {
        "det_name": "yunet_2023mar_int8bq",
        "rec_name": "sface_2021dec_int8bq",
        "ga_name": "age_gender_dlib",
    },
}

#: the containers a video file may be in, as FFmpeg names its demuxers (issue 28)
DEFAULT_VIDEO_FORMATS = ("mov", "mp4", "matroska", "webm", "avi", "mpegts", "flv", "asf", "ogg")


class AccessKey(BaseModel):
    """One hashed key given in the environment (FACEREST_ACCESS_KEYS); the key file holds the same."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:@\-]+$")
    role: Literal["viewer", "operator", "admin"]
    galleries: list[str] | None = None  # None: every gallery
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


def _default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FACEREST_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- server ---
    host: str = Field("0.0.0.0", description="Address the HTTP server binds to.")
    port: int = Field(18081, description="HTTP port.")
    workers: int = Field(1, ge=1, description="Server processes (each loads its own models).")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_json: bool = Field(False, description="Write logs as JSON lines (one object per line).")
    root_path: str = Field("", description="Path prefix when served behind a proxy.")

    # --- models ---
    models_dir: Path = Field(Path("models"), description="Folder holding model files.")
    det_name: str = Field("scrfd_500m_bnkps", description="Face detector (catalogue name).")
    rec_name: str = Field("w600k_mbf", description="Face recognizer (catalogue name); empty: none.")
    ga_name: str = Field("age_gender_dlib", description="Gender/age model used by `extract_ga`; empty: none.")
    mask_name: str = Field("", description="Mask classifier used by `detect_masks`; empty: none.")
    landmarks_name: str = Field(
        "", description="Dense landmark model (e.g. 2d106det) for 106-point landmarks; empty: none."
    )
    auto_download: bool = Field(
        False, description="Download configured models that are missing at start (needs a network)."
    )

    # --- model packs and licences (issue 32) ---
    model_pack: Literal["default", "commercial"] = Field(
        "default",
        description="Which models the model settings left unset name: default (InsightFace's SCRFD-500M "
        "and w600k_mbf, non-commercial research only) or commercial (YuNet and SFace, MIT and Apache-2.0; "
        "docs/models.md). FACEREST_DET_NAME and the others still override it.",
    )
    commercial_use: bool = Field(
        False,
        description="The service is used commercially: refuse to start while any model in use has a licence "
        "that does not allow it (or an unknown one).",
    )

    # --- inference ---
    runtime: Literal["auto", "onnx", "openvino", "trt", "triton", "torch"] = Field(
        "auto",
        description="Execution backend for the models. auto: on the CPU, per model, ONNX Runtime or "
        "OpenVINO (when installed), whichever runs it faster here, measured once and remembered in "
        "the models folder. torch: PyTorch (facerest[torch]), on CUDA when present, else the CPU.",
    )
    rec_precision: Literal["f32", "bf16"] = Field(
        "f32",
        description="Recognizer arithmetic. bf16: on CPUs with native bf16 (AVX512_BF16, AMX) the "
        "recognizer runs on OpenVINO in bf16, 1.5x faster, embeddings within cosine 0.9995 of f32; "
        "elsewhere f32.",
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference (comma separated).",
    )
    threads: int = Field(
        default_factory=_default_threads,
        ge=1,
        description="Intra-op threads of the inference session (default: the cores available).",
    )
    blas_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="Threads the server's matrix products (exact gallery scans, verification) may use "
        "each: 1 leaves the other cores to the inference thread and other requests (a search of 1,000 "
        "embeddings on both cores halved everyone else's throughput).",
    )
    det_thresh: float = Field(0.6, ge=0.0, le=1.0, description="Default detection score threshold.")
    nms_thresh: float = Field(0.4, gt=0.0, le=1.0, description="IoU above which detections merge.")
    max_size: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [640, 640],
        description="Largest detector input, width,height; images are scaled to fit, keeping aspect.",
    )
    det_batch_size: int = Field(
        1,
        ge=1,
        description="Most images in one detector call (1: batches are slower per image on CPU, issue 3).",
    )
    rec_batch_size: int = Field(
        8, ge=1, description="Most faces in one recognizer call (8: fastest per face on CPU, issue 3)."
    )
    batch_wait_ms: float = Field(
        2.0, ge=0.0, description="How long a batch may wait for more work from other requests."
    )
    force_fp16: bool = Field(
        False, description="FP16 on the GPU: TensorRT engines (TensorRT 10), the torch runtime on CUDA."
    )
    require_gpu: bool | None = Field(
        None,
        description="Refuse to start unless the GPU runtime asked for (TensorRT, ONNX Runtime's "
        "CUDA/TensorRT providers, torch on CUDA) is the one running; unset: on when FACEREST_GPUS is set.",
    )
    gpu_mem_limit_mb: int = Field(
        0,
        ge=0,
        description="Cap of ONNX Runtime's CUDA memory arena per worker, in MiB (0: none); with several "
        "workers per GPU, about the GPU's memory divided by the workers.",
    )

    # --- request defaults and limits ---
    max_images_per_request: int = Field(64, ge=1, description="Images accepted in one request.")
    max_image_bytes: int = Field(20_000_000, ge=1, description="Largest encoded image, in bytes.")
    max_image_pixels: int = Field(50_000_000, ge=1, description="Largest decoded image, in pixels.")
    max_body_bytes: int = Field(64_000_000, ge=1, description="Largest request body, in bytes.")
    max_faces_per_image: int = Field(
        512, ge=1, description="Most faces returned for one image (largest kept)."
    )
    queue_size: int = Field(
        64, ge=1, description="Requests admitted to inference at once; more are answered 503."
    )
    request_timeout_s: float = Field(60.0, gt=0, description="Longest a request may take.")

    # --- URL fetching ---
    url_timeout_s: float = Field(10.0, gt=0, description="Time limit of one image download.")
    url_max_redirects: int = Field(3, ge=0, description="Redirects followed per image download.")
    url_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts or networks (CIDR) that URLs may reach although private or loopback.",
    )
    local_files_root: Path | None = Field(
        None, description="Folder from which `images.urls` may read local paths; unset: never."
    )

    # --- access ---
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted X-API-Key values, each an admin of every gallery; with no key here, in "
        "FACEREST_ACCESS_KEYS or in the key file, no key is needed.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS; empty: none."
    )

    # --- MXNet checkpoints (issue 10) ---
    mxnet_env: Path = Field(
        Path(".venv-mxnet"),
        description="Virtualenv with MXNet 1.9.1 that converts MXNet checkpoints to ONNX (`make mxnet-env`).",
    )

    # --- deployment: runtimes, GPUs, Triton, Ray (issue 8) ---
    provider_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Per-provider ONNX Runtime options, JSON: {"CUDAExecutionProvider": {"device_id": 0}}.',
    )
    gpus: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="GPUs to serve on (comma separated ids); FACEREST_WORKERS processes run on each.",
    )
    trt_workspace_mb: int = Field(2048, ge=64, description="TensorRT builder workspace, in MiB.")
    trt_engines_dir: Path | None = Field(
        None, description="Where TensorRT engines are cached (default: <models_dir>/trt_engines)."
    )
    triton_uri: str = Field(
        "grpc://127.0.0.1:8001",
        description="Triton server for FACEREST_RUNTIME=triton: grpc://host:port or http://host:port.",
    )
    triton_timeout_s: float = Field(30.0, gt=0, description="Time limit of one Triton inference call.")
    triton_instances: int = Field(1, ge=1, description="Model instances per device in exported configs.")
    triton_queue_delay_us: int = Field(
        2000, ge=0, description="How long Triton's dynamic batcher waits to fill a batch (exported configs)."
    )
    ray_address: str = Field(
        "", description="Ray cluster to join for `facerest ray serve` (empty: a local one)."
    )
    ray_replicas: int = Field(2, ge=1, description="Ray Serve replicas at start.")
    ray_max_replicas: int = Field(
        0, ge=0, description="Ray Serve autoscaling upper bound (0: a fixed FACEREST_RAY_REPLICAS)."
    )
    ray_target_requests: float = Field(
        4.0, gt=0, description="Ongoing requests per replica the Ray autoscaler aims for."
    )
    ray_replica_cpus: float = Field(1.0, gt=0, description="CPUs reserved per Ray replica.")
    ray_replica_gpus: float = Field(0.0, ge=0, description="GPUs reserved per Ray replica (fractions share).")

    # --- gallery (issue 6) ---
    data_dir: Path = Field(Path("data"), description="Folder for data the service keeps (SQLite gallery).")
    gallery_url: str = Field(
        "",
        description="Gallery storage: sqlite:///PATH or postgresql://... (pgvector, for several replicas); "
        "empty: sqlite in data_dir/gallery.db.",
    )
    # issue 16: approximate search at scale
    gallery_index_min_faces: int = Field(
        5_000,
        ge=0,
        description="Galleries of at least this many faces are searched through sign codes of every "
        "face held in memory (SQLite's process, each PostgreSQL replica), candidates re-ranked exactly; "
        "smaller ones by an exact scan (faster there). 0: never index (no HNSW index on PostgreSQL either).",
    )
    gallery_index_bits: Literal[128, 256, 512] = Field(
        256,
        description="Bits of each face's sign code in the index of large galleries (32 bytes at 256; "
        "the exact float32 vectors are what candidates are re-ranked by). 128: half the scan, lower recall.",
    )
    gallery_index_scan_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="Threads that scan a large gallery's codes for one query, each a part of them "
        "(a million faces' codes are 32 MB: one core's memory bandwidth is the limit).",
    )
    gallery_pg_hnsw: bool = Field(
        True,
        description="PostgreSQL: build pgvector's HNSW index (CONCURRENTLY, in the background). Large "
        "galleries are searched through each replica's sign codes once loaded; the HNSW index answers "
        "meanwhile and below FACEREST_GALLERY_INDEX_MIN_FACES. A million faces take ~35 min to index.",
    )
    gallery_pg_codes: bool = Field(
        True,
        description="PostgreSQL: each replica holds the sign codes of large galleries (32 MB per "
        "million faces, loaded at start) and searches them; false: pgvector's HNSW index alone.",
    )
    gallery_index_build_memory_mb: int = Field(
        1024,
        ge=64,
        description="PostgreSQL memory for building the HNSW index (maintenance_work_mem): the build is "
        "many times faster when the graph fits (1M 512-d faces: about 4096).",
    )
    gallery_recall: float = Field(
        0.99,
        ge=0.5,
        le=0.999,
        description="Share of exact rank-1 answers the index aims for (both backends); sets how many "
        "candidates the codes propose for the exact re-rank and pgvector's hnsw.ef_search. Requests can "
        "ask for `exact: true`.",
    )

    # --- hardening (issue 4) ---
    max_request_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Most decoded pixels in one request, all images together (bounds memory per request); "
        "images past it fail alone.",
    )
    url_retries: int = Field(
        1, ge=0, le=5, description="Extra tries of a URL download after a connection error or 502/503/504."
    )

    # --- HTTP limits (issue 14), enforced per connection by facerest/api/http_protocol.py ---
    max_header_bytes: int = Field(
        16_384,
        ge=1024,
        le=1_048_576,
        description="Largest request head (request line and headers), in bytes; larger: 431, "
        "connection closed, before the API key is checked.",
    )
    max_request_line_bytes: int = Field(
        8_192,
        ge=256,
        le=1_048_576,
        description="Longest request target (path and query), in bytes; longer: 414.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Time a client has to send a whole request head, from connecting (or from its "
        "first byte after a keep-alive pause); then 408 and the connection closes.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Longest pause of a client within a request body; then the connection closes."
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="How long an idle keep-alive connection stays open after a response."
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Open connections per server process; a new one past it is answered 503 and closed.",
    )

    # --- cost bounds per request (issue 14) ---
    max_jpeg_scans: int = Field(
        100,
        ge=1,
        description="Most scans in one JPEG (progressive files hold 2-20); a decoder passes over the "
        "whole image once per scan, so more fail alone: image_too_large.",
    )
    max_detector_pixels: int = Field(
        4_194_304,
        ge=4096,
        description="Largest detector canvas, in pixels (default 2048x2048): an image that max_size "
        "(the server's or the request's) would scale past it is scaled to fit it.",
    )
    max_faces_per_request: int = Field(
        1024,
        ge=1,
        description="Most faces of one request, all images together (the largest of each image "
        "kept, in request order); bounds the recognizer's work per request.",
    )
    max_embeddings_per_body: int = Field(
        1000, ge=1, description="Most embeddings in one gallery or /verify body; more: 413."
    )
    max_search_comparisons: int = Field(
        10_000_000,
        ge=1,
        description="Most query x gallery-face comparisons in one search; more: 413.",
    )

    # --- throughput (issue 3) ---
    max_upscale: float = Field(
        0.0,
        ge=0.0,
        description="Largest enlargement of small images for the detector; 0: fit max_size as the "
        "reference pipeline does. 1: detect small images at their own size (fewer FLOPs; embeddings "
        "then differ slightly from the reference pipeline's).",
    )

    detect_scale: Literal["adaptive", "reference", "native"] = Field(
        "adaptive",
        description="Detector scale policy (facerest/pipeline/scale.py). adaptive: detect at the image's "
        "own size, and again at the reference scale only when that finds nothing or faces near the "
        "detector's smallest reliable size. reference: fit max_size as InsightFace does (embeddings equal "
        "its own). native: never enlarge.",
    )

    detect_refine: bool = Field(
        False,
        description="Under the adaptive or native scale, re-detect each face found below the reference "
        "scale on a small crop at the reference scale, for landmarks (hence embeddings) nearer the "
        "reference's; costs a detector run per face.",
    )

    # --- large faces (issue 9) ---
    closeup_pass: bool = Field(
        True,
        description="When the first detector pass finds nothing or a big face cut by the edge, "
        "look again with the image small and centred in a padded canvas (close-ups, tight crops).",
    )
    align_antialias: bool = Field(
        False,
        description="Average pixels when shrinking a big face to the recognizer's 112x112 crop, so a "
        "face embeds the same in a 4000 px photo and in a small crop of it. Off: the reference "
        "pipeline's plain warp (embeddings equal to InsightFace's; large faces alias).",
    )

    # --- video (issue 17) ---
    video_max_bytes: int = Field(
        64_000_000,
        ge=1,
        description="Largest video file uploaded or downloaded, in bytes (uploads are also bounded by "
        "FACEREST_MAX_BODY_BYTES).",
    )
    video_max_duration_s: float = Field(600.0, gt=0, description="Longest video file accepted, in seconds.")
    video_max_pixels: int = Field(
        3840 * 2160, ge=1, description="Largest video frame accepted (width x height), in pixels."
    )
    video_max_frames: int = Field(
        3000, ge=1, description="Most frames sampled from one video file (all of them go to the models)."
    )
    video_default_fps: float = Field(
        3.0, ge=0.0, description="Frames per second sampled when a request does not say; 0: every frame."
    )
    video_timeout_s: float = Field(600.0, gt=0, description="Longest a video file request may take.")
    video_track_gap_s: float = Field(
        1.0, gt=0, description="A face track ends when its face has not been seen for this long."
    )
    video_frames_in_flight: int = Field(
        1,
        ge=1,
        le=16,
        description="Frames of one video inside the models at once. 1: an image request waits for at "
        "most one video frame per model (p50 190 ms vs 350 ms at 2 on 2 cores); more: a little more "
        "video throughput.",
    )
    video_decode_threads: int = Field(
        1,
        ge=0,
        le=64,
        description="Threads FFmpeg decodes one video with; 0: its own choice (one per core), which "
        "takes cores from the models.",
    )
    video_streams_enabled: bool = Field(
        False, description="Accept live-stream jobs (POST /video/jobs: HTTP MJPEG/MPEG-TS, RTSP)."
    )
    video_stream_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts or networks (CIDR) live streams may come from although private or loopback "
        "(cameras on the LAN); others follow the URL rules.",
    )
    video_max_jobs: int = Field(4, ge=1, description="Live-stream jobs running at once on this server.")
    video_stream_retries: int = Field(
        5,
        ge=0,
        description="Reconnection tries after a stream drops, with doubling back-off, before a job fails.",
    )
    video_stream_backoff_s: float = Field(
        0.5,
        gt=0,
        description="First wait before reconnecting a dropped stream (doubles per try, at most 30 s).",
    )
    video_job_events: int = Field(
        1000, ge=1, description="Track events a job keeps for its listeners (the oldest go first)."
    )

    # --- compatibility: CompreFace, DeepStack / CodeProject.AI (issue 31); docs/moving.md ---
    compreface_enabled: bool = Field(
        False,
        description="Answer CompreFace's REST API at its own paths (/api/v1/recognition/..., "
        "/api/v1/detection/detect, /api/v1/verification/...), for CompreFace's SDKs and Double-Take.",
    )
    deepstack_enabled: bool = Field(
        False,
        description="Answer DeepStack's face API at its own paths (/v1/vision/face, .../register, "
        ".../recognize, .../list, .../delete, .../match), as DeepStack and CodeProject.AI do.",
    )
    compat_gallery: str = Field(
        "default",
        description="The gallery of the CompreFace and DeepStack APIs for a key of every gallery (an "
        "admin's, a FACEREST_API_KEYS key, every request of a server without keys); a key scoped to one "
        "gallery (`facerest keys create NAME --role operator --gallery G`) reaches that one: one "
        "CompreFace service per key.",
    )

    # --- publishing: MQTT (issue 31) ---
    mqtt_url: str | None = Field(
        None,
        description="Broker that recognitions are published to: mqtt://host:1883 or mqtts://host:8883 (TLS), "
        "user:password@ allowed; unset: no MQTT.",
    )
    mqtt_topic_prefix: str = Field(
        "facerest", min_length=1, description="First level of every topic facerest publishes."
    )
    mqtt_qos: int = Field(0, ge=0, le=2, description="MQTT quality of service of the published messages.")
    mqtt_retain: bool = Field(
        False, description="Publish recognitions retained (the broker keeps the last one per topic)."
    )
    mqtt_username: str | None = Field(None, description="Broker user name (overrides the URL's).")
    mqtt_password: str | None = Field(None, description="Broker password (overrides the URL's).")
    mqtt_tls_ca_file: Path | None = Field(
        None,
        description="CA certificates the broker's certificate is checked against (default: the system's).",
    )
    mqtt_tls_cert_file: Path | None = Field(
        None, description="Client certificate for brokers that ask for one."
    )
    mqtt_tls_key_file: Path | None = Field(None, description="Key of FACEREST_MQTT_TLS_CERT_FILE.")
    mqtt_client_id: str = Field(
        "", description="MQTT client id; empty: facerest-<host>-<process id> (each worker its own)."
    )
    mqtt_queue: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Events waiting for the broker; further ones are dropped and counted "
        '(facerest_events_dropped{listener="mqtt"}, facerest_mqtt_dropped), so a slow or absent broker '
        "never slows a request.",
    )
    mqtt_homeassistant: bool = Field(
        False,
        description="Announce one sensor per gallery (its last recognition) through Home Assistant's MQTT "
        "discovery.",
    )
    mqtt_homeassistant_prefix: str = Field(
        "homeassistant", min_length=1, description="Home Assistant's discovery prefix."
    )

    # --- decisions in error rates, quality, clustering (issue 20) ---
    calibration_file: Path | None = Field(
        None,
        description="Calibration of the recognizer (`facerest calibrate`) that overrides the one the "
        "catalogue ships for it.",
    )
    verify_fmr: float = Field(
        1e-3,
        gt=0.0,
        lt=1.0,
        description="Default decision point of /verify: the false-match rate per comparison.",
    )
    search_fpir: float = Field(
        1e-2,
        gt=0.0,
        lt=1.0,
        description="Default decision point of gallery search and clustering: the chance that a stranger "
        "is matched to anyone (FPIR); the per-comparison FMR follows the gallery's number of subjects "
        "(clustering: of faces).",
    )

    enrol_min_sharpness: float = Field(
        40.0,
        ge=0.0,
        description="Enrolment refuses faces whose aligned crop is less sharp than this (variance of "
        "its Laplacian; the shared test photos: 183 and up, a 1-pixel blur of a 55-pixel face: 38); "
        "0: no check. `force` overrides every floor.",
    )
    enrol_min_face_size: float = Field(
        24.0, ge=0.0, description="Enrolment refuses faces narrower than this many pixels; 0: no check."
    )
    enrol_max_yaw: float = Field(
        60.0,
        ge=0.0,
        le=90.0,
        description="Enrolment refuses faces turned further than this (degrees, from the 5 landmarks).",
    )
    enrol_max_cut: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        description="Enrolment refuses faces with a larger share outside the image (a face cut at a quarter "
        "of its width: about 0.2).",
    )
    enrol_min_quality: float = Field(
        0.0, ge=0.0, le=1.0, description="Enrolment refuses faces whose quality score is lower; 0: no check."
    )

    # --- access: keys with roles and galleries, the audit trail, retention (issue 30) ---
    access_keys_file: Path | None = Field(
        None,
        description="Hashed keys with roles and galleries, written by `facerest keys` and read again "
        "whenever it changes (a revoked key is refused at once by every worker); unset: "
        "data_dir/keys.json. Once the file exists (even empty) every request needs a key.",
    )
    access_keys: list[AccessKey] = Field(
        default_factory=list,
        description="Hashed keys given in the environment: a JSON list of objects {name, role, galleries, "
        "sha256} (`facerest keys create --env` prints one).",
    )
    access_audit: bool = Field(
        True,
        description="Write the audit trail: one JSON line per gallery read or write and per refused "
        "request (who, what, which gallery, subjects as pseudonyms, face ids, outcome).",
    )
    access_audit_dir: Path | None = Field(
        None, description="Folder of the audit trail (one file per UTC day); unset: data_dir/audit."
    )
    access_audit_keep_days: int = Field(
        365, ge=0, description="Days an audit file is kept before the server erases it; 0: forever."
    )
    retention_unsorted_days: float = Field(
        0.0,
        ge=0.0,
        description="Days a face enrolled without a subject is kept before the server erases it; 0: forever.",
    )
    retention_interval_s: float = Field(
        3600.0,
        gt=0,
        description="How often the server erases what the retention settings have expired (unsorted faces, "
        "review items past FACEREST_PEOPLE_REVIEW_MAX_AGE_S, audit files).",
    )

    # --- people: face crops, the review queue, the console (issue 29) ---
    gallery_keep_crops: bool = Field(
        True,
        description="Keep a JPEG crop of every face enrolled from an image (and of every review-queue face), "
        "in the gallery store beside the face, deleted with it: what the console shows, and what another "
        "recognizer can embed again. About 18 KB a face on disk at the default size; false: keep none.",
    )
    gallery_crop_size: int = Field(
        256,
        ge=64,
        le=1024,
        description="Longest side of a kept crop, pixels (a square twice the face's box, scaled to fit).",
    )
    people_review: bool = Field(
        True,
        description="Keep the faces that gallery searches, video requests and stream jobs could not name "
        "(unknown, or named within FACEREST_PEOPLE_REVIEW_MARGIN of the decision) in a review queue per "
        "gallery, for a person to assign, name or dismiss.",
    )
    people_review_max_items: int = Field(
        1000, ge=1, le=100_000, description="Review-queue items a gallery keeps; the oldest go first."
    )
    people_review_max_age_s: float = Field(
        604_800.0,
        gt=0,
        description="Seconds a review-queue item is kept (default a week): older ones are never listed and "
        "are erased by the server (every FACEREST_RETENTION_INTERVAL_S, and as new items arrive).",
    )
    people_review_margin: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="A face named with a similarity less than this above the decision threshold is queued "
        "for review too (0: only unknown faces).",
    )

    # --- hostile input, round three (issue 28): every cost of video files, streams, event
    # listeners, marked faces and clustering bounded and checked before the work starts ---
    video_formats: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_VIDEO_FORMATS),
        description="Containers a video file may be in (FFmpeg demuxer names, comma separated); others "
        "are refused before FFmpeg reads their header (an SDP file opens UDP sockets, a playlist fetches "
        "URLs). Live HTTP streams may also be MJPEG (multipart or raw) or raw H.264/HEVC.",
    )
    video_max_fps: float = Field(
        240.0,
        gt=0,
        description="Most frames decoded per second of video (of wall clock for live streams), from the "
        "headers and then as frames come; more: 413 (a 0.34 s MP4 of 10,200 frames).",
    )
    video_max_pixels_per_byte: float = Field(
        20_000.0,
        gt=0,
        description="Most pixels decoded per byte of a video file (all frames together; camera footage "
        "decodes 100-2,000); more: 413. Bounds the decode work a small file can ask for.",
    )
    video_max_frames_per_sample: int = Field(
        600,
        ge=1,
        description="Most frames decoded between two sampled frames (a 60 fps video sampled at 0.1 fps "
        "decodes 600 per sample); more: 413, ask for a higher fps or key frames (which decode no other).",
    )
    video_max_frame_bytes: int = Field(
        16_000_000,
        ge=65_536,
        description="Most bytes a live stream may send between two decoded frames (a 4K MJPEG frame is "
        "2-6 MB); more ends the connection (a camera sending one endless frame grew memory ~100 MB/s).",
    )
    video_max_listeners: int = Field(
        64,
        ge=1,
        description="Event-stream listeners (GET /video/jobs/{id}/events) open at once on this server "
        "process; more: 429. A listener holds no thread.",
    )
    video_finished_jobs: int = Field(
        16,
        ge=0,
        description="Stopped and failed stream jobs kept for GET /video/jobs (their last events "
        "included); the oldest are forgotten past it.",
    )
    max_box_marks_per_request: int = Field(
        64,
        ge=1,
        description="Most faces marked by a box alone in one /extract request (each may cost a detector "
        "pass around its box); more: 413. All marks together count against FACEREST_MAX_FACES_PER_REQUEST.",
    )
    cluster_max_faces: int = Field(
        5_000,
        ge=2,
        description="Most unsorted faces one clustering groups (its memory grows with their square: "
        "5,000 take ~0.5 GB for a moment); more: 413, checked before the faces are read.",
    )

    # --- re-embedding: galleries that move to another recognizer (issue 32) ---
    reembed_batch_size: int = Field(
        32,
        ge=1,
        le=1024,
        description="Faces a gallery's re-embedding embeds again and writes per step, in one transaction: "
        "the most work a crash costs it.",
    )
    reembed_pause_s: float = Field(
        0.0,
        ge=0.0,
        le=60.0,
        description="Rest after each re-embedding step: leaves the cores to other work on the machine (the "
        "server's own requests already go ahead of its batches).",
    )
    reembed_lease_s: float = Field(
        60.0,
        ge=1.0,
        description="A re-embedding whose runner has written nothing for this long is taken up by the next "
        "POST .../reembed, `facerest gallery reembed` or server start (its runner crashed).",
    )

    @field_validator(
        "providers",
        "url_allowlist",
        "api_keys",
        "cors_origins",
        "video_stream_allowlist",
        "video_formats",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("gpus", mode="before")
    @classmethod
    def _split_gpus(cls, value: object) -> object:
        if isinstance(value, str):
            return [int(item) for item in value.split(",") if item.strip()]
        if isinstance(value, int):
            return [value]
        return value

    @field_validator("max_size", mode="before")
    @classmethod
    def _parse_size(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [int(p) for p in value.replace("x", ",").split(",") if p.strip()]
            return parts * 2 if len(parts) == 1 else parts
        if isinstance(value, int):
            return [value, value]
        return value

    @field_validator("max_size")
    @classmethod
    def _check_size(cls, value: list[int]) -> list[int]:
        if len(value) != 2 or min(value) < 32:
            raise ValueError("max_size must be two numbers (width,height), each at least 32")
        return value

    @property
    def gpu_required(self) -> bool:
        """FACEREST_REQUIRE_GPU, defaulting to on when GPUs are named."""
        return bool(self.gpus) if self.require_gpu is None else self.require_gpu

    @model_validator(mode="after")
    def _apply_model_pack(self) -> Settings:
        for name, value in MODEL_PACKS[self.model_pack].items():
            if name not in self.model_fields_set:
                setattr(self, name, value)
        return self

    @model_validator(mode="after")
    def _check_reembed(self) -> Settings:
        if self.reembed_pause_s >= self.reembed_lease_s / 2:
            raise ValueError(
                "FACEREST_REEMBED_PAUSE_S must be under half of FACEREST_REEMBED_LEASE_S: a runner resting "
                "that long would look crashed"
            )
        return self

    @model_validator(mode="after")
    def _check_precision(self) -> Settings:
        if self.rec_precision == "bf16" and self.runtime not in ("auto", "openvino"):
            raise ValueError("FACEREST_REC_PRECISION=bf16 needs FACEREST_RUNTIME=openvino or auto")
        return self


def settings_table() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting, for docs and --help."""
    rows = []
    for name, field in Settings.model_fields.items():
        factory = field.default_factory
        default = factory() if factory is not None else field.default  # type: ignore[call-arg]
        if isinstance(default, list):
            default = ",".join(str(v) for v in default)
        if name == "threads":
            default = "cores available"
        rows.append(
            (f"FACEREST_{name.upper()}", "" if default is None else str(default), field.description or "")
        )
    return rows
