"""Label readers (released CSVs, OpenFace outputs) and the table-backed Labeler."""

from __future__ import annotations

import csv
import pickle
import socket
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.labels import (
    DISFA_FOLD_SCHEMA,
    NO_LABEL,
    LabelBatch,
    Labeler,
    LabelFormatError,
    TableLabeler,
    read_disfa_fold_csv,
    read_openface_image_csvs,
    read_openface_sequence_csv,
    read_release_labels,
)
from pipeline.names import RELEASE_GENDER_CODES, frame_name, identity_of_msceleb_name
from pipeline.schema import LABEL_TABLE_SCHEMA
from pipeline.vocabulary import DISFA_AUS, OPENFACE_AUS

RELEASE_COLUMNS = ["image", "rectsize", "gender", *OPENFACE_AUS, "AU45"]


@pytest.fixture(scope="module")
def shared_data() -> Path:
    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not data.is_dir():
        pytest.skip(
            f"shared test data not found at {data} (expected ../shared next to the project)"
        )
    return data


@pytest.fixture(scope="module")
def release_dir(shared_data: Path) -> Path:
    return shared_data / "facs_release"


def _release_line(image: str, gender: str, aus: list[str]) -> str:
    """A release CSV line: 17 OpenFace AUs then AU45."""
    return ",".join([image, '"(0, 0, 300, 300)"', gender, *aus, "0"])


# ---------------------------------------------------------------- released pre-training labels


def test_release_test_labels_match_an_independent_csv_read(release_dir: Path) -> None:
    path = release_dir / "test_label.csv"
    with path.open(newline="") as f:
        raw = [dict(zip(RELEASE_COLUMNS, row, strict=True)) for row in csv.reader(f)]

    table = read_release_labels(str(path))

    assert table.schema.equals(LABEL_TABLE_SCHEMA)
    assert table.num_rows == len(raw) == 8530
    assert table["image_name"].to_pylist() == [row["image"] for row in raw]
    for au in OPENFACE_AUS:
        assert table[au].to_numpy().sum() == sum(row[au] == "1" for row in raw), au
    expected_gender = [RELEASE_GENDER_CODES[int(row["gender"])] for row in raw]
    assert table["gender"].to_pylist() == expected_gender
    assert table["label_reject"].null_count == table.num_rows
    assert set(table["label_source"].to_pylist()) == {"release_csv"}
    assert table["label_ref"][0].as_py() == f"{path}:1"
    assert table["label_ref"][8529].as_py() == f"{path}:8530"
    assert "AU45" not in table.column_names


def test_release_people_are_freebase_mids_with_a_biography(release_dir: Path) -> None:
    table = read_release_labels(str(release_dir / "test_label.csv"))
    names = table["image_name"].to_pylist()
    people = {identity_of_msceleb_name(name) for name in names}
    with zipfile.ZipFile(release_dir / "Bios.zip") as bios:
        with_biography = {"m." + Path(n).stem for n in bios.namelist() if n.endswith(".json")}
    # MIDs may contain "_" (m.0d27_dy): every person, split at the last "_", has a biography.
    assert people <= with_biography
    assert len(people) == 1920
    # The README's "1,869 people" splits at the first "_", merging e.g. m.0d27_dy into m.0d27,
    # and then 212 of those would-be people have no biography.
    first_split = {name.split("_", 1)[0] for name in names}
    assert len(first_split) == 1869
    assert not first_split <= with_biography


def test_release_header_file_gives_the_built_in_header_result(release_dir: Path) -> None:
    labels = str(release_dir / "test_label.csv")
    with_file = read_release_labels(labels, header_uri=str(release_dir / "labels.txt"))
    assert with_file.equals(read_release_labels(labels))


