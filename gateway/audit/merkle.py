"""Merkle tree mathematics of the audit log: RFC 9162 section 2.1, pure and storage-free.

The audit log is an append-only list of records. Its tree is the one RFC 9162 (Certificate
Transparency 2.0, section 2.1) defines, so that any RFC 6962/9162 verifier -- transparency-dev's
Go code, a partner's witness, an auditor's script -- checks our proofs without knowing xbgw:

* a leaf is ``SHA-256(0x00 || record)`` and an interior node ``SHA-256(0x01 || left || right)``;
  the different prefixes keep a leaf from ever being passed off as a node (second preimages);
* the root of ``n`` leaves (MTH) splits them at the largest power of two *smaller* than ``n``,
  so every left subtree is perfect and a tree of ``n`` leaves is a prefix of every larger one;
* an inclusion proof (section 2.1.3) shows one leaf is under a root; a consistency proof
  (section 2.1.4) shows a tree of ``old_size`` leaves is a prefix of a tree of ``new_size``.

Nothing here reads or writes storage. Three ways in, by cost:

* **Lists of leaf hashes** (:func:`root`, :func:`inclusion_proof`, :func:`consistency_proof`):
  every call hashes all ``size`` leaves again -- O(n) time and memory. Fine for tests, tools
  and small logs; not for a log of millions of leaves.
* **A node reader** ``hash_at(level, index)`` (:data:`HashAt`) that returns the root of the
  perfect subtree over leaves ``[index * 2**level, (index + 1) * 2**level)``. Such a node
  never changes once its last leaf is appended, so storage may keep them for good.
  :func:`subtree_root`, :func:`inclusion_proof_at` and :func:`consistency_proof_at` then need
  O(log n) reads each. :meth:`Frontier.append` reports exactly the nodes each append
  completes, which is all a store has to write to serve these reads.
* **A frontier** (:class:`Frontier`): the O(log n) right-edge subtree roots. Appending a leaf
  and taking the root never need earlier leaves; it serialises to a few hundred bytes to be
  kept beside the log.

Verification follows the RFC's algorithms step by step (sections 2.1.3.2 and 2.1.4.2) and
raises :class:`ProofError` with a message that says what is wrong; it never returns False.
Hashes are SHA-256 from :mod:`hashlib`; this module composes them and adds no other crypto.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gateway.errors import XbgwError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "FrontierFormatError",
    "HashAt",
    "Node",
    "ProofError",
    "consistency_nodes",
    "consistency_proof",
    "consistency_proof_at",
    "inclusion_nodes",
    "inclusion_proof",
    "inclusion_proof_at",
    "leaf_hash",
    "node_hash",
    "nodes_from_leaves",
    "root",
    "subtree_nodes",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
]

#: Bytes in every hash of the tree (SHA-256).
HASH_SIZE = 32

#: MTH({}) -- the root of the empty tree is the hash of the empty string (RFC 9162 2.1.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

#: ``hash_at(level, index)``: the root of the perfect subtree of ``2**level`` leaves starting at
#: leaf ``index * 2**level`` (level 0 is the leaf hashes themselves). Callers only ask for
#: nodes whose leaves all exist.
HashAt = Callable[[int, int], bytes]


class ProofError(XbgwError, ValueError):
    """A Merkle proof or root does not verify: the log, the proof or the checkpoint is wrong.

    Raised only by the ``verify_*`` functions. It is a ``ValueError`` too, so code that treats
    bad input generically still catches it; the message names the leaf, the sizes and the
    check that failed.
    """

    grpc_status = "INVALID_ARGUMENT"


class FrontierFormatError(XbgwError, ValueError):
    """A serialised :class:`Frontier` is truncated, damaged or of an unknown version."""

    grpc_status = "DATA_LOSS"


@dataclass(frozen=True, slots=True)
class Node:
    """One perfect subtree root: ``hash`` covers leaves ``[index << level, (index+1) << level)``."""

    level: int
    index: int
    hash: bytes


# --- hashing ---------------------------------------------------------------------------------


def leaf_hash(record: bytes) -> bytes:
    """The leaf hash of one audit record: ``SHA-256(0x00 || record)`` (RFC 9162 2.1.1)."""
    return hashlib.sha256(_LEAF_PREFIX + record).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """An interior node: ``SHA-256(0x01 || left || right)`` (RFC 9162 2.1.1)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2): where MTH splits."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(what: str, value: bytes, error: type[ValueError] = ValueError) -> None:
    if len(value) != HASH_SIZE:
        raise error(f"{what} is {len(value)} bytes, expected {HASH_SIZE}")


