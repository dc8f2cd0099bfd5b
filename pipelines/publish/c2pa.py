"""Signed C2PA manifests on published PNGs (c2pa-python ``Builder`` + ``Signer``), read back with ``Reader``.

Credentials: a certificate chain (PEM, end-entity first) and its private key, as file paths from the
job spec (``provenance.c2pa.cert`` / ``key``) or from ``SYNTHGEN_C2PA_CERT`` / ``SYNTHGEN_C2PA_KEY``
(e.g. a mounted secret). Only paths travel; the key is read where it signs and never logged or
recorded. Without either, a development chain (a root CA and an ES256 end-entity certificate) is made
at first use with ``cryptography`` and cached per user (``SYNTHGEN_C2PA_DEV_DIR``, default
``~/.cache/synthgen/c2pa``): C2PA validation accepts it except that its root is not trusted.

Determinism: the claim is a pure function of the sample (fixed manifest label and instance id, no
time-stamp authority, no thumbnail), but the C2PA SDK salts every assertion box with 16 random bytes
and there is no setting to fix them, so the signed bytes differ between runs. Byte identity of a
signed image is therefore defined as: identical bytes once the manifest store is removed
(``strip_manifest``: pixels, IPTC XMP and text chunks) plus an identical claim (``claim_digest``).
``canonical_shard`` applies that to a whole shard.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import io
import json
import os
import struct
import tempfile
import uuid
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

CREATED = "c2pa.created"
MANIFEST_CHUNK = b"caBX"  # the PNG chunk that holds a C2PA manifest store


class SigningError(RuntimeError):
    pass


@dataclass(frozen=True)
class SigningKey:
    """Where the chain and key are (paths: a real key stays in files every worker mounts). The
    development chain also travels inline (``dev``), so workers on other machines sign with the same
    untrusted chain; ``repr`` never shows it."""

    cert: str
    key: str
    dev: bool = False
    inline: tuple[bytes, bytes] | None = field(default=None, repr=False)

    def chain_pem(self) -> bytes:
        return self.inline[0] if self.inline else Path(self.cert).read_bytes()

    def key_pem(self) -> bytes:
        return self.inline[1] if self.inline else Path(self.key).read_bytes()

    def describe(self) -> dict[str, Any]:
        """What provenance may say about the signer: subject, issuer, fingerprint. Never the key."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        cert = x509.load_pem_x509_certificates(self.chain_pem())[0]
        return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
                "sha256": cert.fingerprint(hashes.SHA256()).hex(),
                "development_chain": self.dev, "public_key": _key_kind(cert.public_key())}


def software_version() -> str:
    try:
        return importlib.metadata.version("synthgen")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def dev_dir() -> Path:
    base = os.environ.get("SYNTHGEN_C2PA_DEV_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "synthgen" / "c2pa"


def dev_chain(directory: Path | None = None) -> SigningKey:
    """The local development chain, made once (atomically: concurrent workers end with one chain)."""
    d = directory or dev_dir()
    if not (d / "chain.pem").exists():
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".c2pa-", dir=d.parent))
        _write_dev_chain(tmp)
        try:
            os.rename(tmp, d)
        except OSError:  # another process made it first
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    return SigningKey(str(d / "chain.pem"), str(d / "key.pem"), dev=True,
                      inline=((d / "chain.pem").read_bytes(), (d / "key.pem").read_bytes()))


