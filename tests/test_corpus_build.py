"""The corpus build on real photos and the paper's released labels: accounting, joins, versions."""

from __future__ import annotations

import base64
import csv
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.corpus.build import build_version
from pipeline.corpus.config import CorpusBuildConfig, LabelSourcesConfig
from pipeline.corpus.manifest import CorpusError, load_manifest
from pipeline.corpus.read import read_corpus, read_metadata_table, version_files
from pipeline.corpus.stats import corpus_stats
from pipeline.rejects import RejectReason
from pipeline.sources.image_folder import read_file_records
from pipeline.sources.msceleb_tsv import encode_face_rectangle
from pipeline.status_write import ROW_GROUP_ROWS
from pipeline.storage import Location
from pipeline.vocabulary import OPENFACE_AUS


def rejects(corpus: str, version: int) -> list[dict]:
    manifest = load_manifest(corpus)
    entry = manifest.versions[version - 1]
    root = Location.of(corpus)
    files = root.join(entry.rejects_dir).list_files()
    return [row for f in files for row in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, shared_data) -> Path:
    """9 people's photos in sub-folders, plus every kind of bad file."""
    folder = tmp_path_factory.mktemp("photos")
    celebrities = shared_data / "faces" / "celebrities"
    with open(celebrities / "identities.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows[::3]:  # 18 of the 52 photos, all 9 people
        (folder / row["identity"]).mkdir(exist_ok=True)
        shutil.copy(celebrities / row["image"], folder / row["identity"] / row["image"])
    bad = folder / "badfiles"
    bad.mkdir()
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "corrupt.jpg").write_bytes(b"this is not an image at all" * 10)
    shutil.copy(
        shared_data / "faces" / "photos" / "free-mountain-vector-01.jpg", bad / "mountain.jpg"
    )
    first = rows[0]
    shutil.copy(celebrities / first["image"], bad / "same-bytes-as-another.jpg")
    (folder / "notes.txt").write_text("not an image: not an input row")
    return folder


@pytest.fixture(scope="module")
def folder_corpus(tmp_path_factory, photo_folder, ray_local) -> tuple[str, object]:
    corpus = str(tmp_path_factory.mktemp("corpus") / "c")
    entry = build_version(CorpusBuildConfig(corpus=corpus, images=str(photo_folder)), append=False)
    return corpus, entry


def test_rows_read_equal_accepted_plus_rejected(folder_corpus, photo_folder):
    corpus, entry = folder_corpus
    image_files = [p for p in photo_folder.rglob("*") if p.suffix == ".jpg"]
    assert entry.rows_read == len(image_files)
    assert entry.accepted + entry.rejected == entry.rows_read
    assert read_corpus(corpus, labelled_only=False).count() == entry.accepted
    assert len(rejects(corpus, 1)) == entry.rejected


def test_every_bad_file_is_a_counted_reject_with_its_reason(folder_corpus):
    corpus, entry = folder_corpus
    by_file = {Path(r["source"]).name: r["reject_reason"] for r in rejects(corpus, 1)}
    assert by_file["zero.jpg"] == RejectReason.EMPTY_FILE.value
    assert by_file["corrupt.jpg"] == RejectReason.UNDECODABLE.value
    assert by_file["mountain.jpg"] == RejectReason.NO_FACE.value
    duplicates = [
        name for name, reason in by_file.items() if reason == RejectReason.DUPLICATE.value
    ]
    assert len(duplicates) == 1  # one of the two identical files, whichever came second
    assert sum(entry.reject_counts.values()) == entry.rejected


def test_accepted_rows_are_64x64_faces_with_identity_from_folder(folder_corpus):
    corpus, entry = folder_corpus
    table = read_metadata_table(
        corpus, columns=["identity", "face", "split", "label_source", "AU01"]
    )
    assert table.num_rows == entry.accepted >= 12  # most of the 18 web photos have a findable face
    assert {len(f) for f in table.column("face").to_pylist()} == {64 * 64}
    identities = table.column("identity").to_pylist()
    # Of the two identical files, whichever was processed first is kept (maybe the badfiles copy).
    assert set(identities) <= {f"person{i:02d}" for i in range(9)} | {"badfiles"}
    assert identities.count("badfiles") <= 1
    assert set(table.column("label_source").to_pylist()) == {"none"}  # no label source given
    assert table.column("AU01").null_count == table.num_rows


