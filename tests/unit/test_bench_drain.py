"""The benchmark's draining worker finds simulate --stamp-ids' send stamps."""

from __future__ import annotations

from bench.drain_worker import frame_stamps


def test_stamps_of_any_length_are_found_once_per_frame() -> None:
    # CLOCK_MONOTONIC has 12 digits 999 s after boot: a fresh machine's benchmark found none
    data = (b'[{"ev":"T","sym":"A","i":"999123456789","p":1}]'
            b'[{"ev":"T","sym":"B","i":"999123456789","p":2}]'
            b'[{"ev":"T","sym":"C","i":"1000000000000123","p":3}]')
    assert frame_stamps(data) == [999123456789, 1000000000000123]


def test_a_stamp_cut_by_the_end_of_a_read_is_not_taken() -> None:
    assert frame_stamps(b'[{"ev":"T","sym":"A","i":"99912') == []
    assert frame_stamps(memoryview(b'3456789","p":1}][{"i":"5"}')) == [5]
