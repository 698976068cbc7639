"""The latest-frame slot (one camera of batching.CameraSlots), the frame accounting and the diagnostics
status, without ROS."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from mcn_ros.ros.batching import CameraSlots
from mcn_ros.ros.diagnostics import Knobs, assess, speed_hint, status_values, worst
from mcn_ros.ros.frames import (
    SEQUENCE_UNSUPPORTED,
    Frame,
    FrameCounts,
    FrameStats,
    SequenceGaps,
    publication_sequence,
)

GID_A = {"implementation_identifier": "rmw_fastrtps_cpp", "data": b"A" * 16}
GID_B = {"implementation_identifier": "rmw_fastrtps_cpp", "data": b"B" * 16}


def info(sequence: int | None, gid: dict[str, object] | None = GID_A) -> dict[str, object]:
    """An rclpy MessageInfo as Kilted (rclpy 9) passes it; ``gid=None`` is what Jazzy's lacks."""
    out: dict[str, object] = {
        "source_timestamp": 1,
        "received_timestamp": 2,
        "publication_sequence_number": sequence,
        "reception_sequence_number": None,
    }
    if gid is not None:
        out["publisher_gid"] = gid
    return out


def frame(n: int) -> Frame:
    return Frame(message=n, compressed=False, received=float(n))


# -- the slot ----------------------------------------------------------------------------------------------
def test_slot_keeps_the_newest_frame_and_counts_the_replaced() -> None:
    slot: CameraSlots[Frame] = CameraSlots([""])
    assert slot.take_batch(timeout=0.0).get("") is None
    for n in range(5):
        slot.put("", frame(n))
    assert slot.dropped("") == 4
    taken = slot.take_batch(timeout=0.0).get("")
    assert taken is not None and taken.message == 4
    assert slot.take_batch(timeout=0.0).get("") is None
    slot.put("", frame(5))  # the slot was empty: nothing replaced
    assert slot.dropped("") == 4


def test_slot_clear_counts_the_waiting_frame_as_dropped() -> None:
    slot: CameraSlots[Frame] = CameraSlots([""])
    slot.clear()
    assert slot.dropped("") == 0
    slot.put("", frame(1))
    slot.clear()
    assert slot.dropped("") == 1
    assert slot.take_batch(timeout=0.0).get("") is None
    slot.put("", frame(2))
    taken = slot.take_batch(timeout=0.0).get("")
    assert taken is not None
    slot.give_up("", taken)  # taken while deactivating, never processed
    assert slot.dropped("") == 2


def test_slot_wakes_a_waiting_taker() -> None:
    slot: CameraSlots[Frame] = CameraSlots([""])
    got: list[Frame | None] = []
    taker = threading.Thread(target=lambda: got.append(slot.take_batch(timeout=30.0).get("")))
    taker.start()
    slot.put("", frame(7))
    taker.join(timeout=30.0)
    assert not taker.is_alive() and got and got[0] is not None and got[0].message == 7


# -- MessageInfo -------------------------------------------------------------------------------------------
def test_publication_sequence_from_message_info() -> None:
    assert publication_sequence(info(12)) == (b"A" * 16, 12)
    assert publication_sequence(info(12, gid=None)) == (None, 12)  # Jazzy: no publisher_gid key
    assert publication_sequence({**info(12), "publisher_gid": None}) == (None, 12)
    assert publication_sequence(info(None)) == (b"A" * 16, None)  # Kilted: unsupported -> None
    assert publication_sequence(info(SEQUENCE_UNSUPPORTED, gid=None)) == (None, None)  # Jazzy: UINT64_MAX
    assert publication_sequence(info(0)) == (b"A" * 16, None)
    assert publication_sequence(None) == (None, None)
    assert publication_sequence({}) == (None, None)


# -- sequence gaps -----------------------------------------------------------------------------------------
def test_gaps_of_one_publisher() -> None:
    gaps = SequenceGaps()
    assert [gaps.seen("a", s) for s in (5, 6, 9, 10, 20)] == [0, 0, 2, 0, 9]
    assert gaps.lost == 11
    assert gaps.method() == "sequence numbers per publisher GID"