def _check_nonnegative(what: str, value: int, error: type[ValueError] = ValueError) -> None:
    if value < 0:
        raise error(f"{what} {value} is negative")


# --- roots -----------------------------------------------------------------------------------


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of ``leaf_hashes`` (RFC 9162 2.1.1); :data:`EMPTY_ROOT` for no leaves.

    Hashes the tree level by level, pairing neighbours and carrying an unpaired last node up
    unchanged -- which is MTH, since the split at the largest power of two below n leaves every
    left subtree perfect. n - 1 node hashes; memory is a copy of the list. Deliberately a
    different walk from :class:`Frontier`'s, so each checks the other in the tests.
    """
    level = list(leaf_hashes)
    for i, h in enumerate(level):
        _check_hash(f"leaf hash {i}", h)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _fold_right(parts: Sequence[bytes]) -> bytes:
    """Combine perfect subtree roots, largest first, as MTH does along the right edge."""
    acc = parts[-1]
    for part in reversed(parts[:-1]):
        acc = node_hash(part, acc)
    return acc


def subtree_root(hash_at: HashAt, start: int, end: int) -> bytes:
    """MTH(D[start:end]) from perfect subtree roots, in at most log2(end - start) + 1 reads.

    The range must be one the RFC recursion produces: non-empty, and ``start`` a multiple of
    the smallest power of two >= ``end - start`` (for example ``[0, n)`` for the whole tree of
    ``n`` leaves, ``[8, 13)``, but not ``[3, 7)``). Such a range is a run of aligned perfect
    subtrees of decreasing size -- one per set bit of ``end - start`` -- and its MTH folds
    them from the right, so no leaf is read unless a part is a single leaf.
    """
    parts: list[bytes] = []
    for level, index in subtree_nodes(start, end):
        h = hash_at(level, index)
        _check_hash(f"node at level {level} index {index}", h)
        parts.append(h)
    return _fold_right(parts)


def subtree_nodes(start: int, end: int) -> list[tuple[int, int]]:
    """(level, index) of the perfect subtrees :func:`subtree_root` reads for ``[start, end)``,
    largest first (the same checks on the range)."""
    _check_nonnegative("start", start)
    if end <= start:
        raise ValueError(f"subtree [{start}, {end}) is empty")
    width = end - start
    if start % (1 << (width - 1).bit_length()):
        raise ValueError(f"subtree [{start}, {end}) is not a subtree of an RFC 9162 tree")
    nodes: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        level = (end - pos).bit_length() - 1
        nodes.append((level, pos >> level))
        pos += 1 << level
    return nodes


def nodes_from_leaves(leaf_hashes: Sequence[bytes]) -> HashAt:
    """A :data:`HashAt` over a list of leaf hashes, every perfect node computed once up front.

    Costs n - 1 node hashes and about 2n hashes of memory; afterwards every read is a list
    look-up, so many proofs over one in-memory tree are cheap. For a log on disk, serve
    ``hash_at`` from the nodes :meth:`Frontier.append` reported instead.
    """
    levels: list[list[bytes]] = [list(leaf_hashes)]
    for i, h in enumerate(levels[0]):
        _check_hash(f"leaf hash {i}", h)
    while len(levels[-1]) >= 2:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])

    def hash_at(level: int, index: int) -> bytes:
        if level < 0 or index < 0 or level >= len(levels) or index >= len(levels[level]):
            raise ValueError(
                f"no perfect subtree at level {level} index {index} "
                f"in a tree of {len(levels[0])} leaves"
            )
        return levels[level][index]

    return hash_at


# --- proof shapes ----------------------------------------------------------------------------
#
# Both proofs are lists of MTHs of ranges that depend only on the sizes (and the leaf index).
# The generators below walk the RFC's recursive definitions iteratively and return those
# ranges, bottom-up, which is the order the RFC lists the hashes in; hashing is separate, so
# the verifiers can also use the shapes to say how many nodes a proof should have.


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges PATH(index, D[size]) hashes (RFC 9162 2.1.3.1), leaf level first."""
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:  # PATH(m, D[0:k]) : MTH(D[k:n])
            ranges.append((lo + k, hi))
            hi = lo + k
        else:  # PATH(m - k, D[k:n]) : MTH(D[0:k])
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def _consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The ranges PROOF(old_size, D[new_size]) hashes (RFC 9162 2.1.4.1), deepest first."""
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, new_size
    whole = True  # SUBPROOF's b: MTH(D[lo:old_size]) is the old root, which the verifier has
    while old_size != hi:
        k = _split(hi - lo)
        if old_size - lo <= k:  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            ranges.append((lo + k, hi))
            hi = lo + k
        else:  # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            ranges.append((lo, lo + k))
            lo += k
            whole = False
    if not whole:  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def inclusion_proof_at(hash_at: HashAt, index: int, size: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves, from a node reader.

    At most log2(size) + 1 hashes, each built by :func:`subtree_root` from O(log n) reads.
    """
    _check_nonnegative("index", index)
    if index >= size:
        raise ValueError(f"index {index} is not below size {size}")
    return [subtree_root(hash_at, lo, hi) for lo, hi in _inclusion_ranges(index, size)]


