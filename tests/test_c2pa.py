"""C2PA: the local development chain, signing with c2pa-python, reading back with its Reader, hash
binding, composite labels with ingredients, and what stays identical when the same sample is signed twice."""

from __future__ import annotations

import io
import json
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from PIL import Image
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.generate.encode import COMPOSITE_SOURCE_TYPE, DIGITAL_SOURCE_TYPE, digital_source_type, encode_png
from pipelines.publish import c2pa
from pipelines.publish.c2pa import SigningError
from pipelines.publish.label import Labeller


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> c2pa.SigningKey:
    return c2pa.dev_chain(tmp_path_factory.mktemp("c2pa") / "dev")


def _png(seed: int = 0, size: int = 32) -> bytes:
    img = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    return encode_png(img, {"prompt": "a red circle", "seed": str(seed), "sample_id": f"s{seed}"})


def _record(sample_id: str = "s0", backend: str = "diffusion", size: int = 32) -> dict:
    return {"sample_id": sample_id, "prompt": "a red circle", "seed": 0,
            "generator": {"backend": backend, "model": "toy/diffusion", "weights_sha256": "ab" * 32},
            "image": {"format": "png", "width": size, "height": size, "pixel_sha256": "0" * 64},
            "ai_generated": {"digital_source_type": DIGITAL_SOURCE_TYPE}}


def test_dev_chain_has_the_extensions_c2pa_requires(chain, tmp_path):
    certs = x509.load_pem_x509_certificates(Path(chain.cert).read_bytes())
    ee, root = certs
    assert ee.issuer == root.subject and ee.subject != root.subject
    assert not ee.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = ee.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in ee.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert isinstance(ee.public_key(), ec.EllipticCurvePublicKey) and ee.public_key().curve.name == "secp256r1"
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE(Path(chain.key).stat().st_mode) == 0o600
    again = c2pa.dev_chain(Path(chain.cert).parent)  # made once, then reused
    assert Path(again.cert).read_bytes() == Path(chain.cert).read_bytes()
    desc = chain.describe()
    assert desc["development_chain"] and desc["public_key"] == "EC secp256r1"
    assert "PRIVATE" not in json.dumps(desc) and chain.key not in json.dumps(desc)
    assert "PRIVATE" not in repr(chain) and "PRIVATE" not in repr(Labeller("d", "f", chain))
    import pickle

    moved = pickle.loads(pickle.dumps(chain))  # as shard tasks on other machines receive it
    assert moved.key_pem() == Path(chain.key).read_bytes()


def test_signed_png_reads_back_valid_and_trusted_only_with_its_root(chain):
    lab = Labeller("ds", "fp0123", chain)
    png, rec = lab(_png(), _record(), {})
    got = c2pa.read_manifest(png)
    assert got["state"] == "Valid" and got["failures"] == [] and got["untrusted"]
    (act,) = c2pa.actions(got["manifest"])
    assert act["action"] == "c2pa.created" and act["digitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert act["softwareAgent"] == {"name": "synthgen", "version": c2pa.software_version()}
    assert act["parameters"]["model"] == "toy/diffusion" and act["parameters"]["weights_sha256"] == "ab" * 32
    sample = c2pa.assertion(got["manifest"], "org.synthgen.sample")
    assert sample["sample_id"] == "s0" and sample["fingerprint"] == "fp0123"
    assert rec["ai_generated"]["c2pa"]["manifest"] == got["manifest"]["label"]
    trusted = c2pa.read_manifest(png, trust_anchors=(Path(chain.cert).parent / "root.pem").read_text())
    assert trusted["state"] == "Trusted" and not trusted["untrusted"]
    # the labels under the manifest are intact: XMP source type, text chunks, pixels
    assert digital_source_type(png) == DIGITAL_SOURCE_TYPE
    assert Image.open(io.BytesIO(png)).info["seed"] == "0"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(Image.open(io.BytesIO(_png()))))
    assert c2pa.read_manifest(_png()) is None