def test_gaps_are_counted_per_publisher() -> None:
    gaps = SequenceGaps()
    # Two publishers interleaved: 1..6 of a with 3 and 5 lost, 100..103 of b with 101 lost.
    arrivals = [("a", 1), ("b", 100), ("a", 2), ("b", 102), ("a", 4), ("b", 103), ("a", 6)]
    assert [gaps.seen(key, s) for key, s in arrivals] == [0, 0, 0, 1, 1, 0, 1]
    assert gaps.lost == 3


def test_streams_are_apart_even_without_gids() -> None:
    gaps = SequenceGaps()
    assert gaps.seen(None, 1, stream="raw") == 0
    assert gaps.seen(None, 1, stream="compressed") == 0
    assert gaps.seen(None, 3, stream="raw") == 1
    assert gaps.seen(None, 2, stream="compressed") == 0
    assert gaps.lost == 1
    assert "no publisher GID" in gaps.method()


def test_publishers_without_gids_are_told_apart_by_their_numbers() -> None:
    gaps = SequenceGaps()
    # Two publishers on one topic, no GIDs (rclpy 7): their numbers interleave, nothing is lost (each switch
    # counted ~1000 lost before).
    for n in range(5):
        assert gaps.seen(None, 1000 + n) == 0
        assert gaps.seen(None, 1 + n) == 0
    assert gaps.seen(None, 1007) == 2  # then each one's own gaps count
    assert gaps.seen(None, 7) == 1
    assert gaps.lost == 3 and "told apart by numbers" in gaps.method()
    # An idle second publisher changes nothing; a restart (back to 1) starts a sequence of its own.
    assert gaps.seen(None, 1) == 0 and gaps.seen(None, 3) == 1
    assert (gaps.lost, gaps.restarts) == (4, 2)
    # A restart leaves its old sequence behind; idle for idle_s it is forgotten, so the new numbers passing
    # the old last one count their losses again (100 frames at 10 Hz, a restart 10 s later, 99-101 lost).
    restarted = SequenceGaps(idle_s=5.0)
    for n in range(1, 101):
        restarted.seen(None, n, now=n / 10)
    for n in range(1, 99):
        restarted.seen(None, n, now=20 + n / 10)
    assert restarted.seen(None, 102, now=30.0) == 3 and restarted.lost == 3
    # Bounded: at most max_publishers sequences per topic are remembered.
    few = SequenceGaps(max_publishers=2)
    for start in (300, 200, 100):
        few.seen(None, start)
    assert few.seen(None, 301) == 100  # 300 was forgotten: 301 continues 200's sequence
    assert few.lost == 100


def test_a_restarted_publisher_starts_afresh() -> None:
    gaps = SequenceGaps()
    for s in (1, 2, 3, 40):
        gaps.seen("a", s)
    assert gaps.lost == 36
    assert gaps.seen("a", 1) == 0  # restarted: the numbers went back
    assert gaps.seen("a", 2) == 0
    assert gaps.seen("a", 2) == 0  # a repeated number is not a loss either
    assert gaps.seen("a", 5) == 2
    assert (gaps.lost, gaps.restarts) == (38, 2)


def test_frames_without_sequence_numbers_count_nothing() -> None:
    gaps = SequenceGaps()
    assert gaps.seen("a", None) == 0
    assert gaps.lost == 0 and gaps.method().startswith("not counted")


def test_forget_on_deactivate_does_not_count_frames_sent_meanwhile() -> None:
    gaps = SequenceGaps()
    gaps.seen("a", 1)
    gaps.forget()
    assert gaps.seen("a", 500) == 0
    assert gaps.seen("a", 502) == 1


def test_publishers_remembered_are_bounded() -> None:
    gaps = SequenceGaps(max_publishers=3)
    for key in "abcd":  # a is forgotten when d comes
        gaps.seen(key, 1)
    gaps.seen("b", 1)  # b heard again: now c is the least recent
    gaps.seen("e", 1)
    assert gaps.seen("a", 10) == 0  # forgotten: starts afresh
    assert gaps.seen("b", 10) == 8  # remembered


