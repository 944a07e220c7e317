"""The DKIM signing benchmark: what does one signature cost per message?

    python -m benchmarks.dkim                  # 4 KB and 1 MB, RSA 2048 and Ed25519
    python -m benchmarks.dkim --sizes 4k,100k,1m,10m --count 50

For each message size it times, per message (median of `--count` runs, in one thread):

* pymail RSA      `DkimSigner.sign` with one RSA-2048 key: dkimpy's header parsing and
                  canonicalisation, pymail's streaming body hash, OpenSSL's RSA;
* pymail RSA+Ed   the same with the second Ed25519 signature (two signatures);
* pymail spooled  RSA, the message read from a spool file (as large messages are);
* dkimpy RSA      `dkim.sign` alone (relaxed/relaxed), dkimpy's own pure-Python RSA;
* dkimpy Ed25519  `dkim.sign` with an Ed25519 key (PyNaCl);

and, once, the bare private-key operation: dkimpy's pure-Python RSA
(`dkim.crypto.RSASSA_PKCS1_v1_5_sign`) against OpenSSL's (`cryptography`) and Ed25519.
The figures say why pymail signs with `cryptography` (pymail.delivery.dkim).
Shared machines are noisy: compare columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization

from pymail.delivery.dkim import DkimSigner
from pymail.delivery.dkimkeys import domain_keys, generate_key

HEADER = (b"From: Alice <alice@bench.example>\r\nTo: Bob <bob@remote.example>\r\n"
          b"Subject: benchmark\r\nDate: Wed, 02 Dec 2026 07:00:00 +0000\r\n"
          b"Message-ID: <bench@bench.example>\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: text/plain; charset=utf-8\r\n\r\n")


def parse_size(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * factor)


def message_of(size: int) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog, \t twice  over. 0123456789\r\n"
    return HEADER + line * max(1, (size - len(HEADER)) // len(line))


def median_ms(fn: Callable[[], object], count: int) -> float:
    fn()  # warm up (key loading, caches)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="4k,1m", help="message sizes (default 4k,1m)")
    parser.add_argument("--count", type=int, default=30, help="runs per figure (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        key_dir = Path(tmp) / "dkim"
        generate_key(key_dir, "bench.example", "rsa")
        only_rsa = Path(tmp) / "dkim-rsa"
        generate_key(only_rsa, "bench.example", "rsa")
        generate_key(key_dir, "bench.example", "ed", algorithm="ed25519")
        rsa_key, ed_key = domain_keys(key_dir, "bench.example")
        rsa_pem = rsa_key.path.read_bytes()
        ed_seed = ed_key.private.private_bytes(serialization.Encoding.Raw,
                                               serialization.PrivateFormat.Raw,
                                               serialization.NoEncryption())
        import base64

        ed_b64 = base64.b64encode(ed_seed)
        both, rsa_only = DkimSigner(key_dir, selector="rsa"), DkimSigner(only_rsa, selector="rsa")
        print(f"DKIM signing, median of {args.count} runs per message, milliseconds")
        print(f"{'size':>8} {'pymail RSA':>11} {'pymail RSA+Ed':>14} {'pymail spooled':>15}"
              f" {'dkimpy RSA':>11} {'dkimpy Ed25519':>15}")
        for size in (parse_size(s) for s in args.sizes.split(",")):
            msg = message_of(size)
            spooled = Path(tmp) / f"msg-{size}"
            spooled.write_bytes(msg)
            count = args.count if size <= 2 * 1024 * 1024 else max(3, args.count // 10)
            row = [
                median_ms(lambda: rsa_only.sign(msg, None, "bench.example"), count),
                median_ms(lambda: both.sign(msg, None, "bench.example"), count),
                median_ms(lambda: rsa_only.sign(None, spooled, "bench.example"), count),
                median_ms(lambda: dkim.sign(msg, b"rsa", b"bench.example", rsa_pem,
                                            canonicalize=(b"relaxed", b"relaxed")), count),
                median_ms(lambda: dkim.sign(msg, b"ed", b"bench.example", ed_b64,
                                            canonicalize=(b"relaxed", b"relaxed"),
                                            signature_algorithm=b"ed25519-sha256"), count),
            ]
            label = f"{size // 1024} KB" if size < 1024 * 1024 else f"{size / 1048576:g} MB"
            print(f"{label:>8} {row[0]:>11.2f} {row[1]:>14.2f} {row[2]:>15.2f}"
                  f" {row[3]:>11.2f} {row[4]:>15.2f}")
        digest = hashlib.sha256(b"x")
        parsed = dkim.crypto.parse_pem_private_key(rsa_pem)
        n = max(args.count, 50)
        pure = median_ms(lambda: dkim.crypto.RSASSA_PKCS1_v1_5_sign(digest, parsed), n)
        openssl = median_ms(lambda: rsa_key.sign(digest.digest()), n)
        ed = median_ms(lambda: ed_key.sign(digest.digest()), n)
        print(f"private-key operation alone: RSA-2048 dkimpy (pure Python) {pure:.2f} ms, "
              f"OpenSSL {openssl:.2f} ms ({pure / openssl:.0f}x); Ed25519 OpenSSL {ed:.3f} ms")


if __name__ == "__main__":
    main()
