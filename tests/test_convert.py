"""``recbole-flame convert``: a user's own export (CSV, TSV, parquet, sequence file) as RecBole
atomic files in one command, and the one-line stops on the way there."""

from __future__ import annotations

import csv
import gzip
import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recbole_flame.cli import main
from recbole_flame.config import Config
from recbole_flame.data.convert import ConvertError, convert
from recbole_flame.data.datasets import check_id_fields, check_time_field, dataset_source
from recbole_flame.utils import ConfigError, DatasetNotFoundError
from tests.conftest import ML100K, N_USERS

BUNDLED_BEAUTY = (
    Path(__file__).resolve().parent.parent
    / "recbole_flame"
    / "datasets"
    / "amazon-beauty"
    / "amazon-beauty.inter.gz"
)
# The decompressed bundled file's sha256, as its ORIGIN.md records it (and as the authors'
# amazon-beauty.txt converts to, checked by hand).
BEAUTY_SHA256 = "173cbd10f28c6fe4fd31768f0996a9f862fb0b1852ad8b1c0307992e2fbf0ef6"


def _convert_cli(capsys, *args: str) -> tuple[int, list[str], str]:
    """``recbole-flame convert ARGS`` in-process: exit code, non-blank stderr lines, stdout."""
    code = main(["convert", *args])
    captured = capsys.readouterr()
    return code, [x for x in captured.err.splitlines() if x.strip()], captured.out


def _rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [line.rstrip("\n").split("\t") for line in f]


# --- sequences ------------------------------------------------------------------------------
def test_a_sequence_file_gives_one_row_per_item_with_its_position(tmp_path, capsys):
    src = tmp_path / "seq.txt"
    src.write_text("7 3 1 3\n2 5 9\n")
    code, err, out = _convert_cli(
        capsys, "--from=sequences", str(src), "--dataset=s", f"--data_path={tmp_path}"
    )
    assert code == 0, err
    assert _rows(tmp_path / "s" / "s.inter") == [
        ["user_id:token", "item_id:token", "timestamp:float"],
        ["7", "3", "0"],
        ["7", "1", "1"],
        ["7", "3", "2"],  # a repeated item is a new interaction at its own position
        ["2", "5", "0"],
        ["2", "9", "1"],
    ]
    assert "2 users, 4 items, 5 interactions" in out
    assert (tmp_path / "s" / "ORIGIN.md").is_file()


def test_a_sequence_file_from_windows_reads_the_same(tmp_path):
    # a byte-order mark and CRLF line ends, as a Windows editor saves the file
    src = tmp_path / "seq.txt"
    src.write_bytes("\ufeff7 3 1\r\n2 5 9\r\n".encode())
    rows = _rows(convert(src, "w", tmp_path, source="sequences").path)
    assert rows[1:] == [["7", "3", "0"], ["7", "1", "1"], ["2", "5", "0"], ["2", "9", "1"]]


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("1 2 3\n2 4 x5\n3 1 2\n", 2, "'x5' is not an id"),
        ("1 2 3\n2 4 5\n3\n", 3, "a user with no item"),
        ("1 2 3\n2 4 5\n1 6 7\n", 3, "user 1 already had a line"),
        ("1 2 3\n2 4 5\n\n4 -1 2\n", 4, "'-1' is not an id"),
    ],
)
def test_a_malformed_sequence_line_is_one_error_naming_the_line(
    tmp_path, capsys, text, line, words
):
    src = tmp_path / "seq.txt"
    src.write_text(text)
    code, err, _ = _convert_cli(
        capsys, "--from=sequences", str(src), "--dataset=s", f"--data_path={tmp_path}"
    )
    assert code == 2
    assert len(err) == 1, err
    assert f"{src} line {line}:" in err[0] and words in err[0], err[0]
    assert not (tmp_path / "s" / "s.inter").exists()  # nothing half-written


def test_sequence_file_gives_back_the_bundled_beauty_byte_for_byte(tmp_path, capsys):
    # The authors' amazon-beauty.txt is not shipped; its sequence text is rebuilt from the
    # bundled atomic file: users in file order, each user's items by their timestamp.
    sequences: dict[str, list[tuple[float, str]]] = {}
    with gzip.open(BUNDLED_BEAUTY, "rt", encoding="utf-8", newline="") as f:
        next(f)
        for line in f:
            user, item, stamp = line.rstrip("\n").split("\t")
            sequences.setdefault(user, []).append((float(stamp), item))
    src = tmp_path / "amazon-beauty.txt"
    with open(src, "w", encoding="utf-8", newline="\n") as f:
        for user, items in sequences.items():
            ordered = [item for _, item in sorted(items, key=lambda pair: pair[0])]
            f.write(" ".join([user, *ordered]) + "\n")
    code, err, out = _convert_cli(
        capsys, "--from=sequences", str(src), "--dataset=amazon-beauty", f"--data_path={tmp_path}"
    )
    assert code == 0, err
    written = (tmp_path / "amazon-beauty" / "amazon-beauty.inter").read_bytes()
    with gzip.open(BUNDLED_BEAUTY, "rb") as f:
        assert written == f.read()
    assert hashlib.sha256(written).hexdigest() == BEAUTY_SHA256
    assert "22,363 users, 12,101 items, 198,502 interactions" in out