def test_add_skips_images_already_present_and_never_rewrites_old_shards(
    folder_corpus, tmp_path, shared_data
):
    corpus, first = folder_corpus
    before = {f: Path(corpus, f).stat().st_mtime_ns for f in first.data_files}
    batch = tmp_path / "batch"
    (batch / "new").mkdir(parents=True)
    old = next(Path(corpus).parent.parent.glob("photos*/person00/*.jpg"), None)
    if old is None:  # module fixture folders live elsewhere; fall back to the original photo
        old = shared_data / "faces" / "celebrities" / "img1.jpg"
    shutil.copy(old, batch / "new" / "again.jpg")
    shutil.copy(shared_data / "faces" / "photos" / "single_face.jpg", batch / "new" / "fresh.jpg")
    second = build_version(CorpusBuildConfig(corpus=corpus, images=str(batch)), append=True)
    assert second.version == 2 and second.rows_read == 2
    assert second.reject_counts.get(RejectReason.DUPLICATE.value) == 1
    assert second.accepted == 1
    assert {f: Path(corpus, f).stat().st_mtime_ns for f in first.data_files} == before
    assert read_corpus(corpus, version=1, labelled_only=False).count() == first.accepted
    assert read_corpus(corpus, version=2, labelled_only=False).count() == first.accepted + 1
    with pytest.raises(CorpusError, match="already holds versions"):
        build_version(CorpusBuildConfig(corpus=corpus, images=str(batch)), append=False)


def test_half_written_version_is_invisible_and_a_rerun_completes_it(
    tmp_path, shared_data, ray_local
):
    corpus = str(tmp_path / "c")
    photos = tmp_path / "in"
    photos.mkdir()
    shutil.copy(shared_data / "faces" / "photos" / "single_face.jpg", photos / "a.jpg")
    build_version(CorpusBuildConfig(corpus=corpus, images=str(photos)), append=False)
    # A crash after writing shards of version 2 but before the manifest commit:
    crashed = Path(corpus) / "versions" / "v0002" / "status=accepted"
    crashed.mkdir(parents=True)
    shutil.copy(
        next((Path(corpus) / "versions" / "v0001" / "status=accepted").glob("*.parquet")),
        crashed / "x.parquet",
    )
    assert load_manifest(corpus).latest == 1
    assert read_corpus(corpus, labelled_only=False).count() == 1
    shutil.copy(shared_data / "faces" / "photos" / "multi_face.jpg", photos / "b.jpg")
    entry = build_version(CorpusBuildConfig(corpus=corpus, images=str(photos)), append=True)
    assert entry.version == 2
    assert not (crashed / "x.parquet").exists()
    assert entry.accepted == 1 and entry.reject_counts == {RejectReason.DUPLICATE.value: 1}


def test_shards_hold_whole_row_groups_without_statistics_of_face_bytes(
    tmp_path, photo_folder, ray_local
):
    """A face-stage batch of 2 rows must not become a row group of 2 rows (footers grow with
    the row groups, and every read parses them); the faces' bytes get no min/max statistics."""
    corpus = str(tmp_path / "c")
    build_version(
        CorpusBuildConfig(corpus=corpus, images=str(photo_folder), batch_size=2), append=False
    )
    root, files = version_files(corpus)
    assert files
    for path in files:
        metadata = pq.ParquetFile(path, filesystem=root.fs).metadata
        assert metadata.num_row_groups == math.ceil(metadata.num_rows / ROW_GROUP_ROWS)
        group = metadata.row_group(0)
        columns = {
            group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)
        }
        assert not columns["face"].is_stats_set
        assert columns["identity"].statistics.has_min_max