def test_release_header_file_decides_the_column_order(tmp_path: Path) -> None:
    header = ["gender", "image", "rectsize", *reversed(OPENFACE_AUS), "AU45"]
    (tmp_path / "labels.txt").write_text("Headers\n" + ",".join(header) + "\n")
    aus = ["1" if au in ("AU01", "AU28") else "0" for au in reversed(OPENFACE_AUS)]
    (tmp_path / "labels.csv").write_text(
        ",".join(["1", "m.0x_1-FaceId-0.jpg", '"(0, 0, 9, 9)"', *aus, "1"]) + "\n"
    )

    row = read_release_labels(
        str(tmp_path / "labels.csv"), str(tmp_path / "labels.txt")
    ).to_pylist()[0]

    assert row["image_name"] == "m.0x_1-FaceId-0.jpg"
    assert row["gender"] == "male"
    assert {au for au in OPENFACE_AUS if row[au] == 1} == {"AU01", "AU28"}


def test_release_row_with_wrong_column_count_names_file_line_and_expected_count(
    tmp_path: Path,
) -> None:
    good = _release_line("m.0a_1-FaceId-0.jpg", "0", ["0"] * 17)
    short = _release_line("m.0a_2-FaceId-0.jpg", "0", ["0"] * 16)
    path = tmp_path / "labels.csv"
    path.write_text("\n".join([good, good, short, good]) + "\n")

    with pytest.raises(LabelFormatError) as error:
        read_release_labels(str(path))

    message = str(error.value)
    assert f"{path}:3" in message
    assert "expected 21" in message
    assert "found 20" in message


def test_release_non_binary_au_values_become_counted_invalid_label_rejects(tmp_path: Path) -> None:
    ones = ["1"] * 17
    lines = [
        _release_line("m.0a_1-FaceId-0.jpg", "0", ones),
        _release_line("m.0a_2-FaceId-0.jpg", "1", ["NaN", *ones[1:]]),
        _release_line("m.0a_3-FaceId-0.jpg", "1", [*ones[:5], "", *ones[6:]]),
        _release_line("m.0a_4-FaceId-0.jpg", "0", [*ones[:16], "2"]),
        _release_line("m.0a_5-FaceId-0.jpg", "0", ["x", *ones[1:]]),
        _release_line("m.0a_6-FaceId-0.jpg", "7", ["0"] * 17),
    ]
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(lines) + "\n")

    table = read_release_labels(str(path))

    rejects = table["label_reject"].to_pylist()
    assert table.num_rows == len(lines)
    assert rejects == [
        None,
        "invalid label",
        "invalid label",
        "invalid label",
        "invalid label",
        None,
    ]
    rows = table.to_pylist()
    for row in rows[1:5]:
        assert all(row[au] is None for au in OPENFACE_AUS)
    assert all(rows[0][au] == 1 for au in OPENFACE_AUS)
    assert all(rows[5][au] == 0 for au in OPENFACE_AUS)
    assert rows[5]["gender"] is None  # an unknown gender code is not a reject
    assert rows[3]["label_ref"] == f"{path}:4"


def test_release_label_refs_count_physical_lines_past_blank_lines_and_crlf(tmp_path: Path) -> None:
    first = _release_line("m.0a_1-FaceId-0.jpg", "0", ["0"] * 17)
    second = _release_line("m.0a_2-FaceId-0.jpg", "1", ["1"] * 17)
    path = tmp_path / "labels.csv"
    path.write_bytes(f"{first}\r\n\r\n\r\n{second}\r\n".encode())

    table = read_release_labels(str(path))

    assert table["image_name"].to_pylist() == ["m.0a_1-FaceId-0.jpg", "m.0a_2-FaceId-0.jpg"]
    assert table["label_ref"].to_pylist() == [f"{path}:1", f"{path}:4"]
    assert table["AU28"].to_pylist() == [0, 1]