def _write_dev_chain(d: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "synthgen development (untrusted)")])

    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    end = start + datetime.timedelta(days=3650)
    root_key, ee_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = name("synthgen dev root CA")
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    ee = (x509.CertificateBuilder().subject_name(name("synthgen dev signer")).issuer_name(root.subject)
          .public_key(ee_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                       crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ee_key.public_key()), critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
          .sign(root_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (d / "chain.pem").write_bytes(ee.public_bytes(pem) + root.public_bytes(pem))
    (d / "root.pem").write_bytes(root.public_bytes(pem))
    key = d / "key.pem"
    key.touch(mode=0o600)
    key.write_bytes(ee_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def resolve_key(cert: str | None, key: str | None) -> SigningKey:
    """Spec paths, else the environment's, else the development chain; a missing file is an error."""
    cert = cert or os.environ.get("SYNTHGEN_C2PA_CERT")
    key = key or os.environ.get("SYNTHGEN_C2PA_KEY")
    if not cert and not key:
        return dev_chain()
    if not (cert and key):
        raise SigningError("C2PA signing needs both a certificate chain and a key "
                           "(provenance.c2pa.cert/key or SYNTHGEN_C2PA_CERT/SYNTHGEN_C2PA_KEY)")
    for what, p in (("certificate chain", cert), ("private key", key)):
        if not Path(p).is_file():
            raise SigningError(f"C2PA {what} file not found: {p}")
    return SigningKey(cert, key)


def _key_kind(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec

    return f"EC {key.curve.name}" if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__


def _alg_of(key_pem: bytes) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    k = serialization.load_pem_private_key(key_pem, password=None)
    if isinstance(k, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}[k.curve.name]
    if isinstance(k, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(k, rsa.RSAPrivateKey):
        return "ps256"
    raise SigningError(f"C2PA private key of unsupported type {type(k).__name__}")


@lru_cache(maxsize=4)
def _context():
    import c2pa

    # No thumbnail (it would be bigger than a small image) and no time-stamp authority: the claim
    # depends on the sample only.
    return c2pa.Context(c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}}))


def _signer(sk: SigningKey):
    import c2pa

    try:
        key = sk.key_pem()
        info = c2pa.C2paSignerInfo(_alg_of(key).encode(), sk.chain_pem(), key, None)
        return c2pa.Signer.from_info(info)
    except (ValueError, OSError, c2pa.C2paError) as e:  # the message names no key material
        raise SigningError(f"C2PA signer could not be created from {sk.cert}: {type(e).__name__}") from None


def manifest_label(fingerprint: str, sample_id: str) -> uuid.UUID:
    """Fixed per sample; shaped as a version-4 UUID because the SDK accepts no other claim GUID."""
    digest = hashlib.sha256(f"synthgen-c2pa/{fingerprint}/{sample_id}".encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def definition(*, title: str, label: uuid.UUID, source_type: str, generator: dict[str, Any],
               sample: dict[str, Any]) -> dict[str, Any]:
    """The manifest: one ``c2pa.created`` action naming synthgen and the generator model, plus a
    synthgen assertion with the sample's identity."""
    version = software_version()
    return {
        "claim_generator_info": [{"name": "synthgen", "version": version}],
        "title": title, "format": "image/png",
        "label": f"urn:c2pa:{label}", "instance_id": f"xmp:iid:{label}",
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": [{
                "action": CREATED, "digitalSourceType": source_type,
                "softwareAgent": {"name": "synthgen", "version": version},
                "parameters": {"model": generator.get("model"), "weights_sha256": generator.get("weights_sha256"),
                               "backend": generator.get("backend")},
            }]}},
            {"label": "org.synthgen.sample", "data": sample},
        ],
    }


def sign_png(png: bytes, manifest: dict[str, Any], sk: SigningKey,
             ingredients: list[tuple[str, bytes]] = ()) -> bytes:
    """``png`` with ``manifest`` embedded and signed; ``ingredients`` are (title, image bytes) of the
    inputs (img2img, inpainting, style), each an ``inputTo`` ingredient."""
    import c2pa

    with c2pa.Builder(json.dumps(manifest), context=_context()) as builder:
        for title, data in ingredients:
            builder.add_ingredient({"title": title, "relationship": "inputTo"}, mime_of(data), io.BytesIO(data))
        out = io.BytesIO()
        builder.sign(_cached_signer(sk), "image/png", io.BytesIO(png), out)
    return out.getvalue()