def test_tsv_with_released_labels_joins_by_name(tmp_path, shared_data, ray_local):
    release = shared_data / "facs_release"
    with open(release / "test_label.csv") as handle:
        label_rows = [row for _, row in zip(range(6), csv.reader(handle), strict=False)]
    photos = sorted((shared_data / "faces" / "celebrities").glob("img*.jpg"))
    lines = []
    for row, photo in zip(label_rows, photos, strict=False):
        mid, rest = row[0].rsplit("_", 1)
        rank, face_id = rest.removesuffix(".jpg").split("-FaceId-")
        data = base64.b64encode(photo.read_bytes()).decode()
        lines.append(
            "\t".join([mid, rank, "u", "p", face_id, encode_face_rectangle(0, 0, 1, 1), data])
        )
    unlabelled = base64.b64encode(photos[10].read_bytes()).decode()
    lines.append(
        "\t".join(["m.0nolabel", "1", "u", "p", "0", encode_face_rectangle(0, 0, 1, 1), unlabelled])
    )
    tsv = tmp_path / "FaceImageCroppedWithAlignment.tsv"
    tsv.write_text("\n".join(lines) + "\n")

    corpus = str(tmp_path / "c")
    config = CorpusBuildConfig(
        corpus=corpus,
        tsv=[str(tsv)],
        labels=LabelSourcesConfig(release_csv=[str(release / "test_label.csv")]),
    )
    entry = build_version(config, append=False)
    assert entry.rows_read == len(lines)
    assert entry.reject_counts.get(RejectReason.NO_LABEL.value) == 1
    table = read_metadata_table(
        corpus, columns=["image_name", "gender", "label_source", *OPENFACE_AUS]
    )
    expected = {row[0]: row for row in label_rows}
    assert table.num_rows >= 4
    for got in table.to_pylist():
        row = expected[got["image_name"]]
        assert got["gender"] == {"0": "female", "1": "male"}[row[2]]
        assert [got[au] for au in OPENFACE_AUS] == [int(v) for v in row[3:20]]  # AU45 dropped
        assert got["label_source"] == "release_csv"


def test_stats_table_ii_adds_up(folder_corpus):
    corpus, _ = folder_corpus
    stats = corpus_stats(corpus, 1)
    cells = [cell for row in stats["table_ii"].values() for cell in row.values()]
    assert (
        sum(c["images"] for c in cells)
        == stats["images"]
        == load_manifest(corpus).versions[0].accepted
    )
    assert sum(stats["splits"].values()) == stats["images"]


def test_build_on_s3(tmp_path, shared_data, s3_bucket, ray_local):
    import boto3

    client = boto3.client("s3")
    for name in ("single_face.jpg", "free-mountain-vector-01.jpg"):
        client.upload_file(
            str(shared_data / "faces" / "photos" / name), s3_bucket, f"images/personA/{name}"
        )
    corpus = f"s3://{s3_bucket}/corpus"
    entry = build_version(
        CorpusBuildConfig(corpus=corpus, images=f"s3://{s3_bucket}/images"), append=False
    )
    assert (entry.rows_read, entry.accepted, entry.rejected) == (2, 1, 1)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert "corpus/manifest.json" in keys
    assert any(k.startswith("corpus/versions/v0001/status=accepted/") for k in keys)
    assert read_corpus(corpus, labelled_only=False).count() == 1
    assert corpus_stats(corpus)["images"] == 1


def test_a_file_gone_between_listing_and_reading_is_a_counted_read_error(tmp_path):
    person = tmp_path / "person01"
    person.mkdir()
    (person / "here.jpg").write_bytes(b"\xff\xd8 some bytes")
    blocks = list(
        read_file_records(
            pafs.LocalFileSystem(),
            [str(person / "here.jpg"), str(person / "gone.jpg")],
            str(tmp_path),
            None,
            "",
        )
    )
    rows = pa.concat_tables(blocks).to_pydict()
    assert rows["image_name"] == ["here.jpg", "gone.jpg"]
    assert rows["identity"] == ["person01", "person01"]
    assert rows["data"] == [b"\xff\xd8 some bytes", b""]
    assert rows["reject_reason"] == [None, RejectReason.READ_ERROR.value]