@pytest.mark.slow
def test_release_labels_read_from_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        for key, value in {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        lines = [_release_line(f"m.0a_{i}-FaceId-0.jpg", "1", ["1"] * 17) for i in range(3)]
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="labels")
        s3.put_object(Bucket="labels", Key="release/test_label.csv", Body="\n".join(lines).encode())

        table = read_release_labels("s3://labels/release/test_label.csv")
    finally:
        server.stop()

    assert table.num_rows == 3
    assert table["label_ref"][2].as_py() == "s3://labels/release/test_label.csv:3"
    assert table["gender"].to_pylist() == ["male"] * 3


# ---------------------------------------------------------------- released DISFA folds

FOLD_SUBJECTS = {
    1: {"SN002", "SN005", "SN006", "SN007", "SN012", "SN013", "SN016", "SN018", "SN026"},
    2: {"SN001", "SN003", "SN004", "SN009", "SN010", "SN011", "SN025", "SN029", "SN030"},
    3: {"SN008", "SN017", "SN021", "SN023", "SN024", "SN027", "SN028", "SN031", "SN032"},
}


def test_disfa_folds_are_the_papers_subject_independent_split(release_dir: Path) -> None:
    total_rows = 0
    for fold, subjects in FOLD_SUBJECTS.items():
        path = release_dir / f"fold{fold}_test.csv"
        table = read_disfa_fold_csv(str(path))
        with path.open(newline="") as f:
            raw = list(csv.reader(f))

        assert table.schema.equals(DISFA_FOLD_SCHEMA)
        assert table.num_rows == len(raw)
        assert set(table["subject"].to_pylist()) == subjects
        for offset, au in enumerate(DISFA_AUS, start=2):
            assert table[au].to_numpy().sum() == sum(row[offset] == "1" for row in raw), (fold, au)
        first = raw[0][0]  # e.g. RightVideoSN005_00003268.jpg
        assert table["subject"][0].as_py() == first[len("RightVideo") :].split("_")[0]
        assert table["frame"][0].as_py() == int(first.split("_")[1].split(".")[0])
        total_rows += table.num_rows

    assert len(set.union(*FOLD_SUBJECTS.values())) == 27  # so the three folds are disjoint
    assert total_rows == 130_814


def test_disfa_fold_value_that_is_not_binary_raises_naming_the_line(tmp_path: Path) -> None:
    good = 'RightVideoSN001_00000001.jpg,"(0,0,120,120)",' + ",".join(["0"] * 12)
    bad = 'RightVideoSN001_00000002.jpg,"(0,0,120,120)",' + ",".join(["0"] * 11 + ["3"])
    path = tmp_path / "fold.csv"
    path.write_text(f"{good}\n{bad}\n")

    with pytest.raises(LabelFormatError, match=rf"{path.name}:2"):
        read_disfa_fold_csv(str(path))


# ---------------------------------------------------------------- OpenFace outputs

REGRESSION_COLUMNS = [f"{au}_r" for au in OPENFACE_AUS if au != "AU28"] + ["AU45_r"]
PRESENCE_COLUMNS = [f"{au}_c" for au in OPENFACE_AUS] + ["AU45_c"]


def _write_openface_csv(
    path: Path,
    rows: list[dict],
    *,
    lead: tuple[str, ...] = ("frame", "face_id", "timestamp", "confidence", "success"),
    separator: str = ",",
    drop: tuple[str, ...] = (),
) -> Path:
    """An OpenFace-shaped CSV; each row gives frame/face/confidence/success and its present AUs."""
    header = [
        c for c in [*lead, "pose_Tx", *REGRESSION_COLUMNS, *PRESENCE_COLUMNS] if c not in drop
    ]
    lines = [separator.join(header)]
    for row in rows:
        values = {
            "frame": row.get("frame", 1),
            "face_id": row.get("face", 0),
            "face": row.get("face", 0),
            "timestamp": 0.04,
            "confidence": row.get("confidence", 0.98),
            "success": row.get("success", 1),
            "pose_Tx": 12.5,
            **{column: 0.7 for column in REGRESSION_COLUMNS},
            **{column: int(column[:-2] in row.get("present", ())) for column in PRESENCE_COLUMNS},
        }
        lines.append(separator.join(str(values[column]) for column in header))
    path.write_text("\n".join(lines) + "\n")
    return path


