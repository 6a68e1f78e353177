from __future__ import annotations

import asyncio
import threading

from tickpipe_common.producer.handoff import HandOff


def test_one_batch_per_loop_turn_with_one_receive_time() -> None:
    handoff = HandOff(1000, clock=lambda: 42)

    async def frame() -> None:
        for i in range(5):  # alpaca-py dispatches a frame's messages without yielding
            await handoff.handler({"i": i})
        await asyncio.sleep(0)
        await handoff.handler({"i": 5})
        await asyncio.sleep(0)

    asyncio.run(frame())
    batches = handoff.take(0)
    assert batches == [(42, [{"i": i} for i in range(5)]), (42, [{"i": 5}])]
    assert handoff.take(0) == []
    handoff.close()
    assert handoff.take(0) is None


def test_whole_frames_join_one_batch_per_loop_turn() -> None:
    handoff = HandOff(1000, clock=lambda: 7)

    async def frames() -> None:
        handoff.receive_frame([{"i": 0}, {"i": 1}])
        handoff.receive_frame([])
        handoff.receive_frame([{"i": 2}])
        await asyncio.sleep(0)
        handoff.receive_frame([{"i": 3}])
        await asyncio.sleep(0)

    asyncio.run(frames())
    assert handoff.take(0) == [(7, [{"i": 0}, {"i": 1}, {"i": 2}]), (7, [{"i": 3}])]


def test_a_full_handoff_waits_for_room_and_counts_it() -> None:
    waits: list[int] = []
    handoff = HandOff(3, on_wait=lambda: waits.append(1))
    handoff.put((1, [{}, {}, {}]))
    done = threading.Event()

    def put_more() -> None:
        handoff.put((2, [{}]))
        done.set()

    thread = threading.Thread(target=put_more)
    thread.start()
    assert not done.wait(0.2)  # blocked: no room
    assert handoff.take(1) == [(1, [{}, {}, {}])]
    assert done.wait(5)
    thread.join()
    assert waits == [1]
    assert handoff.take(1) == [(2, [{}])]
