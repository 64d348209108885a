"""A hand-driven partner client for system tests: it speaks the partner protocol by itself.

The real sender (``gateway.client.Sender``) only ever sends well-formed transfers. To prove
that a receiving daemon refuses what a broken or hostile partner could send, this module
drives ``xbgw.v1.PartnerGateway`` directly: it opens its own mutual-TLS channel with any
certificate (or none), builds XBGW-STREAM-1 headers with :func:`gateway.envelope.seal_header`
to whatever key reference it likes, and cuts, reorders, repeats or damages segments at will.

HSM signatures (passports with hand-made claims, manifests) are made in a child process
(:class:`TokenSigner`): SoftHSM binds one token directory per process through
``SOFTHSM2_CONF`` and python-pkcs11 initialises the module once per process, so the test
process never loads PKCS#11 itself. Run as ``python -m tests.system.rogue sign-digest ...``
the module is that child.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import envelope
from gateway._proto.xbgw.v1 import common_pb2, partner_pb2, partner_pb2_grpc
from gateway.keys import KeyRef, Purpose
from gateway.passport import DigestSigner, issue, passport_digest
from gateway.passport_claims import PassportClaims, XbgwClaims, scoped_jti
from gateway.signed import Signed, sign, verify

REPO_ROOT = Path(__file__).resolve().parents[2]
RPC_TIMEOUT = 30.0
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


# --- the channel ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsIdentity:
    """A client certificate chain and its private key, both PEM."""

    certificate: bytes
    private_key: bytes

    @classmethod
    def load(cls, certificate: Path, private_key: Path) -> TlsIdentity:
        return cls(certificate.read_bytes(), private_key.read_bytes())


class RogueClient:
    """A partner-service client whose every message is chosen by the test.

    ``identity=None`` makes a TLS channel without a client certificate. The send limit is
    left unlimited on purpose so that the *server's* receive limit is what gets tested.
    """

    def __init__(
        self,
        endpoint: str,
        server_ca: bytes,
        identity: TlsIdentity | None,
        server_name: str,
    ) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=server_ca,
            private_key=identity.private_key if identity else None,
            certificate_chain=identity.certificate if identity else None,
        )
        self.channel = grpc.secure_channel(
            endpoint,
            credentials,
            options=[
                ("grpc.ssl_target_name_override", server_name),
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
            ],
        )
        self.stub = partner_pb2_grpc.PartnerGatewayStub(self.channel)

    def __enter__(self) -> RogueClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def offer(self, passport: str, header: bytes) -> partner_pb2.OfferResponse:
        request = partner_pb2.OfferRequest(passport=passport, envelope_header=header)
        response: partner_pb2.OfferResponse = self.stub.Offer(request, timeout=RPC_TIMEOUT)
        return response

    def upload(self, segments: Iterable[partner_pb2.Segment]) -> partner_pb2.UploadResponse:
        response: partner_pb2.UploadResponse = self.stub.Upload(iter(segments), timeout=RPC_TIMEOUT)
        return response

    def finish(self, transfer_id: str, manifest: Signed) -> partner_pb2.FinishResponse:
        blob = common_pb2.SignedBlob(
            body=manifest.body, signature=manifest.signature, kid=manifest.kid
        )
        request = partner_pb2.FinishRequest(transfer_id=transfer_id, manifest=blob)
        response: partner_pb2.FinishResponse = self.stub.Finish(request, timeout=RPC_TIMEOUT)
        return response

    def transfer(self, transfer_id: str) -> partner_pb2.TransferStatus:
        request = partner_pb2.GetTransferRequest(transfer_id=transfer_id)
        response: partner_pb2.TransferStatus = self.stub.GetTransfer(request, timeout=RPC_TIMEOUT)
        return response

    def key_set(self, owner: str, pinned: ec.EllipticCurvePublicKey) -> partner_pb2.KeySet:
        """``owner``'s transport key set, verified under its pinned signing key."""
        response = self.stub.GetKeySet(partner_pb2.GetKeySetRequest(), timeout=RPC_TIMEOUT)
        blob = response.key_set
        verify(Signed(blob.body, blob.signature, blob.kid), pinned, owner, "key set")
        key_set = partner_pb2.KeySet.FromString(blob.body)
        if key_set.gateway_id != owner:
            raise ValueError(f"key set names {key_set.gateway_id!r}, expected {owner!r}")
        return key_set


def transport_key(key_set: partner_pb2.KeySet) -> tuple[int, ec.EllipticCurvePublicKey]:
    """The current transport key version of a verified key set and its public key."""
    current = next(k for k in key_set.keys if k.version == key_set.current_version)
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), current.public_point)
    return current.version, public


# --- one transfer, built by hand -----------------------------------------------------------