# -- counters and rates ------------------------------------------------------------------------------------
def test_received_plus_lost_is_what_was_sent() -> None:
    stats = FrameStats(window_s=10.0)
    slot: CameraSlots[Frame] = CameraSlots([""])
    sequences_a = [1, 2, 3, 7, 8, 12]  # 6 received, 6 lost: 12 sent
    sequences_b = [50, 51, 60]  # 3 received, 8 lost: 11 sent (from the first one heard)
    for n, s in enumerate(sequences_a):
        stats.arrived(float(n), info(s))
        slot.put("", frame(n))
    for n, s in enumerate(sequences_b):
        stats.arrived(float(n), info(s, GID_B))
        slot.put("", frame(n))
    taken = slot.take_batch(timeout=0.0).get("")
    assert taken is not None
    stats.finished(9.0, 0.1, None)
    counts = stats.counts(slot.dropped(""))
    assert (counts.received, counts.lost, counts.sent) == (9, 14, 23)
    assert (counts.dropped, counts.processed, counts.pending) == (8, 1, 0)


def test_pending_counts_frames_not_yet_accounted_for() -> None:
    counts = FrameCounts(received=10, lost=2, dropped=4, rejected=1, processed=3, idle=1)
    assert counts.pending == 1 and counts.sent == 12


def test_rates_count_lost_frames_in_the_input_rate() -> None:
    stats = FrameStats(window_s=2.0)
    stats.arrived(10.0, info(1))
    stats.arrived(10.5, info(5))  # 3 lost before it
    stats.finished(10.6, 0.1, 0.2, 0.04, 0.03)
    stats.reject(10.7)
    stats.idle(10.8)
    stats.arrived(7.0, info(6))  # outside the window
    summary = stats.summary(11.0)
    assert summary["input_rate_hz"] == pytest.approx(5 / 2.0)
    assert summary["received_rate_hz"] == pytest.approx(2 / 2.0)
    assert summary["processed_rate_hz"] == pytest.approx(0.5)
    assert summary["rejected_rate_hz"] == pytest.approx(0.5)
    assert summary["idle_rate_hz"] == pytest.approx(0.5)
    assert summary["latency_p50_ms"] == pytest.approx(100.0)
    assert summary["stamp_age_p95_ms"] == pytest.approx(200.0)
    assert summary["processing_p50_ms"] == pytest.approx(40.0)
    assert summary["inference_p50_ms"] == pytest.approx(30.0)


def test_rates_after_listening_began_divide_by_the_time_listened() -> None:
    stats = FrameStats(window_s=5.0)
    stats.start_listening(100.0)
    for n in range(20):  # 10 Hz for 2 s
        stats.arrived(100.1 + n / 10, info(n + 1))
    assert stats.summary(102.1)["received_rate_hz"] == pytest.approx(20 / 2.1)
    assert stats.summary(110.0)["received_rate_hz"] == pytest.approx(0.0)  # a whole window later
    stats.stop_listening()  # deactivated: the rates still divide by the time it listened, then decay
    assert stats.summary(102.1)["received_rate_hz"] == pytest.approx(20 / 2.1)
    stats.start_listening(103.0)  # activated again: the frames before it are not in the new rate
    stats.arrived(103.5, info(1))
    assert stats.summary(104.0)["received_rate_hz"] == pytest.approx(1.0)  # over at least a second


def test_memory_of_the_window_is_bounded() -> None:
    stats = FrameStats(window_s=1e9, max_samples=16)
    for n in range(1000):
        stats.arrived(float(n), info(n + 1))
        stats.finished(float(n), 0.01, None)
    assert stats.received == 1000 and stats.processed == 1000
    assert stats.summary(1000.0)["received_rate_hz"] == pytest.approx(16 / 1e9)


# -- the diagnostics status --------------------------------------------------------------------------------
OK = "OK"
KNOBS = Knobs(input_size=(512, 512), tasks=("detection", "pose"), flip_test=True, device="cpu")


def rates(sent: float, processed: float, idle: float = 0.0, rejected: float = 0.0) -> dict[str, float]:
    return {
        "input_rate_hz": sent,
        "processed_rate_hz": processed,
        "idle_rate_hz": idle,
        "rejected_rate_hz": rejected,
    }


def test_assess_warns_when_processing_lags_the_input_by_more_than_the_tolerance() -> None:
    def level(summary: dict[str, float], tolerance: float = 0.2, active: bool = True) -> str:
        return assess(summary, configured=True, active=active, tolerance=tolerance, knobs=KNOBS)[0]

    level_now, message = assess(rates(5.0, 1.5), configured=True, active=True, tolerance=0.2, knobs=KNOBS)
    assert level_now == "WARN"
    assert "processing 1.5 of 5.0 frames/s" in message
    for hint in ("input_size (now 512x512)", "fewer tasks", "flip_test off", "device is cpu"):
        assert hint in message
    assert level(rates(5.0, 4.5)) == OK
    assert level(rates(5.0, 4.5), tolerance=0.05) == "WARN"
    # Idle frames are handled too: they do not make the node look slow.
    assert level(rates(5.0, 2.0, 3.0)) == OK
    assert level(rates(0.0, 0.0)) == OK
    assert level(rates(5.0, 0.0), active=False) == OK
    assert assess(rates(5.0, 0.0), configured=False, active=False, tolerance=0.2, knobs=KNOBS)[0] == "WARN"


