"""Hostile video files for the tests and the load test (issue 28): a giant frame behind a small
first one, dense frames (thousands per second of video), SDP files that name an RTP port.
Small to make and to send; each asks FFmpeg for far more work or memory than its size."""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def flat_jpeg(width: int, height: int, components: int = 1, bits: int = 8) -> bytes:
    """A valid JPEG of one flat colour in which every 8x8 block costs 2 bits (a 1-bit DC code for
    "unchanged" and a 1-bit AC code for "end of block"): 16000x16000 grey is 1 MB. `bits` 12 is
    the extended process (FFmpeg decodes it to 16-bit samples: 512 MB for that grey frame)."""
    sof = 0xC0 if bits == 8 else 0xC1
    blocks = ((width + 7) // 8) * ((height + 7) // 8) * components
    comps = b"".join(bytes([i + 1, 0x11, 0]) for i in range(components))
    scan_header = bytes([components]) + b"".join(bytes([i + 1, 0x00]) for i in range(components))
    return b"".join(
        [
            b"\xff\xd8",
            _segment(0xDB, b"\x00" + b"\x01" * 64),  # quantisation table 0, all ones
            _segment(sof, struct.pack(">BHHB", bits, height, width, components) + comps),
            _segment(0xC4, b"\x00\x01" + b"\x00" * 15 + b"\x00"),  # DC table: one 1-bit code
            _segment(0xC4, b"\x10\x01" + b"\x00" * 15 + b"\x00"),  # AC table: one 1-bit code (EOB)
            _segment(0xDA, scan_header + b"\x00\x3f\x00"),
            bytes((blocks * 2 + 7) // 8),  # all blocks: DC "0", EOB "0"
            b"\xff\xd9",
        ]
    )


def mjpeg_video(frames: list[bytes], fmt: str = "matroska", size: tuple[int, int] = (160, 96)) -> bytes:
    """JPEG frames muxed as they are (no re-encoding) into a container whose header says `size`."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as out:
        stream = out.add_stream("mjpeg", rate=10)
        stream.width, stream.height = size
        stream.pix_fmt = "yuvj420p"
        for n, frame in enumerate(frames):
            packet = av.Packet(frame)
            packet.stream = stream
            packet.pts = packet.dts = n
            packet.time_base = Fraction(1, 10)
            out.mux(packet)
    return buffer.getvalue()


def giant_frame_video(side: int = 16000, fmt: str = "matroska") -> bytes:
    """Issue 28's defect 1: a small first frame, then a `side` x `side` 12-bit grey JPEG (1 MB
    here; 512 MB once decoded), in a container whose header says 160x96."""
    small = flat_jpeg(160, 96)
    return mjpeg_video([small, flat_jpeg(side, side, bits=12), small], fmt)


def dense_video(width: int, height: int, frames: int, rate: int = 30000, fmt: str = "mp4") -> bytes:
    """Issue 28's defect 2: `frames` H.264 frames at `rate` per second of video: one key frame,
    then the same all-skip P frame muxed again and again (about 28 bytes each in MP4, and each a
    full decode: 10,200 4K frames cost a core 34-57 s)."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, rate)
    encoder.framerate = Fraction(rate, 1)
    encoder.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "x264-params": "keyint=100000:min-keyint=100000:scenecut=0:bframes=0",
    }
    image = np.full((height, width, 3), 90, np.uint8)
    packets: list[bytes] = []
    for pts in range(2):
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = pts
        packets += [bytes(p) for p in encoder.encode(frame)]
    packets += [bytes(p) for p in encoder.encode(None)]
    key, skip = packets[0], packets[1]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.extradata = encoder.extradata
        for n in range(frames):
            packet = av.Packet(key if n == 0 else skip)
            packet.stream = stream
            packet.pts = packet.dts = n
            packet.time_base = Fraction(1, rate)
            packet.is_keyframe = n == 0
            out.mux(packet)
    return buffer.getvalue()


def sdp_file(port: int, host: str = "127.0.0.1") -> bytes:
    """Issue 28's defect 3: a session description naming an H.264 RTP stream on a UDP port. As an
    upload, FFmpeg's SDP demuxer (autodetected) binds the port and decodes what anyone sends."""
    return (
        "v=0\r\n"
        f"o=- 0 0 IN IP4 {host}\r\n"
        "s=facerest test\r\n"
        f"c=IN IP4 {host}\r\n"
        "t=0 0\r\n"
        f"m=video {port} RTP/AVP 96\r\n"
        "a=rtpmap:96 H264/90000\r\n"
        "a=fmtp:96 packetization-mode=1\r\n"
    ).encode()