def test_sequence_file_refuses_column_options(tmp_path, capsys):
    src = tmp_path / "seq.txt"
    src.write_text("1 2 3\n")
    code, err, _ = _convert_cli(
        capsys, "--from=sequences", str(src), "--dataset=s", f"--data_path={tmp_path}", "--user=a"
    )
    assert code == 2 and len(err) == 1 and "--user/--item/--time" in err[0]


# --- tables ---------------------------------------------------------------------------------
def _events(n_users: int = N_USERS) -> pd.DataFrame:
    """ml-100k's first users as a user's export has them: ``user,item,ts``."""
    inter = pd.read_csv(ML100K / "ml-100k.inter", sep="\t", dtype=str)
    users = sorted(inter["user_id:token"].unique(), key=int)[:n_users]
    inter = inter[inter["user_id:token"].isin(users)]
    return pd.DataFrame(
        {
            "user": inter["user_id:token"],
            "item": inter["item_id:token"],
            "ts": inter["timestamp:float"],
        }
    )


TINY_RUN = [
    "--epochs=1",
    "--MAX_ITEM_LIST_LENGTH=10",
    "--hidden_size=16",
    "--inner_size=32",
    "--n_layers=1",
    "--gpu_id=",
    "--state=INFO",
    "--show_progress=False",
]


