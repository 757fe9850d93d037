"""Helpers shared by the harnesses: instrumentation, libFuzzer entry, input chunking."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import sys
import types
from collections.abc import Callable, Iterator

from sleeve.crypto import noise

INSTRUMENTED_PACKAGES = ("sleeve",)


def instrument_sleeve() -> int:
    """Add atheris coverage and comparison tracing to every loaded function of ``sleeve``.

    ``atheris.instrument_imports`` only sees modules imported inside its ``with`` block,
    but the harnesses import sleeve at module level (so pytest can replay the corpus
    without atheris' import hook). ``instrument_all`` would also instrument the stdlib
    and the harness itself, whose branches are noise for the coverage signal; so the
    sleeve functions are picked out here. Nested functions and generators are covered
    because ``instrument_func`` patches the code objects nested in each function.
    """
    import atheris  # type: ignore[import-untyped]  # no stubs; imported late on purpose

    count = 0
    for obj in gc.get_objects():
        if not isinstance(obj, types.FunctionType):
            continue
        module = getattr(obj, "__module__", None) or ""
        if module.split(".")[0] not in INSTRUMENTED_PACKAGES or module not in sys.modules:
            continue
        try:
            atheris.instrument_func(obj)
        except Exception as e:  # a function atheris cannot rewrite: report, keep going
            print(f"WARNING: not instrumented: {obj.__qualname__}: {e}", file=sys.stderr)
            continue
        count += 1
    return count


def fuzz_main(test_one_input: Callable[[bytes], None], argv: list[str] | None = None) -> None:
    """libFuzzer entry point: instrument sleeve, then hand ``argv`` flags to libFuzzer."""
    import atheris

    n = instrument_sleeve()
    if n == 0:
        # Without instrumentation libFuzzer runs blind and reports cov: 0; fail loudly.
        raise SystemExit("no sleeve function was instrumented")
    print(f"INFO: instrumented {n} sleeve functions", file=sys.stderr)
    atheris.Setup(sys.argv if argv is None else argv, test_one_input)
    atheris.Fuzz()


def chunks(data: bytes, seed: int) -> Iterator[bytes]:
    """Split ``data`` into deterministic pseudo-random pieces (seed 0: one piece).

    Feeding a stream in pieces exercises the reassembly paths (partial preamble,
    partial length prefix, partial body); the seed comes from the fuzz input so a
    crash replays with exactly the same split.
    """
    if seed == 0 or not data:
        yield data
        return
    limit = seed % 64 + 1  # 1..64: small seeds give byte-by-byte feeding
    state = seed
    i = 0
    while i < len(data):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF  # glibc LCG; quality is irrelevant
        n = 1 + (state >> 8) % limit
        yield data[i : i + n]
        i += n


@contextlib.contextmanager
def deterministic_ephemerals(label: bytes) -> Iterator[None]:
    """Make ``noise.KeyPair.generate`` deterministic while the block runs.

    Handshake transcripts built from fixed keys are identical in every process, so a
    crash input found by the fuzzer replays byte-for-byte (libFuzzer also dislikes
    inputs whose coverage changes from run to run).
    """
    counter = 0
    original = noise.KeyPair.__dict__["generate"]  # the classmethod object itself

    def generate() -> noise.KeyPair:
        nonlocal counter
        counter += 1
        seed = hashlib.blake2b(label + counter.to_bytes(4, "big"), digest_size=32).digest()
        return noise.KeyPair.from_private(seed)

    noise.KeyPair.generate = generate  # type: ignore[method-assign]
    try:
        yield
    finally:
        setattr(noise.KeyPair, "generate", original)  # noqa: B010  # put back the classmethod


def fixed_keypair(label: bytes) -> noise.KeyPair:
    return noise.KeyPair.from_private(hashlib.blake2b(label, digest_size=32).digest())
