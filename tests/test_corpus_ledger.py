"""The build's dedup ledger: first copies kept, later copies (this build or earlier) refused."""

from __future__ import annotations

import hashlib

import numpy as np

from pipeline.corpus import ledger as ledger_module
from pipeline.corpus.ledger import HASH_DTYPE, HashLedger, packed_hashes


def digest(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()[:32]


def test_each_hash_is_first_once_within_a_batch_across_batches_and_after_merges(monkeypatch):
    monkeypatch.setattr(ledger_module, "MERGE_EVERY", 5)  # merge often: both stores are asked
    ledger = HashLedger(packed_hashes([digest(i) for i in range(10)]))
    batch = [digest(3), None, digest(11), digest(11), digest(12)]
    assert ledger.claim(batch) == [False, True, True, False, True]
    later = [digest(i) for i in range(8, 20)]
    # 8 and 9 were known, 11 and 12 claimed above; 10 and 13..19 are new.
    assert ledger.claim(later) == [False, False, True, False, False] + [True] * 7
    assert ledger.claim([digest(i) for i in range(20)]) == [False] * 20
    assert ledger.rows() == 5 + 12 + 20
    assert len(ledger) == 20  # every distinct hash exactly once, whichever store holds it


def test_a_million_hashes_cost_16_bytes_each():
    hashes = packed_hashes([digest(i) for i in range(1000)])
    assert hashes.dtype == HASH_DTYPE and hashes.nbytes == 16_000
    assert list(hashes) == sorted(hashes)
    assert packed_hashes([digest(1), "", digest(1)]).tolist() == [bytes.fromhex(digest(1))]
    # Hashes that differ only in their last byte, one of them a zero byte, stay apart.
    zero, one = "ab" * 15 + "00", "ab" * 15 + "01"
    ledger = HashLedger(packed_hashes([zero]))
    assert ledger.claim([one, zero]) == [True, False]
    assert np.all(ledger._in_known(np.frombuffer(bytes.fromhex(zero), HASH_DTYPE)))