def _present(row: dict) -> set[str]:
    return {au for au in OPENFACE_AUS if row[au] == 1}


@pytest.fixture(scope="module")
def real_openface(shared_data: Path) -> tuple[Path, list[str], list[list[str]]]:
    """The real FeatureExtraction CSV and its header and rows, split by hand."""
    path = shared_data / "faces" / "video" / "OpenFace_Test.csv"
    lines = path.read_text().splitlines()
    header = [name.strip() for name in lines[0].split(",")]
    rows = [[value.strip() for value in line.split(",")] for line in lines[1:] if line.strip()]
    return path, header, rows


def test_openface_real_feature_extraction_csv_matches_its_raw_text(real_openface) -> None:
    path, header, rows = real_openface

    table = read_openface_sequence_csv(str(path), video_stem="single_face")

    assert table.schema.equals(LABEL_TABLE_SCHEMA)
    assert table.num_rows == len(rows) == 100
    frame, confidence = header.index("frame"), header.index("confidence")
    assert table["image_name"].to_pylist() == [
        frame_name("single_face", int(r[frame]) - 1) for r in rows
    ]
    assert np.allclose(table["confidence"].to_numpy(), [float(r[confidence]) for r in rows])
    for au in ("AU01", "AU12", "AU25", "AU28"):
        raw = [int(float(r[header.index(f"{au}_c")])) for r in rows]
        assert table[au].to_pylist() == raw, au
    assert set(table["label_source"].to_pylist()) == {"openface_seq"}
    assert table["label_ref"][0].as_py() == f"{path}:2"


def test_openface_confidence_below_minimum_is_a_low_confidence_reject(real_openface) -> None:
    path, header, rows = real_openface
    confidence = header.index("confidence")
    low = [float(r[confidence]) < 0.9 for r in rows]
    assert 0 < sum(low) < len(rows)  # the real file has both kinds of rows

    table = read_openface_sequence_csv(str(path), video_stem="v", min_confidence=0.9)

    expected = ["low confidence" if is_low else None for is_low in low]
    assert table["label_reject"].to_pylist() == expected
    assert table.filter(np.array(low))["AU01"].null_count == sum(low)


def test_openface_sequence_frames_map_to_the_sorted_image_names(tmp_path: Path) -> None:
    path = _write_openface_csv(
        tmp_path / "seq.csv",
        [{"frame": 1, "present": ["AU01"]}, {"frame": 2, "present": ["AU02"]}, {"frame": 3}],
    )
    images = ["c.png", "a.jpg", "b.jpg"]

    table = read_openface_sequence_csv(str(path), image_names=images)

    assert table["image_name"].to_pylist() == ["a.jpg", "b.jpg", "c.png"]
    assert [_present(row) for row in table.to_pylist()] == [{"AU01"}, {"AU02"}, set()]


def test_openface_frame_beyond_the_image_list_names_file_and_line(tmp_path: Path) -> None:
    path = _write_openface_csv(tmp_path / "seq.csv", [{"frame": 1}, {"frame": 2}, {"frame": 3}])

    with pytest.raises(LabelFormatError, match=r"seq.csv:4: frame 3 .*1\.\.2"):
        read_openface_sequence_csv(str(path), image_names=["a.jpg", "b.jpg"])


def test_openface_video_frames_are_named_by_zero_based_index(tmp_path: Path) -> None:
    path = _write_openface_csv(tmp_path / "v.csv", [{"frame": 1}, {"frame": 2}, {"frame": 3268}])

    table = read_openface_sequence_csv(str(path), video_stem="RightVideoSN005")

    assert table["image_name"].to_pylist() == [
        "RightVideoSN005_00000000.jpg",
        "RightVideoSN005_00000001.jpg",
        "RightVideoSN005_00003267.jpg",
    ]