def test_assess_tells_frames_lost_in_transport_from_frames_the_node_dropped() -> None:
    """Frames lost before the node (a 640x480 camera without a shared-memory profile) are not helped by a
    smaller input or int8: the status said "to keep up try input_size ..." while the node idled."""

    def message(sent: float, received: float, processed: float) -> str:
        summary = rates(sent, processed) | {"received_rate_hz": received}
        level, text = assess(summary, configured=True, active=True, tolerance=0.2, knobs=KNOBS)
        assert level == "WARN"
        return text

    transport = message(10.0, 4.0, 4.0)  # all received frames processed
    assert "60% lost in transport, 0% dropped by the node" in transport
    assert "config/fastdds.xml" in transport and "input_size" not in transport
    slow = message(10.0, 10.0, 3.0)
    assert "0% lost in transport, 70% dropped by the node" in slow
    assert "input_size (now 512x512)" in slow and "fastdds" not in slow
    both = message(10.0, 6.0, 2.0)
    assert "input_size" in both and "config/fastdds.xml" in both
    # Humble's rclpy tells no sequence numbers: what was sent is what arrived, and no loss is claimed.
    summary = rates(10.0, 3.0) | {"received_rate_hz": 10.0}
    _, humble = assess(
        summary, configured=True, active=True, tolerance=0.2, knobs=KNOBS, losses_counted=False
    )
    assert "losses in transport are not counted here" in humble and "lost in transport," not in humble
    assert "input_size" in humble and "config/fastdds.xml" in humble
    spinning = dataclasses.replace(KNOBS, omp_spinning=True)  # torch on the CPU, workers waiting actively
    assert "OMP_WAIT_POLICY=PASSIVE" in speed_hint(spinning) and "OMP_WAIT" not in speed_hint(KNOBS)


def test_assess_reports_rejected_frames_and_a_silent_input() -> None:
    """Rejected frames are handled, but a node rejecting many is not well (the status said OK while every
    frame of a wrong encoding was refused); nor is one that hears nothing (a wrong remap or an incompatible
    QoS gave an OK "active" with no input at all)."""

    def judge(summary: dict[str, float], **kw: object) -> tuple[str, str]:
        args: dict[str, object] = {"configured": True, "active": True, "tolerance": 0.2, "knobs": KNOBS}
        return assess(summary, **(args | kw))  # type: ignore[arg-type]

    error = "bad frame: unsupported encoding 'yuv420_fancy'"
    level, message = judge(rates(5.0, 0.0, 0.0, 5.0), last_error=error)
    assert level == "ERROR" and "every frame rejected (5.0 frames/s)" in message and error in message
    level, message = judge(rates(5.0, 3.0, 0.0, 2.0), last_error=error)
    assert level == "WARN" and "rejecting 2.0 of 5.0 frames/s" in message and error in message
    assert "processing" not in message, "rejected frames are handled: not a slow node"
    assert judge(rates(5.0, 4.5, 0.0, 0.5))[0] == OK, "within the tolerance"
    assert judge(rates(5.0, 4.0, 0.0, 1.0), tolerance=0.1)[0] == "WARN"
    level, message = judge(rates(5.0, 1.0, 0.0, 2.0))  # both at once: both named
    assert level == "WARN" and "rejecting 2.0" in message and "processing 3.0 of 5.0" in message
    assert judge(rates(0.0, 0.0), silence_s=4.9)[0] == OK
    level, message = judge(rates(0.0, 0.0), silence_s=12.0, inputs="/cam/image")
    assert level == "WARN" and "no frame on /cam/image for 12 s" in message
    assert judge(rates(0.0, 0.0), silence_s=12.0, active=False)[0] == OK
    assert worst([OK, "WARN", OK]) == "WARN" and worst(["WARN", "ERROR"]) == "ERROR" and worst([]) == OK