def _module_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recbole_flame", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_issue_csv_trains_sasrec_after_one_convert(tmp_path):
    # events.csv, header user,item,ts, comma-separated, in the dataset's folder: the first run
    # names it and the convert command; that command, then the same run, trains SASRec.
    folder = tmp_path / "data" / "events"
    folder.mkdir(parents=True)
    events = _events()
    events.to_csv(folder / "events.csv", index=False)
    run = ["--model=SASRec", "--dataset=events", "--data_path=data", *TINY_RUN]

    first = _module_cli(*run, cwd=tmp_path)
    assert first.returncode == 2 and "Traceback" not in first.stderr
    (line,) = [x for x in first.stderr.splitlines() if x.strip()]
    command = line.split("convert it first: ")[1]
    assert command.startswith("recbole-flame convert --from=csv ")
    assert "events/events.csv is there" in line

    converted = _module_cli(*command.split()[1:], cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    assert "user -> user_id, item -> item_id, ts -> timestamp" in converted.stdout

    # the atomic file holds every row of the CSV, read here with the csv module
    with open(folder / "events.csv", newline="") as f:
        expected = sorted(tuple(r) for r in list(csv.reader(f))[1:])
    rows = _rows(folder / "events.inter")
    assert rows[0] == ["user_id:token", "item_id:token", "timestamp:float"]
    assert sorted(tuple(r) for r in rows[1:]) == expected

    trained = _module_cli(*run, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    log = next((tmp_path / "log" / "SASRec").glob("*.log")).read_text()
    assert "test result" in log and f"The number of users: {N_USERS + 1}" in log
    assert "written by recbole-flame convert" in log and "bundled copy" not in log


@pytest.mark.parametrize(
    "header, mapped",
    [
        (("userId", "movieId", "timestamp"), ("userId", "movieId", "timestamp")),
        (("uid", "iid", "time"), ("uid", "iid", "time")),
        (("user_id", "itemId", "date"), ("user_id", "itemId", "date")),
        (("USER", "Item", "datetime"), ("USER", "Item", "datetime")),
    ],
)
def test_user_item_and_time_columns_are_found_by_their_usual_names(tmp_path, header, mapped):
    src = tmp_path / "t.csv"
    src.write_text(",".join(header) + "\n1,10,5\n1,11,6\n")
    done = convert(src, "t", tmp_path)
    assert done.columns == dict(zip(("user_id", "item_id", "timestamp"), mapped, strict=True))
    assert _rows(done.path)[1:] == [["1", "10", "5"], ["1", "11", "6"]]


def test_named_columns_typed_extras_dates_and_a_byte_order_mark(tmp_path):
    # Columns named by flag (the usual names present are decoys), a spreadsheet's BOM, dates
    # as seconds since the epoch, other columns typed: float when every value is a number.
    src = tmp_path / "shop.csv"
    src.write_bytes(
        "\ufeffcustomer,sku,when,user,price,colour,note\n"
        "a7,X1,2021-01-01T00:00:00Z,9,2.5,red,x\n"
        "a7,X2,2021-01-02,9,,blue,\n"
        "b3,X1,2021-01-01 12:30:00,9,10,red,y\n".encode()
    )
    done = convert(src, "shop", tmp_path, user="customer", item="sku", time="when")
    # 2021-01-01T00:00:00Z: 1970-2020 is 51 years with 13 leap days
    day = (51 * 365 + 13) * 86400
    assert _rows(done.path) == [
        [
            "user_id:token",
            "item_id:token",
            "timestamp:float",
            "user:float",
            "price:float",
            "colour:token",
            "note:token",
        ],
        ["a7", "X1", str(day), "9", "2.5", "red", "x"],
        ["a7", "X2", str(day + 86400), "9", "", "blue", ""],
        ["b3", "X1", str(day + 12 * 3600 + 30 * 60), "9", "10", "red", "y"],
    ]
    assert (done.users, done.items, done.interactions) == (2, 2, 3)


def test_millisecond_times_stay_exact(tmp_path):
    # 13-digit times differing in the last digit: rounding them to 10 significant digits
    # would tie the two events and lose their order.
    src = tmp_path / "ms.csv"
    src.write_text("user,item,ts\n1,2,1609459200124\n1,3,1609459200123\n")
    rows = _rows(convert(src, "ms", tmp_path).path)
    assert [r[2] for r in rows[1:]] == ["1609459200124", "1609459200123"]


def test_tab_separated_and_parquet_read_as_the_csv(tmp_path):
    frame = pd.DataFrame(
        {"user": ["1", "1", "2"], "item": ["5", "6", "5"], "ts": ["3", "4", "1"], "r": ["1.5"] * 3}
    )
    frame.to_csv(tmp_path / "e.csv", index=False)
    frame.to_csv(tmp_path / "e.tsv", sep="\t", index=False)
    numeric = frame.assign(user=[1.0, 1.0, 2.0], item=[5, 6, 5], ts=[3, 4, 1], r=[1.5] * 3)
    numeric.to_parquet(tmp_path / "e.parquet")  # ids as the numbers a parquet file holds
    expected = convert(tmp_path / "e.csv", "c", tmp_path).path.read_bytes()
    assert _rows(tmp_path / "c" / "c.inter")[1] == ["1", "5", "3", "1.5"]
    assert convert(tmp_path / "e.tsv", "t", tmp_path).path.read_bytes() == expected
    assert convert(tmp_path / "e.parquet", "p", tmp_path).path.read_bytes() == expected


def test_parquet_dates_are_seconds_not_nanoseconds(tmp_path):
    frame = pd.DataFrame(
        {
            "user": [1, 1],
            "item": [2, 3],
            "time": pd.to_datetime(["2021-01-01", "2021-01-02"]),
            "seen": pd.to_datetime(["2021-01-01", "2021-01-01"]),
        }
    )
    frame.to_parquet(tmp_path / "d.parquet")
    rows = _rows(convert(tmp_path / "d.parquet", "d", tmp_path).path)
    assert rows[1:] == [
        ["1", "2", "1609459200", "1609459200"],
        ["1", "3", "1609545600", "1609459200"],
    ]


@pytest.mark.parametrize(
    "text, args, words",
    [
        ("who,what,ts\n1,2,3\n", (), ["no user column among who, what, ts", "--user=COL"]),
        ("user,what,ts\n1,2,3\n", (), ["no item column", "--item=COL"]),
        ("user,item,ts\n1,2,3\n", ("--user=person",), ["--user=person: no such column"]),
        ("user,item,ts\n1,2,3\n1,,4\n", (), ["column 'item' is empty at row 3"]),
        ("user,item,ts\n1,2,3\n1,3,\n", (), ["time column 'ts' is empty at row 3"]),
        ("user,item,ts\n1,2,soon\n", (), ["time column 'ts'", "neither numbers nor dates"]),
        ("user,item,ts\n", (), ["no rows"]),
    ],
)
def test_a_table_that_cannot_be_converted_is_one_line(tmp_path, capsys, text, args, words):
    src = tmp_path / "bad.csv"
    src.write_text(text)
    code, err, _ = _convert_cli(capsys, str(src), "--dataset=b", f"--data_path={tmp_path}", *args)
    assert code == 2 and len(err) == 1, err
    for word in words:
        assert word in err[0], err[0]


def test_unknown_suffix_asks_for_from(tmp_path):
    src = tmp_path / "events.dat"
    src.write_text("user,item\n1,2\n")
    with pytest.raises(ConvertError, match="--from"):
        convert(src, "e", tmp_path)


# --- the run's own stops: a CSV where the atomic file should be, other column names ----------
def _config(root: Path, name: str, **extra) -> Config:
    return Config("SASRec", name, config_dict={"data_path": str(root), **extra})


def test_dataset_folder_with_a_csv_names_it_and_the_convert_command(tmp_path, capsys):
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "events.csv").write_text("user,item,ts\n1,2,3\n")
    code = main(["--model=SASRec", "--dataset=events", f"--data_path={tmp_path}", "--gpu_id="])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert code == 2 and len(err) == 1, err
    assert str(tmp_path / "events" / "events.csv") in err[0]
    assert (
        f"convert --from=csv {tmp_path / 'events' / 'events.csv'} --dataset=events "
        f"--data_path={tmp_path}" in err[0]
    )


def test_a_csv_beside_the_dataset_folder_is_named_too(tmp_path):
    (tmp_path / "shop.parquet").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match="convert --from=parquet .*shop.parquet"):
        dataset_source(_config(tmp_path, "shop"))