def test_openface_sequence_needs_exactly_one_naming_scheme(tmp_path: Path) -> None:
    path = _write_openface_csv(tmp_path / "v.csv", [{"frame": 1}])
    with pytest.raises(ValueError, match="exactly one"):
        read_openface_sequence_csv(str(path))
    with pytest.raises(ValueError, match="exactly one"):
        read_openface_sequence_csv(str(path), image_names=["a.jpg"], video_stem="v")


def test_openface_new_header_with_face_id_keeps_the_most_confident_face_per_frame(
    tmp_path: Path,
) -> None:
    rows = [
        {"frame": 1, "face": 0, "confidence": 0.80, "present": ["AU04"]},
        {"frame": 1, "face": 1, "confidence": 0.95, "present": ["AU06", "AU12"]},
        {"frame": 2, "face": 0, "confidence": 0.90, "present": ["AU25"]},
    ]
    path = _write_openface_csv(tmp_path / "multi.csv", rows)
    assert path.read_text().startswith("frame,face_id,timestamp,confidence,success,")

    table = read_openface_sequence_csv(str(path), video_stem="v")

    assert table.num_rows == 2
    kept = table.to_pylist()
    assert [_present(row) for row in kept] == [{"AU06", "AU12"}, {"AU25"}]
    assert kept[0]["label_ref"] == f"{path}:3"
    assert kept[0]["confidence"] == pytest.approx(0.95)


def test_openface_failure_and_low_confidence_rows_are_rejects_with_null_aus(tmp_path: Path) -> None:
    rows = [
        {"frame": 1, "present": ["AU01"]},
        {"frame": 2, "success": 0, "confidence": 0.1, "present": ["AU01"]},
        {"frame": 3, "confidence": 0.5, "present": ["AU01"]},
        {"frame": 4, "confidence": 0.75, "present": ["AU01"]},
    ]
    path = _write_openface_csv(tmp_path / "seq.csv", rows, separator=", ", drop=("face_id",))

    table = read_openface_sequence_csv(str(path), video_stem="v")

    assert table["label_reject"].to_pylist() == [None, "openface failure", "low confidence", None]
    assert table["AU01"].to_pylist() == [1, None, None, 1]
    assert table["confidence"].to_numpy()[2] == pytest.approx(0.5)


def test_openface_missing_presence_columns_name_the_file_and_columns(tmp_path: Path) -> None:
    path = _write_openface_csv(tmp_path / "old.csv", [{"frame": 1}], drop=("AU28_c", "AU07_c"))

    with pytest.raises(LabelFormatError) as error:
        read_openface_sequence_csv(str(path), video_stem="v")

    message = str(error.value)
    assert "old.csv" in message
    assert "AU28_c" in message
    assert "AU07_c" in message


def test_openface_image_csvs_keep_the_most_confident_face_of_each_image(tmp_path: Path) -> None:
    image_lead = ("face", "confidence")  # FaceLandmarkImg's own header
    _write_openface_csv(
        tmp_path / "group.csv",
        [
            {"face": 0, "confidence": 0.85, "present": ["AU01"]},
            {"face": 1, "confidence": 0.99, "present": ["AU02"]},
            {"face": 2, "confidence": 0.60, "present": ["AU04"]},
        ],
        lead=image_lead,
    )
    _write_openface_csv(
        tmp_path / "old_style.csv", [{"confidence": 0.9, "present": ["AU45", "AU26"]}],
        lead=("face", "confidence"), separator=", ",
    )  # fmt: skip
    _write_openface_csv(
        tmp_path / "with_face_id.csv",
        [{"face": 0, "confidence": 0.7, "present": ["AU09"]}],
        lead=("face_id", "confidence", "success"),
    )
    _write_openface_csv(
        tmp_path / "second_face_wins.csv",
        [
            {"face": 0, "confidence": 0.80, "present": ["AU05"]},
            {"face": 1, "confidence": 0.90, "present": ["AU06"]},
        ],
        lead=image_lead,
    )
    _write_openface_csv(tmp_path / "no_face.csv", [], lead=image_lead)
    (tmp_path / "group_of_details.txt").write_text("not a csv")

    table = read_openface_image_csvs(str(tmp_path))

    assert table.schema.equals(LABEL_TABLE_SCHEMA)
    rows = {row["image_name"]: row for row in table.to_pylist()}
    assert set(rows) == {"group", "old_style", "with_face_id", "second_face_wins", "no_face"}
    assert _present(rows["group"]) == {"AU02"}
    assert rows["group"]["label_ref"] == f"{tmp_path / 'group.csv'}:3"
    assert _present(rows["second_face_wins"]) == {"AU06"}
    assert rows["second_face_wins"]["label_ref"] == f"{tmp_path / 'second_face_wins.csv'}:3"
    assert _present(rows["old_style"]) == {"AU26"}
    assert rows["with_face_id"]["label_reject"] == "low confidence"
    assert rows["no_face"]["label_reject"] == "openface failure"
    assert set(table["label_source"].to_pylist()) == {"openface_img"}


