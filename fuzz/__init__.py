"""Coverage-guided fuzzing (atheris/libFuzzer) of every decoder of untrusted input.

Harnesses: ``fuzz_datagram`` (UDP datagram header, records, replay window, data session),
``fuzz_control`` (TCP control channel at every handshake stage, Hello, Noise messages) and
``fuzz_topology`` (gossip records and their merge). Each module exposes
``test_one_input(data: bytes)``, which raises only when a decoder breaks its contract, so
the committed corpus can also be replayed in-process (tests/test_fuzz_smoke.py).

Run them with ``python3 -m fuzz.run`` (see fuzz/README.md).
"""