def inclusion_nodes(index: int, size: int) -> list[tuple[int, int]]:
    """(level, index) of every stored node :func:`inclusion_proof_at` reads, so that a store
    can fetch them together (one query, not one per node)."""
    _check_nonnegative("index", index)
    if index >= size:
        raise ValueError(f"index {index} is not below size {size}")
    return [node for lo, hi in _inclusion_ranges(index, size) for node in subtree_nodes(lo, hi)]


def consistency_nodes(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """(level, index) of every stored node :func:`consistency_proof_at` reads."""
    _check_nonnegative("new size", new_size)
    if old_size <= 0 or old_size > new_size:
        return []  # consistency_proof_at refuses these sizes itself
    return [
        node for lo, hi in _consistency_ranges(old_size, new_size) for node in subtree_nodes(lo, hi)
    ]


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of the first ``size`` of ``leaf_hashes``.

    Cost: O(size) hashing and memory on every call (all perfect nodes are rebuilt); use
    :func:`inclusion_proof_at` with stored nodes for a large log.
    """
    _check_nonnegative("size", size)
    if size > len(leaf_hashes):
        raise ValueError(f"size {size} is above the {len(leaf_hashes)} leaves given")
    return inclusion_proof_at(nodes_from_leaves(leaf_hashes[:size]), index, size)


def consistency_proof_at(hash_at: HashAt, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]) from a node reader: empty when the sizes are equal.

    RFC 9162 defines PROOF(m, D[n]) for 0 < m < n, and its SUBPROOF gives the empty proof for
    m == n. The empty tree has no proof (every tree extends it), so old_size 0 is refused
    rather than answered with a proof no verifier accepts.
    """
    _check_nonnegative("new size", new_size)
    if old_size <= 0:
        raise ValueError(f"old size {old_size} is not positive: no consistency proof exists")
    if old_size > new_size:
        raise ValueError(f"old size {old_size} is above new size {new_size}")
    return [subtree_root(hash_at, lo, hi) for lo, hi in _consistency_ranges(old_size, new_size)]


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]) over the first ``new_size`` of ``leaf_hashes``.

    Cost: O(new_size) hashing and memory on every call; see :func:`consistency_proof_at`.
    """
    _check_nonnegative("new size", new_size)
    if new_size > len(leaf_hashes):
        raise ValueError(f"new size {new_size} is above the {len(leaf_hashes)} leaves given")
    return consistency_proof_at(nodes_from_leaves(leaf_hashes[:new_size]), old_size, new_size)


# --- verification ----------------------------------------------------------------------------


def _equal(a: bytes, b: bytes) -> bool:
    # Roots and proofs are public values: a plain comparison leaks nothing worth a timing guard.
    return a == b


def _short(h: bytes) -> str:
    return h.hex()[:16]


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    The algorithm of RFC 9162 section 2.1.3.2, step by step. Before it runs, the sizes and the
    proof length are checked against the shape of the tree so that the error says which is
    wrong; the RFC's own checks on ``sn`` stay in place behind them. Every hash must be 32
    bytes. Raises :class:`ProofError`; returns nothing on success.

    ``size`` and ``root`` must be taken together from one signed checkpoint: a proof does not
    encode the tree size, and the proof of leaf 0 in a tree of 3 leaves also leads to that
    tree's root when read with size 4. Checking against the checkpoint's pair is sound.
    """
    _check_nonnegative("index", index, ProofError)
    _check_nonnegative("size", size, ProofError)
    # 1. leaf_index >= tree_size fails.
    if index >= size:
        raise ProofError(f"index {index} is not below size {size}")
    _check_hash("leaf hash", leaf_hash, ProofError)
    _check_hash("root", root, ProofError)
    for i, p in enumerate(proof):
        _check_hash(f"inclusion proof node {i}", p, ProofError)
    expected = len(_inclusion_ranges(index, size))
    if len(proof) != expected:
        raise ProofError(
            f"inclusion proof for leaf {index} of {size} has {len(proof)} nodes, "
            f"expected {expected}"
        )
    # 2. Set fn to leaf_index and sn to tree_size - 1.
    fn, sn = index, size - 1
    # 3. Set r to hash.
    r = leaf_hash
    # 4. For each value p in the inclusion_path array:
    for p in proof:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise ProofError(f"inclusion proof for leaf {index} of {size} is too long")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # 1. Set r to HASH(0x01 || p || r).
            r = node_hash(p, r)
            # 2. If LSB(fn) is not set, then right-shift both fn and sn equally until either
            #    LSB(fn) is set or fn is 0.
            while not (fn & 1 or fn == 0):
                fn >>= 1
                sn >>= 1
        else:
            # Otherwise: Set r to HASH(0x01 || r || p).
            r = node_hash(r, p)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. Compare sn to 0. Compare r against the root_hash.
    if sn != 0:
        raise ProofError(f"inclusion proof for leaf {index} of {size} is too short")
    if not _equal(r, root):
        raise ProofError(
            f"root mismatch: the inclusion proof for leaf {index} of {size} leads to "
            f"{_short(r)}..., not {_short(root)}..."
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``old_size`` leaves is a prefix of the tree of ``new_size``.

    The algorithm of RFC 9162 section 2.1.4.2, step by step, with the cases around it that the
    RFC leaves to the caller decided as transparency-dev/merkle decides them:

    * ``old_size > new_size`` is refused (a log never shrinks: a rollback);
    * ``old_size == 0`` is refused: RFC 9162 defines no proof from the empty tree and any tree
      extends it, so the check would prove nothing -- a witness seeing a log for the first
      time has nothing to verify and simply stores the checkpoint;
    * ``old_size == new_size`` needs an empty proof and equal roots (otherwise a fork).

    Every hash must be 32 bytes. Raises :class:`ProofError`; returns nothing on success.
    """
    _check_nonnegative("old size", old_size, ProofError)
    _check_nonnegative("new size", new_size, ProofError)
    if old_size > new_size:
        raise ProofError(f"old size {old_size} is above new size {new_size}: the log shrank")
    if old_size == 0:
        raise ProofError(
            "old size 0: there is no consistency proof from the empty tree (RFC 9162 2.1.4)"
        )
    _check_hash("old root", old_root, ProofError)
    _check_hash("new root", new_root, ProofError)
    for i, c in enumerate(proof):
        _check_hash(f"consistency proof node {i}", c, ProofError)
    if old_size == new_size:
        if proof:
            raise ProofError(
                f"consistency proof from {old_size} to {new_size} has {len(proof)} nodes, "
                "expected 0"
            )
        if not _equal(old_root, new_root):
            raise ProofError(f"root mismatch: two different roots for the same size {old_size}")
        return
    expected = len(_consistency_ranges(old_size, new_size))
    if len(proof) != expected:
        raise ProofError(
            f"consistency proof from {old_size} to {new_size} has {len(proof)} nodes, "
            f"expected {expected}"
        )
    first, second = old_size, new_size
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not proof:  # pragma: no cover - expected >= 1 when 0 < first < second
        raise ProofError(f"consistency proof from {first} to {second} is empty")
    path = list(proof)
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path.
    if first & (first - 1) == 0:
        path.insert(0, old_root)
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = first - 1, second - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise ProofError(f"consistency proof from {first} to {second} is too long")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # 1. Set fr to HASH(0x01 || c || fr).  2. Set sr to HASH(0x01 || c || sr).
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # 3. If LSB(fn) is not set, then right-shift both fn and sn equally until either
            #    LSB(fn) is set or fn is 0.
            while not (fn & 1 or fn == 0):
                fn >>= 1
                sn >>= 1
        else:
            # Otherwise: Set sr to HASH(0x01 || sr || c).
            sr = node_hash(sr, c)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. Verify fr equals first_hash, sr equals second_hash, and sn is 0.
    if sn != 0:
        raise ProofError(f"consistency proof from {first} to {second} is too short")
    if not _equal(fr, old_root):
        raise ProofError(
            f"root mismatch: the consistency proof from {first} to {second} leads to old root "
            f"{_short(fr)}..., not {_short(old_root)}..."
        )
    if not _equal(sr, new_root):
        raise ProofError(
            f"root mismatch: the consistency proof from {first} to {second} leads to new root "
            f"{_short(sr)}..., not {_short(new_root)}..."
        )


# --- the frontier of a growing log -----------------------------------------------------------

_FRONTIER_MAGIC = b"XBMF"
_FRONTIER_VERSION = 1
_SIZE_BYTES = 8
_HEADER = len(_FRONTIER_MAGIC) + 1 + _SIZE_BYTES
_MAX_SIZE = (1 << (8 * _SIZE_BYTES)) - 1


class Frontier:
    """The right edge of a growing tree: one perfect subtree root per set bit of its size.

    A tree of ``size`` leaves is, left to right, perfect subtrees of 2**b leaves for each set
    bit b of ``size``, largest first; its root folds them from the right. Appending a leaf is
    binary increment: the new leaf merges with the equal-sized subtrees at the end. So the
    state is at most 64 hashes, an append costs amortised one node hash (at most 64), and
    :meth:`root` costs popcount(size) - 1 -- no earlier leaf is ever needed.

    The audit log keeps :meth:`to_bytes` beside its leaves and restores it with
    :meth:`from_bytes` on start; :meth:`at` rebuilds it from stored nodes.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._size = 0
        self._stack: list[bytes] = []  # perfect subtree roots, largest (leftmost) first

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The perfect subtrees of the right edge, left to right, with their coordinates."""
        out: list[Node] = []
        start = 0
        stack = iter(self._stack)
        for level in reversed(range(self._size.bit_length())):
            if self._size >> level & 1:
                out.append(Node(level, start >> level, next(stack)))
                start += 1 << level
        return tuple(out)

    def append(self, leaf_hash: bytes) -> tuple[Node, ...]:
        """Add one leaf hash; return every perfect subtree root this append completed.

        The first returned node is the leaf itself (level 0), then each parent it completed,
        upwards. These nodes never change again: a store that keeps them can answer any
        :data:`HashAt` read, and hence any proof, in O(log n) reads.
        """
        _check_hash("leaf hash", leaf_hash)
        if self._size >= _MAX_SIZE:
            raise ValueError(f"a frontier holds at most {_MAX_SIZE} leaves")
        index = self._size
        h = leaf_hash
        completed = [Node(0, index, h)]
        level = 0
        while index >> level & 1:  # binary increment: merge with the equal-sized left sibling
            h = node_hash(self._stack.pop(), h)
            level += 1
            completed.append(Node(level, index >> level, h))
        self._stack.append(h)
        self._size += 1
        return tuple(completed)

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append several leaf hashes in order."""
        for h in leaf_hashes:
            self.append(h)

    def root(self) -> bytes:
        """MTH of the leaves so far (RFC 9162 2.1.1); :data:`EMPTY_ROOT` when empty."""
        if not self._stack:
            return EMPTY_ROOT
        return _fold_right(self._stack)

    def copy(self) -> Frontier:
        """An independent frontier at the same size (to compute a root ahead of a commit)."""
        other = Frontier()
        other._size = self._size
        other._stack = list(self._stack)
        return other

    @classmethod
    def at(cls, hash_at: HashAt, size: int) -> Frontier:
        """The frontier of the first ``size`` leaves, from popcount(size) stored nodes."""
        _check_nonnegative("size", size)
        if size > _MAX_SIZE:
            raise ValueError(f"a frontier holds at most {_MAX_SIZE} leaves")
        frontier = cls()
        start = 0
        for level in reversed(range(size.bit_length())):
            if size >> level & 1:
                h = hash_at(level, start >> level)
                _check_hash(f"node at level {level} index {start >> level}", h)
                frontier._stack.append(h)
                start += 1 << level
        frontier._size = size
        return frontier

    # Serialised form, all integers big-endian:
    #   "XBMF" | version (1 byte, 1) | size (8 bytes) | popcount(size) x 32-byte subtree roots,
    #   largest first | SHA-256 of everything before it (32 bytes).
    # The trailing digest catches a damaged or half-written file; it is not an authenticator
    # (anyone can recompute it) -- signed checkpoints of the root are.

    def to_bytes(self) -> bytes:
        """The frontier as bytes for storage; :meth:`from_bytes` reverses it."""
        body = b"".join(
            (
                _FRONTIER_MAGIC,
                bytes((_FRONTIER_VERSION,)),
                self._size.to_bytes(_SIZE_BYTES, "big"),
                *self._stack,
            )
        )
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Frontier:
        """Read :meth:`to_bytes` output; raise :class:`FrontierFormatError` if it is damaged."""
        data = bytes(data)
        if len(data) < _HEADER + HASH_SIZE:
            raise FrontierFormatError(
                f"serialised frontier is {len(data)} bytes, shorter than the smallest "
                f"({_HEADER + HASH_SIZE})"
            )
        if data[: len(_FRONTIER_MAGIC)] != _FRONTIER_MAGIC:
            raise FrontierFormatError("serialised frontier does not start with XBMF")
        version = data[len(_FRONTIER_MAGIC)]
        if version != _FRONTIER_VERSION:
            raise FrontierFormatError(f"serialised frontier has unknown version {version}")
        size = int.from_bytes(data[len(_FRONTIER_MAGIC) + 1 : _HEADER], "big")
        count = size.bit_count()
        want = _HEADER + count * HASH_SIZE + HASH_SIZE
        if len(data) != want:
            raise FrontierFormatError(
                f"serialised frontier of size {size} is {len(data)} bytes, expected {want}"
            )
        body, digest = data[:-HASH_SIZE], data[-HASH_SIZE:]
        if not _equal(hashlib.sha256(body).digest(), digest):
            raise FrontierFormatError("serialised frontier is damaged: its digest does not match")
        frontier = cls()
        frontier._size = size
        frontier._stack = [
            body[_HEADER + i * HASH_SIZE : _HEADER + (i + 1) * HASH_SIZE] for i in range(count)
        ]
        return frontier

    def __repr__(self) -> str:
        return f"Frontier(size={self._size}, root={self.root().hex()})"