def test_a_folder_with_nothing_to_convert_keeps_the_plain_not_found_line(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        dataset_source(_config(tmp_path, "nothing"))
    assert "no atomic files such as" in str(info.value) and "convert FILE" in str(info.value)


def _atomic(root: Path, name: str, header: str, sep: str = "\t") -> None:
    (root / name).mkdir()
    rows = [sep.join(["1", "2", "3"]), sep.join(["1", "3", "4"]), sep.join(["2", "2", "5"])]
    (root / name / f"{name}.inter").write_text("\n".join([header, *rows]) + "\n")


def test_other_user_and_item_column_names_are_one_line_naming_the_keys(tmp_path, capsys):
    # The issue's fifth attempt: typed, comma-separated, TIME_FIELD set; RecBole stopped with a
    # pandas KeyError: 'user_id'.
    _atomic(tmp_path, "events", "user:token,item:token,ts:float", sep=",")
    args = ["--model=SASRec", "--dataset=events", f"--data_path={tmp_path}", "--gpu_id="]
    code = main([*args, "--field_separator=,", "--TIME_FIELD=ts"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert code == 2 and len(err) == 1, err
    assert "columns 'user_id' (USER_ID_FIELD) or 'item_id' (ITEM_ID_FIELD)" in err[0]
    assert "its columns are user, item, ts" in err[0]
    assert "set --USER_ID_FIELD=user --ITEM_ID_FIELD=item " in err[0]
    assert "Traceback" not in err[0]


def test_the_keys_named_cover_the_time_column_as_well(tmp_path):
    _atomic(tmp_path, "ev", "userId:token\tmovieId:token\tdate:float")
    with pytest.raises(ConfigError) as info:
        check_id_fields(_config(tmp_path, "ev"))
    assert "set --USER_ID_FIELD=userId --ITEM_ID_FIELD=movieId --TIME_FIELD=date" in str(info.value)
    # and once they are set, the run gets past every check and loads the data
    from recbole.data import create_dataset

    fixed = _config(
        tmp_path, "ev", USER_ID_FIELD="userId", ITEM_ID_FIELD="movieId", TIME_FIELD="date"
    )
    check_id_fields(fixed)
    check_time_field(fixed)
    assert create_dataset(fixed).inter_num == 3


def test_an_unguessable_user_column_says_which_key(tmp_path):
    _atomic(tmp_path, "odd", "person:token\titem_id:token\ttimestamp:float")
    with pytest.raises(ConfigError, match=r"set USER_ID_FIELD to the file's column"):
        check_id_fields(_config(tmp_path, "odd"))


def test_a_usual_time_name_is_suggested_when_only_the_time_is_missing(tmp_path):
    _atomic(tmp_path, "t", "user_id:token\titem_id:token\tts:float")
    with pytest.raises(
        ConfigError, match="its column 'ts' looks like the time: set --TIME_FIELD=ts"
    ):
        check_time_field(_config(tmp_path, "t"))


def test_a_side_file_without_the_id_column_is_one_line(tmp_path):
    _atomic(tmp_path, "s", "user_id:token\titem_id:token\ttimestamp:float")
    (tmp_path / "s" / "s.item").write_text("sku:token\tprice:float\n2\t1.0\n")
    with pytest.raises(ConfigError, match=r"s\.item has no column 'item_id' \(ITEM_ID_FIELD\)"):
        check_id_fields(_config(tmp_path, "s"))