@lru_cache(maxsize=4)
def _cached_signer(sk: SigningKey):
    return _signer(sk)


def mime_of(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise SigningError("C2PA ingredient is not a PNG, JPEG or WebP image")


def read_manifest(data: bytes, mime: str | None = None, trust_anchors: str | None = None) -> dict[str, Any] | None:
    """The active manifest and its validation, or None when the file has no manifest.

    ``state`` is c2pa's validation state (``Valid``: signature and hashes check, root not trusted;
    ``Trusted``: also chained to ``trust_anchors``; ``Invalid``); ``failures`` lists the failure codes
    apart from an untrusted signing credential."""
    import c2pa

    settings: dict[str, Any] = {"verify": {"verify_trust": True}}
    if trust_anchors:
        settings["trust"] = {"trust_anchors": trust_anchors}
    ctx = c2pa.Context(c2pa.Settings.from_dict(settings))
    try:
        reader = c2pa.Reader(mime or mime_of(data), io.BytesIO(data), context=ctx)
    except c2pa.C2paError as e:
        if "ManifestNotFound" in type(e).__name__ or "JumbfNotFound" in str(e) or "no JUMBF" in str(e).lower():
            return None
        raise
    with reader:
        store = json.loads(reader.json())
        state = reader.get_validation_state()
    active = store["manifests"][store["active_manifest"]]
    failures = [s["code"] for s in store.get("validation_status", []) if s["code"] != "signingCredential.untrusted"]
    return {"state": state, "failures": failures, "manifest": active,
            "untrusted": any(s["code"] == "signingCredential.untrusted" for s in store.get("validation_status", []))}


def actions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    for a in manifest.get("assertions", []):
        if a["label"].startswith("c2pa.actions"):
            return a["data"]["actions"]
    return []


def assertion(manifest: dict[str, Any], label: str) -> dict[str, Any] | None:
    return next((a["data"] for a in manifest.get("assertions", []) if a["label"] == label), None)


def _chunks(png: bytes):
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG")
    pos = 8
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos:pos + 4])
        yield png[pos + 4:pos + 8], png[pos:pos + 12 + n]
        pos += 12 + n


def strip_manifest(png: bytes) -> bytes:
    """The PNG without its C2PA manifest store: what must be byte-identical across reruns."""
    return b"\x89PNG\r\n\x1a\n" + b"".join(raw for kind, raw in _chunks(png) if kind != MANIFEST_CHUNK)


def claim_digest(png: bytes) -> str | None:
    """sha256 of the manifest's content as read back (assertion data, actions, ingredients' titles),
    without salts and signature: equal for the same sample signed twice."""
    got = read_manifest(png, "image/png")
    if got is None:
        return None
    m = dict(got["manifest"])
    for volatile in ("signature_info", "validation_results"):
        m.pop(volatile, None)
    m["ingredients"] = [{k: v for k, v in i.items() if k in ("title", "relationship", "format")}
                        for i in m.get("ingredients", [])]
    return hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()


def canonical_shard(key: str, data: bytes) -> bytes:
    """A shard with each PNG's manifest store removed (tar members or Parquet ``png`` column), for
    comparing datasets signed in different runs; other files come back unchanged."""
    if key.endswith(".tar"):
        import tarfile

        out = []
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            for m in tf.getmembers():
                body = tf.extractfile(m).read()  # type: ignore[union-attr]
                out.append(m.name.encode() + b"\0" + (strip_manifest(body) if m.name.endswith(".png") else body))
        return b"\0\0".join(out)
    if key.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        t = pq.read_table(io.BytesIO(data))
        if "png" not in t.column_names:
            return data
        pngs = [strip_manifest(p) if p else p for p in t.column("png").to_pylist()]
        t = t.set_column(t.column_names.index("png"), "png", pa.array(pngs, pa.binary()))
        return zlib.compress(json.dumps(t.to_pydict(), default=lambda b: b.hex(), sort_keys=True).encode())
    return data