def test_openface_image_labels_join_images_by_stem(tmp_path: Path) -> None:
    _write_openface_csv(
        tmp_path / "m.0x_3-FaceId-0.csv", [{"present": ["AU12"]}], lead=("face", "confidence")
    )
    labeler = TableLabeler.from_tables([read_openface_image_csvs(str(tmp_path))])

    batch = labeler.label_batch(["photos/m.0x_3-FaceId-0.jpg"], np.zeros((1, 64, 64), np.uint8))

    assert batch.label_reject == [None]
    assert batch.au[0, OPENFACE_AUS.index("AU12")] == 1
    assert batch.au[0].sum() == 1


# ---------------------------------------------------------------- Labeler


def _label_rows(rows: list[dict], source: str = "test") -> pa.Table:
    """A label table from {image_name, present, reject, gender} dicts."""
    columns: dict[str, list] = {name: [] for name in LABEL_TABLE_SCHEMA.names}
    for line, row in enumerate(rows, start=1):
        reject = row.get("reject")
        columns["image_name"].append(row["image_name"])
        for au in OPENFACE_AUS:
            columns[au].append(None if reject else int(au in row.get("present", ())))
        columns["gender"].append(row.get("gender"))
        columns["confidence"].append(None)
        columns["label_source"].append(source)
        columns["label_reject"].append(reject)
        columns["label_ref"].append(f"{source}.csv:{line}")
    return pa.Table.from_pydict(columns, schema=LABEL_TABLE_SCHEMA)


def _bits(*aus: str) -> list[int]:
    return [int(au in aus) for au in OPENFACE_AUS]


def test_table_labeler_finds_names_with_or_without_extension() -> None:
    labeler = TableLabeler.from_tables(
        [
            _label_rows(
                [
                    {"image_name": "a.jpg", "present": ["AU01"], "gender": "male"},
                    {"image_name": "b", "present": ["AU02"]},
                ]
            )
        ]
    )

    batch = labeler.label_batch(["a", "dir/a.JPG", "b.png"], np.zeros((3, 64, 64), np.uint8))

    assert isinstance(batch, LabelBatch)
    assert batch.au.dtype == np.int8
    assert batch.au.tolist() == [_bits("AU01"), _bits("AU01"), _bits("AU02")]
    assert batch.gender == ["male", "male", None]
    assert batch.label_source == ["test", "test", "test"]
    assert batch.label_reject == [None, None, None]


def test_table_labeler_gives_no_label_for_unknown_names() -> None:
    labeler = TableLabeler.from_tables([_label_rows([{"image_name": "a.jpg"}])], name="lookup")

    batch = labeler.label_batch(["zzz.jpg", "a.jpg"], np.zeros((2, 64, 64), np.uint8))

    assert batch.label_reject == ["no label", None]
    assert batch.au[0].tolist() == [NO_LABEL] * 17
    assert batch.au[1].tolist() == [0] * 17
    assert batch.label_source == ["lookup", "test"]