@dataclass(frozen=True)
class HandTransfer:
    """A passport, a header sealed to the receiver, and the data key to encrypt with."""

    passport: str
    header: envelope.Header
    data_key: bytes

    @classmethod
    def seal(
        cls,
        passport: str,
        transfer_id: str,
        sender: str,
        receiver: KeyRef,
        receiver_public: ec.EllipticCurvePublicKey,
        segment_size: int,
    ) -> HandTransfer:
        """Seal a fresh data key to ``receiver`` (any version: the point is not checked)."""
        context = envelope.StreamContext(
            transfer_id, sender, receiver.owner, passport_digest(passport)
        )
        header, data_key = envelope.seal_header(
            context, receiver, receiver_public, segment_size=segment_size
        )
        return cls(passport, header, data_key)

    @property
    def transfer_id(self) -> str:
        return self.header.context.transfer_id

    @property
    def header_bytes(self) -> bytes:
        return self.header.encode()

    @property
    def segment_size(self) -> int:
        return self.header.segment_size

    def segment(self, index: int, plaintext: bytes, final: bool) -> partner_pb2.Segment:
        """Segment ``index`` encrypted correctly (the caller chooses what to break)."""
        ciphertext = envelope.StreamEncryptor(self.header, self.data_key).encrypt_segment(
            index, plaintext, final
        )
        return partner_pb2.Segment(
            transfer_id=self.transfer_id, index=index, final=final, ciphertext=ciphertext
        )

    def segments(self, plaintext: bytes) -> list[partner_pb2.Segment]:
        """Every segment of ``plaintext``, in order, the last one final."""
        size = self.segment_size
        pieces = [plaintext[i : i + size] for i in range(0, len(plaintext), size)] or [b""]
        return [
            self.segment(index, piece, index == len(pieces) - 1)
            for index, piece in enumerate(pieces)
        ]

    def manifest(
        self,
        plaintext: bytes,
        receiver: str,
        *,
        plaintext_sha256: bytes | None = None,
    ) -> partner_pb2.Manifest:
        """The manifest a correct sender would sign for ``plaintext`` (digest overridable)."""
        size = self.segment_size
        return partner_pb2.Manifest(
            transfer_id=self.transfer_id,
            sender=self.header.context.sender_id,
            receiver=receiver,
            header_core_digest=self.header.core_digest(),
            passport_digest=passport_digest(self.passport),
            plaintext_sha256=plaintext_sha256 or hashlib.sha256(plaintext).digest(),
            plaintext_size=len(plaintext),
            segment_count=max(1, -(-len(plaintext) // size)),
        )


def flip_bit(data: bytes, position: int) -> bytes:
    """``data`` with one bit flipped (``position`` counts bits from the start)."""
    damaged = bytearray(data)
    damaged[position // 8] ^= 1 << (position % 8)
    return bytes(damaged)


def sign_manifest(signer: DigestSigner, owner: str, manifest: partner_pb2.Manifest) -> Signed:
    return sign(
        signer,
        KeyRef(owner, Purpose.SIGNING, 1),
        manifest.SerializeToString(deterministic=True),
    )


# --- passports with hand-made claims ---------------------------------------------------------


def claims(
    *,
    issuer: str,
    sender: str,
    receiver: str,
    src: str,
    dst: str,
    byte_limit: int,
    jti: str,
    not_before: int | None = None,
    expires: int | None = None,
) -> PassportClaims:
    """Claims as ``xbgw passport issue`` would make them, with any validity window."""
    now = int(time.time())
    nbf = now - 5 if not_before is None else not_before
    return PassportClaims(
        iss=issuer,
        jti=scoped_jti(issuer, jti),
        iat=nbf,
        nbf=nbf,
        exp=now + 3600 if expires is None else expires,
        aud=receiver,
        xbgw=XbgwClaims(
            sender=sender,
            src=src,
            dst=dst,
            classification="general",
            pi="none",
            subjects=0,
            purpose="demo transfer",
            legal_basis="CAC-SC-2026-0042",
            byte_limit=byte_limit,
        ),
    )


def hand_passport(passport_claims: PassportClaims, signer: DigestSigner, kid: str) -> str:
    return issue(passport_claims, signer, KeyRef.parse(kid))


# --- HSM signatures in a child process -------------------------------------------------------


@dataclass(frozen=True)
class TokenSigner:
    """A ``DigestSigner`` whose every signature is made in a child process on one token.

    The child gets ``SOFTHSM2_CONF`` for this token only; this process never loads PKCS#11.
    """

    softhsm_conf: Path
    token: str
    pin_file: Path
    module: str = SOFTHSM_MODULE

    def sign_digest(self, version: int, digest: bytes) -> bytes:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.system.rogue",
                "sign-digest",
                "--module",
                self.module,
                "--token",
                self.token,
                "--pin-file",
                str(self.pin_file),
                "--version",
                str(version),
                digest.hex(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            env={**os.environ, "SOFTHSM2_CONF": str(self.softhsm_conf)},
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"signing in {self.token} failed: {done.stderr.strip()}")
        return bytes.fromhex(done.stdout.strip())


def _sign_digest_main(args: argparse.Namespace) -> int:
    from gateway.hsm import Hsm
    from gateway.secrets import PinSource

    digest = bytes.fromhex(args.digest)
    with Hsm.open(args.module, args.token, PinSource("file", args.pin_file).read()) as hsm:
        signature = hsm.sign_digest(args.version, digest)
    print(signature.hex())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.system.rogue")
    verbs = parser.add_subparsers(dest="verb", required=True)
    signer = verbs.add_parser("sign-digest", help="ECDSA-sign a SHA-256 digest in the HSM")
    signer.add_argument("--module", default=SOFTHSM_MODULE)
    signer.add_argument("--token", required=True)
    signer.add_argument("--pin-file", required=True)
    signer.add_argument("--version", type=int, required=True)
    signer.add_argument("digest", help="hex SHA-256 digest")
    args = parser.parse_args(argv)
    return _sign_digest_main(args)


if __name__ == "__main__":
    sys.exit(main())