def _with_pixels(png: bytes, pixels: np.ndarray) -> bytes:
    """``png`` with its image data replaced by ``pixels`` (a valid PNG), every other chunk kept."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    idat = b"".join(raw for kind, raw in c2pa._chunks(buf.getvalue()) if kind == b"IDAT")
    out, done = [], False
    for kind, raw in c2pa._chunks(png):
        if kind == b"IDAT":
            out.append(b"" if done else idat)
            done = True
        else:
            out.append(raw)
    return png[:8] + b"".join(out)


def test_a_modified_image_fails_its_hash_check(chain, tmp_path):
    png, _ = Labeller("ds", "fp", chain)(_png(), _record(), {})
    px = np.asarray(Image.open(io.BytesIO(png))).copy()
    px[3, 4, 0] ^= 1  # one pixel, one level
    bad = _with_pixels(png, px)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(bad))), px)  # a valid PNG with the old manifest
    got = c2pa.read_manifest(bad)
    assert got["state"] == "Invalid" and "assertion.dataHash.mismatch" in got["failures"]
    i = png.index(b"IDAT") + 40  # damaged bytes: the pixels do not decode, the manifest still fails
    broken = png[:i] + bytes([png[i] ^ 0xFF]) + png[i + 1:]
    assert "assertion.dataHash.mismatch" in c2pa.read_manifest(broken)["failures"]
    (tmp_path / "bad.png").write_bytes(bad)
    (tmp_path / "good.png").write_bytes(png)
    r = CliRunner().invoke(app, ["verify-image", str(tmp_path / "bad.png")])
    assert r.exit_code == 1 and "dataHash.mismatch" in r.output
    r = CliRunner().invoke(app, ["verify-image", str(tmp_path / "good.png")])
    assert r.exit_code == 0 and "c2pa: Valid" in r.output and "c2pa.created" in r.output


def test_img2img_and_style_are_composite_with_their_inputs_as_ingredients(chain, tmp_path):
    init = tmp_path / "init.png"
    init.write_bytes(_png(5))
    style = tmp_path / "style.png"
    style.write_bytes(_png(6))
    lab = Labeller("ds", "fp", chain)
    for backend, row in (("diffusion", {"init_image": str(init)}),
                         ("diffusion", {"init_image": str(init), "mask_image": str(style)}),
                         ("style", {"init_image": str(init), "style_image": str(style)})):
        png, rec = lab(_png(), _record(backend=backend), row)
        assert digital_source_type(png) == COMPOSITE_SOURCE_TYPE == rec["ai_generated"]["digital_source_type"]
        got = c2pa.read_manifest(png)
        assert got["state"] == "Valid" and got["failures"] == []
        assert c2pa.actions(got["manifest"])[0]["digitalSourceType"] == COMPOSITE_SOURCE_TYPE
        titles = sorted(i["title"] for i in got["manifest"]["ingredients"])
        assert titles == sorted(f"{k}: {Path(v).name}" for k, v in row.items())
        assert {i["relationship"] for i in got["manifest"]["ingredients"]} == {"inputTo"}
    png, rec = Labeller("ds", "fp", chain)(_png(), _record(backend="gan"), {})
    assert digital_source_type(png) == DIGITAL_SOURCE_TYPE


def test_signing_twice_differs_only_in_salts_and_signature(chain):
    lab = Labeller("ds", "fp", chain)
    a, ra = lab(_png(), _record(), {})
    b, rb = lab(_png(), _record(), {})
    assert a != b  # the SDK salts each assertion with random bytes: documented, not hidden
    assert ra == rb
    assert c2pa.strip_manifest(a) == c2pa.strip_manifest(b) == _png()
    assert c2pa.claim_digest(a) == c2pa.claim_digest(b) is not None
    c, _ = lab(_png(), _record("s1"), {})
    assert c2pa.claim_digest(c) != c2pa.claim_digest(a)

    def tar(png: bytes) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo("s0.png")
            info.size = len(png)
            tf.addfile(info, io.BytesIO(png))
        return buf.getvalue()
    assert tar(a) != tar(b) and c2pa.canonical_shard("x.tar", tar(a)) == c2pa.canonical_shard("x.tar", tar(b))


def test_credentials_come_from_spec_or_environment_and_missing_files_fail(chain, monkeypatch, tmp_path):
    monkeypatch.setenv("SYNTHGEN_C2PA_CERT", chain.cert)
    monkeypatch.setenv("SYNTHGEN_C2PA_KEY", chain.key)
    got = c2pa.resolve_key(None, None)
    assert (got.cert, got.key, got.dev) == (chain.cert, chain.key, False)
    png, _ = Labeller("ds", "fp", got)(_png(), _record(), {})
    assert c2pa.read_manifest(png)["state"] == "Valid"
    with pytest.raises(SigningError, match="not found"):
        c2pa.resolve_key(str(tmp_path / "nope.pem"), chain.key)
    monkeypatch.delenv("SYNTHGEN_C2PA_KEY")
    with pytest.raises(SigningError, match="both"):
        c2pa.resolve_key(None, None)
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(Exception) as e:
        Labeller("ds", "fp", c2pa.SigningKey(chain.cert, str(bad)))(_png(), _record(), {})
    assert "not a key" not in str(e.value)


def _dataset(root: Path, pngs: dict[str, bytes]) -> None:
    """A minimal published dataset: one WebDataset shard and its index."""
    import hashlib

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, png in sorted(pngs.items()):
            info = tarfile.TarInfo(f"{name}.png")
            info.size = len(png)
            tf.addfile(info, io.BytesIO(png))
    (root / "shards").mkdir(parents=True)
    (root / "shards" / "d-000000.tar").write_bytes(buf.getvalue())
    entry = {"files": {"shards/d-000000.tar": {"sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
                                               "bytes": len(buf.getvalue())}}, "count": len(pngs)}
    (root / "index.json").write_text(json.dumps({"job": {"name": "d", "fingerprint": "fp"}, "shards": [entry],
                                                 "files": {}, "counts": {"kept": len(pngs)}}))


def test_verify_same_as_accepts_a_resigned_rerun_and_rejects_changed_pixels(chain, tmp_path):
    from pipelines.publish.compare import compare

    lab = Labeller("d", "fp", chain)
    _dataset(tmp_path / "a", {f"s{i}": lab(_png(i), _record(f"s{i}"), {})[0] for i in range(3)})
    _dataset(tmp_path / "b", {f"s{i}": lab(_png(i), _record(f"s{i}"), {})[0] for i in range(3)})
    assert (tmp_path / "a/shards/d-000000.tar").read_bytes() != (tmp_path / "b/shards/d-000000.tar").read_bytes()
    assert compare(str(tmp_path / "a"), str(tmp_path / "b")) == ([], 1)
    r = CliRunner().invoke(app, ["verify", str(tmp_path / "a"), "--same-as", str(tmp_path / "b")])
    assert r.exit_code == 0 and "same data" in r.output
    px = (np.random.default_rng(2).random((32, 32, 3)) * 255).astype(np.uint8)
    px[0, 0, 0] ^= 1
    changed = encode_png(px, {"prompt": "a red circle", "seed": "2", "sample_id": "s2"})
    _dataset(tmp_path / "c", {**{f"s{i}": lab(_png(i), _record(f"s{i}"), {})[0] for i in range(2)},
                              "s2": lab(changed, _record("s2"), {})[0]})
    problems, _ = compare(str(tmp_path / "a"), str(tmp_path / "c"))
    assert problems == ["shards/d-000000.tar: differs"]
    r = CliRunner().invoke(app, ["verify", str(tmp_path / "a"), "--same-as", str(tmp_path / "c")])
    assert r.exit_code == 1


@pytest.mark.parametrize("kind", ["es384", "ed25519", "ps256"])
def test_a_given_key_signs_with_the_algorithm_of_its_type(kind, tmp_path):
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    end = start + datetime.timedelta(days=30)
    rk = ec.generate_private_key(ec.SECP256R1())
    root = (x509.CertificateBuilder().subject_name(name("root")).issuer_name(name("root")).public_key(rk.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(rk, hashes.SHA256()))
    ek = {"es384": lambda: ec.generate_private_key(ec.SECP384R1()), "ed25519": ed25519.Ed25519PrivateKey.generate,
          "ps256": lambda: rsa.generate_private_key(65537, 2048)}[kind]()
    ee = (x509.CertificateBuilder().subject_name(name("signer")).issuer_name(root.subject).public_key(ek.public_key())
          .serial_number(2).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(rk.public_key()), critical=False)
          .sign(rk, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (tmp_path / "chain.pem").write_bytes(ee.public_bytes(pem) + root.public_bytes(pem))
    (tmp_path / "key.pem").write_bytes(ek.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    sk = c2pa.resolve_key(str(tmp_path / "chain.pem"), str(tmp_path / "key.pem"))
    assert not sk.dev and sk.inline is None  # a real key stays in its file
    got = c2pa.read_manifest(Labeller("ds", "fp", sk)(_png(), _record(), {})[0])
    assert got["state"] == "Valid" and got["failures"] == []
    assert got["manifest"]["signature_info"]["alg"].lower() == kind