def test_table_labeler_keeps_the_reject_of_a_rejected_row() -> None:
    labeler = TableLabeler.from_tables(
        [_label_rows([{"image_name": "a.jpg", "reject": "low confidence"}])]
    )

    batch = labeler.label_batch(["a.jpg"], np.zeros((1, 64, 64), np.uint8))

    assert batch.label_reject == ["low confidence"]
    assert batch.au[0].tolist() == [NO_LABEL] * 17


def test_table_labeler_keeps_the_first_of_duplicate_keys_and_counts_the_rest() -> None:
    first = _label_rows(
        [
            {"image_name": "a.jpg", "present": ["AU01"]},
            {"image_name": "a.png", "present": ["AU02"]},
        ],
        "one",
    )
    second = _label_rows([{"image_name": "a", "present": ["AU04"]}, {"image_name": "b.jpg"}], "two")

    labeler = TableLabeler.from_tables([first, second])

    assert labeler.duplicate_keys == 2
    assert len(labeler) == 2
    batch = labeler.label_batch(["a.jpg", "b.jpg"], np.zeros((2, 64, 64), np.uint8))
    assert batch.au[0].tolist() == _bits("AU01")
    assert batch.label_source == ["one", "two"]


def test_table_labeler_survives_pickling_unchanged() -> None:
    rows = [
        {"image_name": f"p{i}.jpg", "present": OPENFACE_AUS[: i % 17], "gender": "female"}
        for i in range(50)
    ]
    labeler = TableLabeler.from_tables([_label_rows(rows)])
    names = [f"p{i}" for i in range(0, 60, 3)]
    before = labeler.label_batch(names, np.zeros((len(names), 64, 64), np.uint8))

    clone = pickle.loads(pickle.dumps(labeler))
    after = clone.label_batch(names, np.zeros((len(names), 64, 64), np.uint8))

    assert np.array_equal(before.au, after.au)
    assert after.label_reject == before.label_reject
    assert Counter(after.label_reject)["no label"] == 3  # p51, p54, p57 are not in the table
    assert clone.name == labeler.name


def test_labeler_is_an_interface_and_label_batches_check_their_shape() -> None:
    with pytest.raises(TypeError):
        Labeler()  # type: ignore[abstract]
    with pytest.raises(ValueError, match="int8"):
        LabelBatch(
            au=np.zeros((2, 12), np.int8),
            gender=[None] * 2,
            label_source=["x"] * 2,
            label_reject=[None] * 2,
        )
    with pytest.raises(ValueError, match="entries"):
        LabelBatch(
            au=np.zeros((2, 17), np.int8),
            gender=[None],
            label_source=["x"] * 2,
            label_reject=[None] * 2,
        )


def test_key_index_finds_each_key_and_misses_the_rest() -> None:
    import pyarrow as pa

    from pipeline.labels.labeler import KeyIndex

    keys = [f"m.{k:05d}_1-FaceId-0" for k in range(5000)]
    index = KeyIndex(pa.array(keys))
    asked = [keys[4999], "absent", keys[0], keys[1234], ""]
    assert index.rows(asked).tolist() == [4999, -1, 0, 1234, -1]
    assert index.rows([]).tolist() == []
    assert KeyIndex(pa.array([], pa.string())).rows(["a"]).tolist() == [-1]


def test_key_index_tells_keys_apart_when_their_hashes_collide(monkeypatch) -> None:
    import numpy as np
    import pyarrow as pa

    import pipeline.labels.labeler as labeler

    monkeypatch.setattr(labeler, "_key_hashes", lambda keys: np.zeros(len(keys), np.uint64))
    index = labeler.KeyIndex(pa.array(["a", "b", "c"]))
    assert index.rows(["c", "a", "b", "d"]).tolist() == [2, 0, 1, -1]