def test_silence_counts_from_listening_or_the_last_frame() -> None:
    stats = FrameStats()
    assert stats.silence(10.0) is None
    stats.start_listening(10.0)
    assert stats.silence(16.0) == 6.0
    stats.arrived(15.0)
    assert stats.silence(16.0) == 1.0
    stats.stop_listening()
    assert stats.silence(30.0) is None


FP16_HINT = "precision:=fp16 or bf16 (GPU-dependent: at batch 1 on an H200 fp16 was slower)"


def test_speed_hint_names_only_what_applies() -> None:
    hint = speed_hint(Knobs(input_size=(128, 128), tasks=("pose",), flip_test=False, device="cuda:0"))
    assert hint == f"a smaller input_size (now 128x128), {FP16_HINT}"
    gpu = Knobs(input_size=None, tasks=("pose",), flip_test=False, device="cuda:0", cuda_graphs_possible=True)
    assert speed_hint(gpu) == f"cuda_graphs:=true, {FP16_HINT}"
    assert speed_hint(dataclasses.replace(gpu, cuda_graphs=True)) == FP16_HINT
    on_cpu = Knobs(input_size=None, tasks=("pose",), flip_test=False, device="cpu", cpu_bf16=True)
    hint = speed_hint(on_cpu)
    assert hint.startswith("a CUDA device (device is cpu), precision:=bf16 (native here, but CPU-dependent")
    already = dataclasses.replace(on_cpu, precision="bf16")
    assert speed_hint(already) == "a CUDA device (device is cpu)"
    amx = dataclasses.replace(on_cpu, cpu_amx_bf16=True)  # where bf16 was measured about 3x faster
    assert speed_hint(amx) == (
        "a CUDA device (device is cpu), precision:=bf16 (this CPU has AMX: about 3x the fp32 forward)"
    )
    vnni = dataclasses.replace(on_cpu, cpu_bf16=False, cpu_int8=True)
    assert speed_hint(vnni) == (
        "a CUDA device (device is cpu), backend:=onnxruntime precision:=int8 (this CPU has VNNI/AMX; "
        "calibrate once with python -m mcn_ros.model.quantize)"
    )
    assert "int8" not in speed_hint(dataclasses.replace(vnni, precision="int8"))


def test_status_values_hold_every_counter() -> None:
    counts = FrameCounts(received=10, lost=2, dropped=4, rejected=1, processed=3, idle=1)
    values = status_values(
        rates(1.0, 1.0), counts, loss_counting="x", tasks={"pose", "detection"}, device="cpu", last_error="e"
    )
    expected = {"frames_sent": "12", "frames_received": "10", "frames_lost": "2", "frames_dropped": "4"}
    expected |= {"frames_rejected": "1", "frames_processed": "3", "frames_idle": "1", "frames_pending": "1"}
    expected |= {"tasks_computed": "detection,pose", "input_rate_hz": "1.00", "last_error": "e"}
    expected |= {"precision": "fp32", "cuda_graphs": "off", "torch_compile": "off"}
    assert expected.items() <= values.items()


def test_a_slow_camera_with_a_frame_in_flight_is_not_said_to_lose_frames() -> None:
    """A 0.5 Hz camera whose frames take 1.2 s each: every frame is processed, yet the frame in flight at the
    window's end counted as sent and not handled, and /diagnostics warned of a third of them lost."""
    stats = FrameStats(window_s=5.0)
    stats.start_listening(0.0)
    period, took = 2.0, 1.2
    judged: dict[bool, list[str]] = {True: [], False: []}  # with the frames in flight counted, without
    for tick in range(1, 600):
        now = tick * 0.1
        if round(now / period, 6).is_integer():
            stats.arrived(now)
        finished = [k * period + took for k in range(1, int(now / period) + 1) if k * period + took <= now]
        while stats.processed < len(finished):
            stats.finished(finished[stats.processed], took, None)
        summary = stats.summary(now)
        in_flight = stats.counts(dropped=0).pending / stats.span(now)
        for counted in (True, False):
            level, message = assess(
                summary, configured=True, active=True, tolerance=0.2, knobs=KNOBS,
                pending_rate_hz=in_flight if counted else 0.0,
            )  # fmt: skip
            if level != OK:
                judged[counted].append(message)
    assert judged[True] == []
    assert judged[False] and "lost or dropped" in judged[False][0]  # the timeline shows what went wrong
